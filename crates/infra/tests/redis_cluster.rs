//! The Redis layer against a private three-master Redis Cluster (REDIS_MODE=cluster): the same API, keys spread
//! over the slots of every master, and a slot moved under the client's feet (MOVED) is followed.

use std::time::Duration;

use infra::config::Sources;
use infra::redis::{Limit, RateLimiter, RedisClient, WhenUnavailable};
use infra::settings::Config;
use test_support::fakes::RedisCluster;

fn cluster_client(cluster: &RedisCluster) -> RedisClient {
    let addr = cluster.addr();
    let seeds: String = addr.split(',').take(2).collect::<Vec<_>>().join(",");
    let env = [("REDIS_MODE", "cluster"), ("REDIS_ADDR", seeds.as_str())];
    let config = Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid configuration").redis;
    RedisClient::connect_lazy(&config).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_every_master_and_a_moved_slot_is_followed() {
    let cluster = RedisCluster::start();
    let redis = cluster_client(&cluster);
    let keys: Vec<String> = (0..60).map(|n| format!("user:{n}")).collect();
    for (n, key) in keys.iter().enumerate() {
        redis.set(key, n, Duration::from_secs(60)).await.expect("SET");
    }
    for node in &cluster.nodes {
        let stored: u64 = node.command(&mut redis::cmd("DBSIZE")).expect("DBSIZE");
        assert!(stored > 0, "master on port {} holds none of the 60 keys", node.port);
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let values = redis.mget::<u64>(&refs).await.expect("MGET across slots");
    assert_eq!(values, (0..60).map(Some).collect::<Vec<_>>());

    let new_owner = cluster.move_slot_of(&keys[7]);
    assert_eq!(redis.get::<u64>(&keys[7]).await.expect("GET after MOVED"), Some(7));
    let on_new_owner = cluster.nodes.iter().find(|n| n.port == new_owner).expect("node");
    let exists: u64 = on_new_owner.command(redis::cmd("EXISTS").arg(&keys[7])).expect("EXISTS");
    assert_eq!(exists, 1, "the key really lives on the new owner");
    redis.set(&keys[7], 70, Duration::ZERO).await.expect("SET after MOVED");
    assert_eq!(redis.incr(&keys[7], 1).await.expect("INCRBY after MOVED"), 71);

    assert_eq!(redis.del(&refs).await.expect("DEL across slots"), 60);
    redis.ping().await.expect("PING every master");
}

#[tokio::test]
async fn scripts_run_on_the_master_of_their_key() {
    let cluster = RedisCluster::start();
    let limiter = RateLimiter::new(cluster_client(&cluster), "rl", WhenUnavailable::Deny);
    let limit = Limit { rate: 1, period: Duration::from_secs(60), burst: 2 };
    for key in ["a", "b", "c", "d"] {
        assert!(limiter.check(key, limit).await.allowed);
        assert!(limiter.check(key, limit).await.allowed);
        let third = limiter.check(key, limit).await;
        assert!(!third.allowed, "burst of 2 spent for {key}: {third:?}");
    }
}
