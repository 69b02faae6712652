//! The Redis client-side cache against real servers: a write by anyone drops the value from memory, and losing the
//! tracking connection empties the memory (a private redis-server, so killing its connections disturbs no one).

use std::time::Duration;

use infra::config::Sources;
use infra::redis::{ClientCache, RedisConfig};
use infra::settings::Config;
use test_support::fakes::RedisServer;
use test_support::unique;

fn config(addr: &str) -> RedisConfig {
    Config::from_sources(&Sources::from_env_pairs(&[("REDIS_ADDR", addr)])).expect("valid configuration").redis
}

fn connection(addr: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}")).expect("client").get_connection().expect("connection")
}

/// Waits (bounded) until tracking is on.
async fn until_tracking(cache: &ClientCache) {
    for _ in 0..100 {
        if cache.is_tracking() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the client cache did not start tracking within 5 s");
}

/// Polls (bounded) until `key` is gone from memory; whether it went.
async fn until_gone(cache: &ClientCache, key: &str) -> bool {
    for _ in 0..60 {
        if cache.get::<String>(key).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_write_by_another_client_drops_the_value_from_memory() {
    let prefix = format!("{}:", unique("client_cache"));
    let cache = ClientCache::start(&config("127.0.0.1:6379"), &[&prefix]);
    until_tracking(&cache).await;
    let (key, untracked) = (format!("{prefix}user"), format!("other-{prefix}user"));
    for stored in [&key, &untracked] {
        let ticket = cache.ticket();
        cache.fill(ticket, stored, "old".to_string());
        assert_eq!(cache.get::<String>(stored).as_deref(), Some("old"), "kept in memory");
    }

    let mut other = connection("127.0.0.1:6379");
    let _: () = redis::cmd("SET").arg(&key).arg("new").arg("PX").arg(60_000).query(&mut other).expect("SET");
    let _: () = redis::cmd("SET").arg(&untracked).arg("new").arg("PX").arg(60_000).query(&mut other).expect("SET");
    assert!(until_gone(&cache, &key).await, "Redis' invalidation did not drop the tracked key");
    assert_eq!(cache.get::<String>(&untracked).as_deref(), Some("old"), "a key outside the prefixes is not tracked");
    let _: () = redis::cmd("DEL").arg(&key).arg(&untracked).query(&mut other).expect("DEL");
}

#[tokio::test]
async fn a_fill_that_raced_an_invalidation_is_refused() {
    let prefix = format!("{}:", unique("client_cache_race"));
    let cache = ClientCache::start(&config("127.0.0.1:6379"), &[&prefix]);
    until_tracking(&cache).await;
    let key = format!("{prefix}user");
    // The read began (ticket taken), then the key was written and its invalidation arrived, then the fill.
    let ticket = cache.ticket();
    let mut other = connection("127.0.0.1:6379");
    let _: () = redis::cmd("SET").arg(&key).arg("new").arg("PX").arg(60_000).query(&mut other).expect("SET");
    let before = cache.ticket();
    for _ in 0..60 {
        if cache.ticket().map(|t| format!("{t:?}")) != before.map(|t| format!("{t:?}")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cache.fill(ticket, &key, "read before the write".to_string());
    assert_eq!(cache.get::<String>(&key), None, "a value read before the write was kept");
    // A fill whose ticket was taken after the write is kept.
    cache.fill(cache.ticket(), &key, "new".to_string());
    assert_eq!(cache.get::<String>(&key).as_deref(), Some("new"));
    let _: () = redis::cmd("DEL").arg(&key).query(&mut other).expect("DEL");
}

#[tokio::test]
async fn losing_the_tracking_connection_empties_the_memory() {
    let server = RedisServer::start();
    let addr = server.addr();
    let cache = ClientCache::start(&config(&addr), &["user:"]);
    until_tracking(&cache).await;
    cache.fill(cache.ticket(), "user:1", "cached".to_string());
    assert_eq!(cache.get::<String>("user:1").as_deref(), Some("cached"));

    // Every connection of the client cache's name is closed by the server.
    let mut admin = connection(&addr);
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("default")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut admin)
        .expect("CLIENT KILL");
    assert!(killed >= 1, "the tracking connection was open");
    assert!(until_gone(&cache, "user:1").await, "the memory was not emptied when the tracking connection closed");
    // Tracking comes back on a new connection, without the old value.
    until_tracking(&cache).await;
    assert_eq!(cache.get::<String>("user:1"), None);
}

#[tokio::test]
async fn a_value_is_served_from_memory_only_until_its_ttl_ends() {
    let prefix = format!("{}:", unique("client_cache_ttl"));
    let pairs = [("REDIS_ADDR", "127.0.0.1:6379"), ("REDIS_CLIENT_CACHE_TTL", "1")];
    let config = Config::from_sources(&Sources::from_env_pairs(&pairs)).expect("valid configuration").redis;
    let cache = ClientCache::start(&config, &[&prefix]);
    until_tracking(&cache).await;
    let key = format!("{prefix}user");
    cache.fill(cache.ticket(), &key, "kept".to_string());
    assert_eq!(cache.get::<String>(&key).as_deref(), Some("kept"), "served within its TTL");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(cache.get::<String>(&key), None, "served past REDIS_CLIENT_CACHE_TTL");
}
