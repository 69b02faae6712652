//! Cache-aside: read through Redis, load on a miss, and keep serving when Redis does not.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use super::client::RedisClient;
use super::metrics::CacheMetrics;

type Flight = Arc<dyn std::any::Any + Send + Sync>;

/// A cache-aside helper over a [`RedisClient`]. Cheap to clone; clones share the in-flight loads.
#[derive(Clone)]
pub struct Cache {
    redis: RedisClient,
    /// One entry per key being loaded in this process: concurrent misses wait for the same load.
    in_flight: Arc<Mutex<HashMap<String, Flight>>>,
    jitter: RandomState,
    metrics: CacheMetrics,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("redis", &self.redis).finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache storing JSON values in `redis`.
    pub fn new(redis: RedisClient) -> Self {
        let metrics = CacheMetrics::new();
        Cache { redis, in_flight: Arc::new(Mutex::new(HashMap::new())), jitter: RandomState::new(), metrics }
    }

    /// The value under `key`, or `loader`'s value stored with `ttl` (±10 % jitter, so keys written together do
    /// not expire together). Concurrent misses on one key in this process run `loader` once. When Redis fails
    /// or its breaker is open, `loader` is called directly: the cache degrades, the caller does not fail.
    pub async fn get_or_load<T, E, F, Fut>(&self, key: &str, ttl: Duration, loader: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let (result, outcome) = self.lookup(key, ttl, loader).await;
        self.metrics.looked_up(outcome, started.elapsed());
        result
    }

    async fn lookup<T, E, F, Fut>(&self, key: &str, ttl: Duration, loader: F) -> (Result<T, E>, &'static str)
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        match self.redis.get_json::<T>(key).await {
            Ok(Some(value)) => return (Ok(value), "hit"),
            Ok(None) => {}
            Err(err) if err.is_unavailable() => {
                tracing::debug!(key, error = %err, "cache bypassed: Redis unavailable");
                return (loader().await, "bypass");
            }
            Err(err) => {
                // A value that cannot be decoded (old format...) is replaced by a fresh load.
                tracing::warn!(key, error = %err, "cache value unreadable; reloading");
            }
        }
        let flight = self.flight::<T>(key);
        let ran_loader = AtomicBool::new(false);
        let loaded = flight
            .get_or_try_init(|| async {
                // Checked again: a load that finished between our miss and joining this flight stored it.
                if let Ok(Some(value)) = self.redis.get_json::<T>(key).await {
                    return Ok(value);
                }
                ran_loader.store(true, Ordering::Relaxed);
                loader().await
            })
            .await
            .cloned();
        self.land(key, &flight);
        match loaded {
            Ok(value) if ran_loader.load(Ordering::Relaxed) => {
                let stored = self.redis.set_json(key, &value, self.jittered(ttl)).await;
                let outcome = if stored.is_ok() { "miss" } else { "error" };
                (Ok(value), outcome)
            }
            Ok(value) => (Ok(value), "miss"),
            Err(err) => (Err(err), "error"),
        }
    }

    fn flight<T: Send + Sync + 'static>(&self, key: &str) -> Arc<OnceCell<T>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = in_flight.entry(key.to_string()).or_insert_with(|| Arc::new(OnceCell::<T>::new()) as Flight);
        match entry.clone().downcast::<OnceCell<T>>() {
            Ok(cell) => cell,
            // The same key loaded as another type at the same time: load on its own.
            Err(_) => Arc::new(OnceCell::new()),
        }
    }

    /// Forgets the finished load of `key` (once), so a later miss loads afresh.
    fn land<T: Send + Sync + 'static>(&self, key: &str, flight: &Arc<OnceCell<T>>) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let same = in_flight
            .get(key)
            .and_then(|entry| entry.clone().downcast::<OnceCell<T>>().ok())
            .is_some_and(|entry| Arc::ptr_eq(&entry, flight));
        // Removed once loaded, or when nobody else waits on a failed load (the map and this caller hold it).
        if same && (flight.initialized() || Arc::strong_count(flight) <= 2) {
            in_flight.remove(key);
        }
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        let spread = ttl.as_millis() as u64 / 10;
        if spread == 0 {
            return ttl;
        }
        let random = self.jitter.hash_one(Instant::now()) % (2 * spread + 1);
        Duration::from_millis(ttl.as_millis() as u64 - spread + random)
    }
}
