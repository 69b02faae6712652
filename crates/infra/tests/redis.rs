//! The Redis layer against real servers: the shared stack (a key prefix per test) and private redis-servers
//! for tests that kill connections or stop the server.

use std::time::{Duration, Instant};

use infra::config::Sources;
use infra::redis::{RedisClient, RedisError};
use infra::settings::Config;
use test_support::fakes::RedisServer;
use test_support::unique;

fn client(addr: &str, overrides: &[(&str, &str)]) -> RedisClient {
    let mut env = vec![("REDIS_ADDR", addr)];
    env.extend_from_slice(overrides);
    let config = Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid configuration").redis;
    RedisClient::connect_lazy(&config).expect("client")
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[tokio::test]
async fn operations_against_the_shared_server() {
    let redis = client("127.0.0.1:6379", &[]);
    let prefix = unique("redis_ops");
    let (a, b, missing) = (format!("{prefix}:a"), format!("{prefix}:b"), format!("{prefix}:missing"));

    assert_eq!(redis.get::<String>(&missing).await.expect("GET"), None, "missing key is None, not an error");
    redis.set(&a, "one", Duration::from_secs(60)).await.expect("SET");
    redis.set(&b, 2, Duration::ZERO).await.expect("SET");
    assert_eq!(redis.get::<String>(&a).await.expect("GET"), Some("one".into()));
    assert_eq!(
        redis.mget::<String>(&[&a, &missing, &b]).await.expect("MGET"),
        [Some("one".into()), None, Some("2".into())]
    );
    assert_eq!(redis.incr(&b, 5).await.expect("INCRBY"), 7);
    assert!(redis.expire(&b, Duration::from_secs(30)).await.expect("PEXPIRE"));
    assert!(!redis.expire(&missing, Duration::from_secs(30)).await.expect("PEXPIRE"));

    let user = User { id: 123, name: "Ada".into() };
    let key = format!("{prefix}:user:123");
    redis.set_json(&key, &user, Duration::from_secs(60)).await.expect("set json");
    assert_eq!(redis.get_json::<User>(&key).await.expect("get json"), Some(user));
    let wrong = redis.get_json::<User>(&a).await.expect_err("not JSON");
    assert!(matches!(wrong, RedisError::Conversion(_)), "{wrong:?}");

    assert_eq!(redis.del(&[&a, &b, &key, &missing]).await.expect("DEL"), 3);
    let wrong_type = redis.incr(&format!("{prefix}:none"), 1).await.and(redis.set(&a, "x", Duration::ZERO).await);
    assert!(wrong_type.is_ok());
    let err = redis.incr(&a, 1).await.expect_err("not an integer");
    assert!(matches!(err, RedisError::Command { command: "INCRBY", .. }), "{err:?}");
    redis.del(&[&a, &format!("{prefix}:none")]).await.expect("cleanup");
}

#[tokio::test]
async fn ttl_is_honoured() {
    let redis = client("127.0.0.1:6379", &[]);
    let key = unique("redis_ttl");
    redis.set(&key, "short-lived", Duration::from_millis(150)).await.expect("SET");
    assert!(redis.get::<String>(&key).await.expect("GET").is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.get::<String>(&key).await.expect("GET"), None, "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_spills_over_under_load_but_never_opens_more_connections_than_its_size() {
    let server = RedisServer::start();
    let redis = client(&server.addr(), &[("REDIS_POOL_SIZE", "3"), ("REDIS_MIN_IDLE_CONNS", "0")]);
    redis.ping().await.expect("PING");
    assert_eq!(server.clients(), 1, "one connection carries light load");
    let mut peak = 0;
    for _ in 0..10 {
        let commands: Vec<_> = (0..300)
            .map(|i| {
                let redis = redis.clone();
                tokio::spawn(async move { redis.set(&format!("k{i}"), i, Duration::ZERO).await })
            })
            .collect();
        peak = peak.max(server.clients());
        for command in commands {
            command.await.expect("task").expect("SET");
        }
        peak = peak.max(server.clients());
    }
    assert!((2..=3).contains(&peak), "saw {peak} client connections with REDIS_POOL_SIZE=3 under heavy load");
    assert!(redis.pool_stats().size <= 3);
}

#[tokio::test]
async fn the_pool_keeps_its_minimum_open_and_closes_idle_connections_above_it() {
    let server = RedisServer::start();
    let _warm = client(&server.addr(), &[("REDIS_MIN_IDLE_CONNS", "2")]);
    let two_open = test_support::eventually(Duration::from_secs(10), async || server.clients() == 2).await;
    assert!(two_open, "REDIS_MIN_IDLE_CONNS=2 opens two connections without any command: {}", server.clients());

    let other = RedisServer::start();
    let redis = client(&other.addr(), &[("REDIS_MIN_IDLE_CONNS", "0"), ("REDIS_IDLE_TIMEOUT", "1s")]);
    redis.ping().await.expect("PING");
    assert_eq!(other.clients(), 1);
    let closed = test_support::eventually(Duration::from_secs(10), async || other.clients() == 0).await;
    assert!(closed, "the idle connection was closed after REDIS_IDLE_TIMEOUT");
    redis.ping().await.expect("a new connection is opened on demand");
}

#[tokio::test]
async fn connections_older_than_the_max_age_are_replaced() {
    let server = RedisServer::start();
    let redis = client(&server.addr(), &[("REDIS_MIN_IDLE_CONNS", "0"), ("REDIS_MAX_CONN_AGE", "1s")]);
    redis.ping().await.expect("PING");
    let first: String = server.command(redis::cmd("CLIENT").arg("LIST")).expect("CLIENT LIST");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    redis.ping().await.expect("PING on a fresh connection");
    let replaced = test_support::eventually(Duration::from_secs(5), async || {
        let now: String = server.command(redis::cmd("CLIENT").arg("LIST")).expect("CLIENT LIST");
        let first_id = first.lines().find(|l| !l.contains("cmd=client")).and_then(|l| l.split(' ').next());
        server.clients() == 1 && first_id.is_some_and(|id| !now.contains(&format!("{id} ")))
    })
    .await;
    assert!(replaced, "the aged connection was closed and replaced");
}

#[tokio::test]
async fn killed_connections_are_replaced_and_idempotent_commands_retried() {
    let server = RedisServer::start();
    let redis = client(&server.addr(), &[("REDIS_MIN_IDLE_CONNS", "0")]);
    redis.set("k", "v", Duration::ZERO).await.expect("SET");
    let kill =
        || server.command::<u64>(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").arg("SKIPME").arg("yes"));

    kill().expect("CLIENT KILL");
    assert_eq!(redis.get::<String>("k").await.expect("GET retried on a fresh connection"), Some("v".into()));

    kill().expect("CLIENT KILL");
    let err = redis.incr("counter", 1).await.expect_err("INCRBY is not retried");
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(redis.incr("counter", 1).await.expect("the next INCRBY uses a new connection"), 1, "counted once");
}

#[tokio::test]
async fn with_redis_stopped_the_breaker_opens_fails_fast_and_closes_when_it_returns() {
    let mut server = RedisServer::start();
    let redis = client(
        &server.addr(),
        &[
            ("REDIS_BREAKER_FAILURES", "3"),
            ("REDIS_BREAKER_COOLDOWN", "300ms"),
            ("REDIS_MAX_RETRIES", "0"),
            ("REDIS_MIN_IDLE_CONNS", "0"),
        ],
    );
    redis.ping().await.expect("up");
    server.kill();
    for _ in 0..3 {
        let err = redis.ping().await.expect_err("down");
        assert!(matches!(err, RedisError::Unavailable { .. }), "{err:?}");
    }
    let started = Instant::now();
    let err = redis.ping().await.expect_err("breaker open");
    let elapsed = started.elapsed();
    assert!(matches!(err, RedisError::CircuitOpen { .. }), "{err:?}");
    // A correctness bound (no network wait), far above the microseconds it takes.
    assert!(elapsed < Duration::from_millis(50), "refused without touching the network: {elapsed:?}");
    assert_eq!(redis.breaker().state(), infra::resilience::BreakerState::Open);

    server.restart();
    tokio::time::sleep(Duration::from_millis(350)).await;
    redis.ping().await.expect("the half-open probe succeeds");
    assert_eq!(redis.breaker().state(), infra::resilience::BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_one_key_call_the_loader_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let cache = infra::redis::Cache::new(client("127.0.0.1:6379", &[]));
    let key = unique("cache_single_flight");
    let loads = Arc::new(AtomicUsize::new(0));
    let lookups: Vec<_> = (0..100)
        .map(|_| {
            let (cache, key, loads) = (cache.clone(), key.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&key, Duration::from_secs(60), || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await; // a slow database
                        Ok::<_, std::io::Error>(User { id: 7, name: "Grace".into() })
                    })
                    .await
            })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.expect("task").expect("value"), User { id: 7, name: "Grace".into() });
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one loader call for 100 concurrent misses");

    let hit: User = cache
        .get_or_load(&key, Duration::from_secs(60), || async { Err::<User, _>(std::io::Error::other("must not load")) })
        .await
        .expect("served from Redis");
    assert_eq!(hit.id, 7);
    client("127.0.0.1:6379", &[]).del(&[&key]).await.expect("cleanup");
}

#[tokio::test]
async fn with_redis_unavailable_the_cache_degrades_to_the_loader() {
    let closed = format!("127.0.0.1:{}", test_support::free_port());
    let cache = infra::redis::Cache::new(client(&closed, &[("REDIS_MAX_RETRIES", "0")]));
    for n in 0..3 {
        let value = cache
            .get_or_load("user:1", Duration::from_secs(60), || async move { Ok::<_, std::io::Error>(n) })
            .await
            .expect("the loader's value, Redis or not");
        assert_eq!(value, n, "loaded each time: nothing can be cached");
    }
    let err = cache
        .get_or_load("user:1", Duration::from_secs(60), || async { Err::<u32, _>(std::io::Error::other("db down")) })
        .await
        .expect_err("the loader's own error comes back");
    assert_eq!(err.to_string(), "db down");
}

#[tokio::test]
async fn sessions_slide_expire_and_never_show_their_id() {
    use infra::redis::RedisSessionStore;
    let logs = test_support::CapturedLogs::default();
    let _guard = logs.install();
    let store = RedisSessionStore::new(client("127.0.0.1:6379", &[]), unique("session"), Duration::from_millis(600));
    let id = store.create(&User { id: 1, name: "Ada".into() }).await.expect("create");
    assert_eq!(store.load::<User>(&id).await.expect("load"), Some(User { id: 1, name: "Ada".into() }));

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.touch(&id).await.expect("touch"), "still alive, TTL restarted");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.load::<User>(&id).await.expect("load").is_some(), "alive 800 ms after creation thanks to touch");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.load::<User>(&id).await.expect("load"), None, "expired");
    assert!(!store.touch(&id).await.expect("touch"), "an expired session cannot be revived");

    let other = store.create(&User { id: 2, name: "Bob".into() }).await.expect("create");
    assert!(store.delete(&other).await.expect("delete"));
    assert_eq!(store.load::<User>(&other).await.expect("load"), None);

    let captured = logs.text();
    assert!(captured.contains("\"db.system.name\":\"redis\""), "commands were traced:\n{captured}");
    for secret in [id.expose(), other.expose()] {
        assert!(!captured.contains(secret), "a session id reached the logs or spans");
    }
}

#[tokio::test]
async fn an_owners_sessions_end_together_and_their_index_forgets_sessions_past_the_lifetime() {
    use infra::redis::RedisSessionStore;
    let redis = client("127.0.0.1:6379", &[]);
    let prefix = unique("session");
    let store = RedisSessionStore::new(redis.clone(), prefix.clone(), Duration::from_secs(60));
    let lifetime = Duration::from_millis(500);
    let user = User { id: 7, name: "Ada".into() };
    for _ in 0..3 {
        store.create_for("owner-7", &user, lifetime).await.expect("create");
    }
    let index = format!("{prefix}-of:owner-7");
    assert_eq!(redis.zrange_all(&index).await.expect("index").len(), 3);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let kept = store.create_for("owner-7", &user, lifetime).await.expect("create");
    assert_eq!(redis.zrange_all(&index).await.expect("index").len(), 1, "sessions past the lifetime are forgotten");
    let bystander = store.create_for("owner-8", &user, lifetime).await.expect("create");

    assert_eq!(store.delete_all_of("owner-7").await.expect("delete all"), 1);
    assert_eq!(store.load::<User>(&kept).await.expect("load"), None);
    assert!(redis.zrange_all(&index).await.expect("index").is_empty(), "the index is gone too");
    assert!(store.load::<User>(&bystander).await.expect("load").is_some(), "another owner's session stays");
}

#[tokio::test]
async fn the_rate_limiter_admits_the_burst_then_the_steady_rate_across_instances() {
    use infra::redis::{Limit, RateLimiter, WhenUnavailable};
    let prefix = unique("ratelimit");
    let limiters = [
        RateLimiter::new(client("127.0.0.1:6379", &[]), prefix.clone(), WhenUnavailable::Allow),
        RateLimiter::new(client("127.0.0.1:6379", &[]), prefix.clone(), WhenUnavailable::Allow),
    ];
    let limit = Limit { rate: 10, period: Duration::from_secs(1), burst: 5 };
    for n in 0..5u32 {
        let decision = limiters[n as usize % 2].check("client-1", limit).await;
        assert!(decision.allowed, "request {n} is within the burst");
        assert_eq!(decision.remaining, 4 - n);
        assert_eq!(decision.limit, 5);
    }
    let limited = limiters[1].check("client-1", limit).await;
    assert!(!limited.allowed, "the burst is spent, whichever instance asks");
    assert!(limited.retry_after > Duration::ZERO && limited.retry_after <= Duration::from_millis(100), "{limited:?}");
    assert!(limited.reset > Duration::from_millis(300), "{limited:?}");
    assert!(limiters[0].check("client-2", limit).await.allowed, "keys are independent");

    tokio::time::sleep(limited.retry_after + Duration::from_millis(10)).await;
    assert!(limiters[0].check("client-1", limit).await.allowed, "one more after one interval: the steady rate");
    assert!(!limiters[1].check("client-1", limit).await.allowed, "and not two");
}

#[tokio::test]
async fn rates_above_a_thousand_per_second_are_honoured() {
    use infra::redis::{Limit, RateLimiter, WhenUnavailable};
    // 100 000/s is one request per 10 µs: a Redis round trip takes longer, so a single sequential caller with
    // no burst to spend is never limited. (Counting in milliseconds made every interval at least 1 ms.)
    let limiter = RateLimiter::new(client("127.0.0.1:6379", &[]), unique("fast"), WhenUnavailable::Deny);
    let limit = Limit { rate: 100_000, period: Duration::from_secs(1), burst: 1 };
    for n in 0..50 {
        let decision = limiter.check("client", limit).await;
        assert!(decision.allowed, "request {n}: {decision:?}");
    }
}

#[tokio::test]
async fn an_unreachable_limiter_fails_open_or_closed_as_configured() {
    use infra::redis::{Limit, RateLimiter, WhenUnavailable};
    let closed = format!("127.0.0.1:{}", test_support::free_port());
    let limit = Limit { rate: 1, period: Duration::from_secs(1), burst: 1 };
    let open = RateLimiter::new(client(&closed, &[]), "rl", WhenUnavailable::Allow).check("k", limit).await;
    assert!(open.allowed);
    let shut = RateLimiter::new(client(&closed, &[]), "rl", WhenUnavailable::Deny).check("k", limit).await;
    assert!(!shut.allowed && shut.retry_after > Duration::ZERO, "{shut:?}");
}
