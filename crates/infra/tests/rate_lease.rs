//! The rate limiter's script by SHA and its leases, against real servers: the shared stack (a key prefix per
//! test) and private redis-servers where a test counts the commands the server ran. Two `RedisClient`s sharing
//! one Redis stand for two instances of the service.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infra::config::Sources;
use infra::redis::{LeasePolicy, LeasedRateLimiter, Limit, RateLimiter, RedisClient, WhenUnavailable};
use infra::settings::Config;
use test_support::fakes::RedisServer;
use test_support::unique;

const SHARED: &str = "127.0.0.1:6379";

fn client(addr: &str) -> RedisClient {
    let config = Config::from_sources(&Sources::from_env_pairs(&[("REDIS_ADDR", addr)])).expect("valid").redis;
    RedisClient::connect_lazy(&config).expect("client")
}

/// One "instance": its own client (own pool and connections), the shared prefix.
fn limiter(addr: &str, prefix: &str) -> RateLimiter {
    RateLimiter::new(client(addr), prefix.to_string(), WhenUnavailable::Deny)
}

fn leased(addr: &str, prefix: &str, limit: Limit, lease: LeasePolicy) -> LeasedRateLimiter<String> {
    LeasedRateLimiter::with_lease(limiter(addr, prefix), "ip", limit, lease, 1024)
}

fn per_second(rate: u32, burst: u32) -> Limit {
    Limit { rate, period: Duration::from_secs(1), burst }
}

#[tokio::test]
async fn the_script_crosses_the_network_once_then_goes_by_its_sha() {
    let server = RedisServer::start();
    let limiter = limiter(&server.addr(), "rl");
    for _ in 0..20 {
        assert!(limiter.check("client", per_second(1000, 1000)).await.allowed);
    }
    assert_eq!(server.calls("eval"), 1, "the text is sent once, after the server answered NOSCRIPT");
    assert!((20..=21).contains(&server.calls("evalsha")), "{} EVALSHA", server.calls("evalsha"));
}

#[tokio::test]
async fn two_leasing_instances_admit_exactly_the_burst_then_refuse() {
    let prefix = unique("lease-burst");
    // A rate of 10 a minute refills nothing during the test: the burst is all there is to admit. A lease of 5
    // that does not expire during the test: every leased token can be spent.
    let limit = Limit { rate: 10, period: Duration::from_secs(60), burst: 22 };
    let lease = LeasePolicy { size: 5, validity: Duration::from_secs(30) };
    let instances = [leased(SHARED, &prefix, limit, lease), leased(SHARED, &prefix, limit, lease)];
    let key = "198.51.100.7".to_string();
    let mut admitted = [0u32; 2];
    let mut refused = [false; 2];
    for n in 0..100 {
        let decision = instances[n % 2].check(&key).await;
        assert_eq!(decision.limit, 22);
        if decision.allowed {
            assert!(!refused[n % 2], "an instance that was refused is not admitting again in the same minute");
            admitted[n % 2] += 1;
        } else {
            refused[n % 2] = true;
            assert!(decision.retry_after > Duration::ZERO, "{decision:?}");
            assert_eq!(decision.remaining, 0);
        }
    }
    assert_eq!(admitted.iter().sum::<u32>(), 22, "exactly the burst, across both instances: {admitted:?}");
    assert_eq!(admitted, [12, 10], "leases of 5, 5, 5, 5, then the last 2 tokens: a lease takes what is left");
    let exact = limiter(SHARED, &prefix).check(&format!("ip:{key}"), limit).await;
    assert!(!exact.allowed, "the leased tokens were consumed in Redis: {exact:?}");
}

#[tokio::test]
async fn a_refusal_has_a_retry_after_and_is_repeated_locally_until_then() {
    let server = RedisServer::start();
    let limit = per_second(1, 2);
    let instance = leased(&server.addr(), "rl", limit, LeasePolicy::for_limit(limit));
    assert_eq!(instance.lease_policy().size, 1, "1/s is leased one token at a time: exact");
    let key = "203.0.113.9".to_string();
    assert!(instance.check(&key).await.allowed);
    let second = instance.check(&key).await;
    assert!(second.allowed);
    assert_eq!(second.remaining, 0);
    let refused = instance.check(&key).await;
    assert!(!refused.allowed);
    assert!(refused.retry_after > Duration::from_millis(500) && refused.retry_after <= Duration::from_secs(1));
    assert!(refused.reset > Duration::from_secs(1), "{refused:?}");
    let asked = server.calls("evalsha") + server.calls("eval");
    for _ in 0..100 {
        let again = instance.check(&key).await;
        assert!(!again.allowed && again.retry_after > Duration::ZERO && again.retry_after <= refused.retry_after);
    }
    assert_eq!(server.calls("evalsha") + server.calls("eval"), asked, "refused without asking Redis again");
    tokio::time::sleep(refused.retry_after + Duration::from_millis(20)).await;
    assert!(instance.check(&key).await.allowed, "admitted again once the retry time has passed");
}

#[tokio::test]
async fn concurrent_requests_of_one_key_wait_for_one_lease() {
    let server = RedisServer::start();
    let limit = per_second(100, 1000);
    let instance = leased(&server.addr(), "rl", limit, LeasePolicy { size: 5, validity: Duration::from_secs(30) });
    let key = "192.0.2.1".to_string();
    assert!(instance.check(&key).await.allowed, "loads the script");
    let before = server.calls("evalsha");
    let checks = (0..49).map(|_| {
        let (instance, key) = (instance.clone(), key.clone());
        tokio::spawn(async move { instance.check(&key).await.allowed })
    });
    for check in checks.collect::<Vec<_>>() {
        assert!(check.await.expect("task"));
    }
    assert_eq!(server.calls("evalsha") - before, 9, "4 tokens were held; 45 more requests are 9 leases of 5");
}

#[tokio::test]
async fn the_keys_an_instance_remembers_are_bounded() {
    let prefix = unique("lease-spray");
    let limit = per_second(100, 200);
    let instance =
        LeasedRateLimiter::with_lease(limiter(SHARED, &prefix), "ip", limit, LeasePolicy::for_limit(limit), 128);
    for n in 0..1000u32 {
        assert!(instance.check(&format!("10.{}.{}.1", n / 256, n % 256)).await.allowed);
        assert!(instance.tracked_keys() <= 128, "{} keys after {n}", instance.tracked_keys());
    }
}

#[tokio::test]
async fn a_leasing_limiter_without_redis_fails_open_or_closed_as_configured() {
    let closed = format!("127.0.0.1:{}", test_support::free_port());
    let limit = per_second(100, 200);
    let open = RateLimiter::new(client(&closed), "rl", WhenUnavailable::Allow);
    let shut = RateLimiter::new(client(&closed), "rl", WhenUnavailable::Deny);
    let key = "k".to_string();
    let open = LeasedRateLimiter::new(open, "ip", limit).check(&key).await;
    assert!(open.allowed && open.unavailable, "{open:?}");
    let shut = LeasedRateLimiter::new(shut, "ip", limit).check(&key).await;
    assert!(!shut.allowed && shut.unavailable && shut.retry_after > Duration::ZERO, "{shut:?}");
}

/// Two instances hammered for 3 s at 100/s, bursts of 100: what they admit against what one GCRA admits (the
/// burst, then the rate). Prints the measurement; fails beyond the documented bound (N × (lease size − 1)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hammered_instances_admit_at_most_one_limit_plus_the_documented_overshoot() {
    let limit = per_second(100, 100);
    assert_eq!(LeasePolicy::for_limit(limit).size, 5, "one lease at a time");
    hammer_two_instances(limit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hammered_instances_refilling_ahead_admit_at_most_one_limit_plus_the_documented_overshoot() {
    let limit = per_second(1000, 1000);
    assert_eq!(LeasePolicy::for_limit(limit).size, 50, "refilled ahead");
    hammer_two_instances(limit).await;
}

/// Two instances, 16 callers each, asking for one key far above `limit` for 3 s: what they admit together is
/// compared with one GCRA's admissions, in total and in the busiest 1 s window.
async fn hammer_two_instances(limit: Limit) {
    const RUN: Duration = Duration::from_secs(3);
    const CALLERS_PER_INSTANCE: usize = 16;
    let prefix = unique("lease-overshoot");
    let lease = LeasePolicy::for_limit(limit);
    let instances = [leased(SHARED, &prefix, limit, lease), leased(SHARED, &prefix, limit, lease)];
    let admitted = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let started = Instant::now();
    let mut callers = Vec::new();
    for instance in &instances {
        for _ in 0..CALLERS_PER_INSTANCE {
            let (instance, admitted) = (instance.clone(), Arc::clone(&admitted));
            callers.push(tokio::spawn(async move {
                let key = "203.0.113.50".to_string();
                let mut asked = 0u64;
                while started.elapsed() < RUN {
                    asked += 1;
                    if instance.check(&key).await.allowed {
                        admitted.lock().expect("lock").push(started.elapsed());
                    } else {
                        // Still far above the limit (16 callers × 1000/s per instance), without spinning.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                asked
            }));
        }
    }
    let mut asked = 0;
    for caller in callers {
        asked += caller.await.expect("caller");
    }
    let elapsed = started.elapsed();
    let mut times = admitted.lock().expect("lock").clone();
    times.sort();
    let total = times.len() as u64;
    // One GCRA from a full bucket: the burst at once, then one per interval.
    let ideal = u64::from(limit.burst) + (elapsed.as_secs_f64() * f64::from(limit.rate)) as u64;
    let window = Duration::from_secs(1);
    let busiest = times.iter().enumerate().map(|(i, start)| times[i..].partition_point(|t| *t < *start + window));
    let busiest = busiest.max().unwrap_or(0) as u64;
    let busiest_ideal = u64::from(limit.burst + limit.rate) + 1;
    let bound = u64::from(lease.overshoot_bound(2));
    println!(
        "two instances, {limit:?}, lease {} valid {:?}: {asked} requests over {elapsed:.2?}, admitted {total} vs one \
         GCRA {ideal} (overshoot {:+}); busiest 1 s window {busiest} vs {busiest_ideal} (overshoot {:+}); bound {bound}",
        lease.size,
        lease.validity,
        total as i64 - ideal as i64,
        busiest as i64 - busiest_ideal as i64,
    );
    assert!(total <= ideal + 1 + bound, "admitted {total}, one GCRA {ideal}, bound {bound}");
    assert!(busiest <= busiest_ideal + bound, "busiest window {busiest}, one GCRA {busiest_ideal}, bound {bound}");
    assert!(total >= ideal * 9 / 10, "the limit is not starved by leases: admitted {total} of {ideal}");
}

#[tokio::test]
async fn check_local_answers_from_the_lease_and_leaves_a_new_lease_to_check() {
    let server = RedisServer::start();
    let limit = Limit { rate: 10, period: Duration::from_secs(60), burst: 10 };
    let lease = LeasePolicy { size: 4, validity: Duration::from_secs(30) };
    let instance = leased(&server.addr(), "rl", limit, lease);
    let key = "198.51.100.8".to_string();
    assert_eq!(instance.check_local(&key), None, "no lease yet: nothing to answer without Redis");
    assert!(instance.check(&key).await.allowed, "the first check takes a lease of 4 and spends one");
    for spent in 2..=4 {
        let decision = instance.check_local(&key).unwrap_or_else(|| panic!("token {spent} of the lease"));
        assert!(decision.allowed);
    }
    assert_eq!(instance.check_local(&key), None, "the lease is spent");
    let scripts = server.calls("eval") + server.calls("evalsha");
    assert!(instance.check(&key).await.allowed, "check takes the next lease");
    assert_eq!(server.calls("eval") + server.calls("evalsha"), scripts + 1, "one round trip for the new lease");
}

#[tokio::test]
async fn a_busy_key_is_refilled_ahead_and_its_requests_never_wait_for_a_lease() {
    let server = RedisServer::start();
    let limit = Limit { rate: 100_000, period: Duration::from_secs(60), burst: 100_000 };
    let lease = LeasePolicy { size: 16, validity: Duration::from_secs(30) };
    let instance = leased(&server.addr(), "rl", limit, lease);
    let key = "198.51.100.9".to_string();
    assert!(instance.check(&key).await.allowed, "the first check takes a lease of 16 and spends one");
    let leases_before = server.calls("eval") + server.calls("evalsha");
    // A request every 5 ms: a refill started at a quarter of a lease (4 tokens, 20 ms ahead) lands long before
    // the tokens run out. Without refills every 16th request would find none and have to wait for Redis.
    for request in 1..=100 {
        let decision = instance.check_local(&key).unwrap_or_else(|| panic!("request {request} found no token"));
        assert!(decision.allowed);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refills = server.calls("eval") + server.calls("evalsha") - leases_before;
    // Each refill tops the tokens up to 15 from at most 4: at least 11 tokens each.
    assert!((7..=10).contains(&refills), "{refills} refills for 100 requests");
}
