//! Issue 15, item 2: a rename acknowledged while its cache invalidation could not reach Redis must not be served
//! stale once Redis is reachable again — from any instance, not only the one that wrote. Renames go through
//! instance 0 while Redis is cut off by its proxy; reads go through instance 1 (and 0) after the cut heals.
//!
//! A rename must be past authentication (sessions live in Redis) when the cut begins, or it is refused: PostgreSQL
//! is slowed by its proxy meanwhile, so the renames are all in PostgreSQL, authenticated, when Redis goes away, and
//! their invalidation is what fails. Reads through the writing instance during the cut time out on Redis and open
//! its circuit breaker, so the writer's invalidations are not even sent: a command merely held by the partition
//! would be delivered when it heals (as TCP delivers it), an invalidation the breaker refused never is — the case
//! that left users stale until USER_CACHE_TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use test_support::proxy::Mode;

use crate::deployment::Deployment;
use crate::load::{Api, Ledger, Outcome};

/// Users renamed during the partition.
const USERS: usize = 12;
/// How long after the renames were sent Redis is cut off: they are past authentication by then.
const CUT_AFTER: Duration = Duration::from_millis(500);
/// The latency PostgreSQL gets meanwhile, each way: a rename then takes seconds in PostgreSQL.
const SLOW_POSTGRES: Duration = Duration::from_millis(300);
/// How long after the cut healed every read must show the new name.
const FRESH_WITHIN: Duration = Duration::from_secs(40);

/// The name cached in Redis for user `id`, read on the server itself (not through the proxy).
fn cached_name(deployment: &Deployment, id: &str) -> Option<String> {
    let key = format!("user:{{{id}}}");
    let cached: Option<String> =
        tokio::task::block_in_place(|| deployment.redis.command(redis::cmd("GET").arg(&key))).expect("GET");
    let user: serde_json::Value = serde_json::from_str(&cached?).expect("a cached user is JSON");
    user["name"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_acknowledged_during_a_redis_partition_are_not_served_stale_after_it_heals() {
    let _alone = crate::ONE_AT_A_TIME.lock().await;
    // Invalidations that cannot reach Redis fail within about two seconds (a timeout and a retry).
    let deployment = Deployment::start(&[("REDIS_READ_TIMEOUT", "1"), ("REDIS_WRITE_TIMEOUT", "1")]).await;
    let api = Api::new(deployment.addresses(), Arc::new(Ledger::default()));
    let mut ids = Vec::new();
    for n in 0..USERS {
        let id = api.register(0, &format!("before-{n}")).await.expect("registered");
        api.login(0, &id).await.expect("signed in");
        ids.push(id);
    }
    for (n, id) in ids.iter().enumerate() {
        for instance in [1, 0] {
            assert_eq!(
                api.read(instance, id).await,
                (Outcome::Ok, Some(format!("before-{n}"))),
                "read through {instance}"
            );
        }
        assert_eq!(cached_name(&deployment, id), Some(format!("before-{n}")), "the user is cached");
    }

    deployment.postgres_proxy.set(Mode::Latency(SLOW_POSTGRES));
    let renames: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let (api, id) = (api.clone(), id.clone());
            tokio::spawn(async move { api.rename(0, &id, &format!("after-{n}")).await })
        })
        .collect();
    tokio::time::sleep(CUT_AFTER).await;
    deployment.redis_proxy.set(Mode::Cut);
    let reads: Vec<_> = ids
        .iter()
        .map(|id| {
            let (api, id) = (api.clone(), id.clone());
            tokio::spawn(async move { api.read(0, &id).await })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for ((n, id), rename) in ids.iter().enumerate().zip(renames) {
        if rename.await.expect("rename task") == Outcome::Ok {
            acknowledged.push((n, id.clone()));
        }
    }
    deployment.postgres_proxy.set(Mode::Forward);
    for read in reads {
        assert_ne!(read.await.expect("read task").0, Outcome::Ok, "no session can be checked while Redis is cut off");
    }
    assert!(acknowledged.len() * 2 >= USERS, "most renames are acknowledged: {} of {USERS}", acknowledged.len());
    let stale =
        acknowledged.iter().filter(|(n, id)| cached_name(&deployment, id) == Some(format!("before-{n}"))).count();
    assert!(stale > 0, "the writer's invalidations failed: Redis still holds old names (else this tests nothing)");
    // Refused by the breaker, not merely held by the partition (a held one would still arrive once it heals).
    let refused = deployment.instances[0]
        .output()
        .lines()
        .filter(|line| line.contains("cannot invalidate the cached user now") && line.contains("circuit breaker open"))
        .count();
    assert!(refused > 0, "the writer's breaker refused some invalidations");

    // Still cut for a while: the event consumer's invalidations fail too, and must be retried, not dropped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    deployment.redis_proxy.set(Mode::Forward);
    let healed = Instant::now();
    for (n, id) in &acknowledged {
        let expected = format!("after-{n}");
        for instance in [1, 0] {
            let fresh = test_support::eventually(FRESH_WITHIN, async || {
                api.read(instance, id).await == (Outcome::Ok, Some(expected.clone()))
            });
            assert!(
                fresh.await,
                "user {id} through instance {instance}: still not {expected:?} {FRESH_WITHIN:?} after the partition healed"
            );
        }
    }
    eprintln!(
        "{} renames acknowledged during the partition, {refused} invalidations refused by the writer's breaker; every read fresh {:.1} s after it healed",
        acknowledged.len(),
        healed.elapsed().as_secs_f64()
    );
    for (n, instance) in deployment.instances.iter().enumerate() {
        assert!(!instance.output().contains("panicked"), "instance {n} panicked");
    }
}
