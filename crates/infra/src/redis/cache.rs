//! Cache-aside: read through Redis, load on a miss, and keep serving when Redis does not — without letting a
//! load that raced a write put the old value back.
//!
//! # Coherence: fill tickets
//!
//! Plain cache-aside has a race: a reader misses, loads the row, the writer commits and deletes the entry, then
//! the reader stores the row it loaded *before* the commit — and the old value is served until the TTL ends.
//! So every entry `key` has a *fill ticket* beside it, `key:ticket`, a random value:
//!
//! - On a miss, before loading, the reader takes the ticket (creating one if there is none) in one script.
//! - After loading, it stores the value only if the ticket is still the one it took (a second script: compare
//!   and set, atomic in Redis).
//! - A write, after its commit, calls [`Cache::invalidate`]: it deletes the entry *and* the ticket.
//!
//! A load that saw the database before a commit began before that write's invalidation (it took its ticket
//! earlier still), so the invalidation deleted its ticket and its fill is refused; a load that began after gets
//! a new ticket and stores what it read, which is already the new value. Tickets are random (no counter to wrap
//! or to come back to an old value after it expired), and one that expired during a slow load only refuses that
//! fill — the cost of a refusal is one more miss, never a stale entry.
//!
//! Chosen over a tombstone (an entry marking "just written, do not fill" for a few seconds) because a tombstone
//! protects only loads shorter than its lifetime — a load stalled by a slow database or a GC pause longer than that
//! still stores the old value — and over a version counter because a counter's key must outlive every load or
//! its value repeats. What stays stale: the entry between a commit and its invalidation (one Redis round trip),
//! and, when the invalidation itself fails (Redis down or unreachable from the writer only), until the TTL.
//!
//! In a Redis Cluster the entry and its ticket must share a hash slot: give the key a hash tag (`user:{42}` and
//! `user:{42}:ticket` land together); otherwise the scripts fail with `CROSSSLOT` and every lookup loads without
//! caching (counted as `error`).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use super::client::RedisClient;
use super::client_cache::ClientCache;
use super::error::RedisError;
use super::metrics::CacheMetrics;
use super::script::LuaScript;

/// Takes the entry's fill ticket, creating it when there is none, and reads the entry (a load finished since
/// the caller's miss may have stored it). KEYS: entry, ticket. ARGV: a fresh ticket, its TTL in ms (0: none).
/// Returns {ticket, entry or nil}.
static TAKE_TICKET: LazyLock<LuaScript> = LazyLock::new(|| {
    LuaScript::new(
        "EVAL cache_ticket",
        r"
local ticket = redis.call('GET', KEYS[2])
if not ticket then
  ticket = ARGV[1]
  if ARGV[2] == '0' then redis.call('SET', KEYS[2], ticket) else redis.call('SET', KEYS[2], ticket, 'PX', ARGV[2]) end
end
return {ticket, redis.call('GET', KEYS[1])}
",
    )
});

/// Stores the entry only if its ticket is still the one taken before loading: no invalidation came between.
/// KEYS: entry, ticket. ARGV: the ticket, the value, its TTL in ms (0: none). Returns 1 if stored, else 0.
static FILL: LazyLock<LuaScript> = LazyLock::new(|| {
    LuaScript::new(
        "EVAL cache_fill",
        r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then redis.call('SET', KEYS[1], ARGV[2]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
",
    )
});

type Flight = Arc<dyn std::any::Any + Send + Sync>;

/// A load in flight in this process: the entry's key and the ticket it was started under.
type FlightKey = (String, String);

/// A cache-aside helper over a [`RedisClient`], coherent with writes that call [`Cache::invalidate`] (see the
/// module's doc). Cheap to clone; clones share the in-flight loads.
#[derive(Clone)]
pub struct Cache {
    redis: RedisClient,
    /// Decoded values kept in process memory while Redis tracks their keys (disabled by default).
    client_cache: ClientCache,
    /// One entry per key and ticket being loaded in this process: concurrent misses wait for the same load.
    in_flight: Arc<Mutex<HashMap<FlightKey, Flight>>>,
    jitter: RandomState,
    metrics: CacheMetrics,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("redis", &self.redis).finish_non_exhaustive()
    }
}

/// What taking the ticket found.
enum Ticketed<T> {
    /// The entry was stored meanwhile.
    Cached(T),
    /// Still a miss: load, then fill under this ticket.
    Load(String),
}

impl Cache {
    /// A cache storing JSON values in `redis`.
    pub fn new(redis: RedisClient) -> Self {
        let metrics = CacheMetrics::new();
        let in_flight = Arc::new(Mutex::new(HashMap::new()));
        Cache { redis, client_cache: ClientCache::disabled(), in_flight, jitter: RandomState::new(), metrics }
    }

    /// Serves hits from `client_cache` (process memory, invalidated by Redis) before asking Redis. The client
    /// cache's tracked prefixes must cover this cache's keys (it cannot check): an untracked key would be
    /// served from memory until its TTL, whoever changed it.
    pub fn with_client_cache(mut self, client_cache: ClientCache) -> Self {
        self.client_cache = client_cache;
        self
    }

    /// The value under `key`, or `loader`'s value stored with `ttl` (±10 % jitter, so keys written together do
    /// not expire together) — unless `key` was invalidated while `loader` ran, for then the value may predate
    /// the write: it is returned but not stored. Concurrent misses on one key in this process run `loader` once.
    /// When Redis fails or its breaker is open, `loader` is called directly: the cache degrades, the caller does
    /// not fail.
    pub async fn get_or_load<T, E, F, Fut>(&self, key: &str, ttl: Duration, loader: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(value) = self.get_from_memory::<T>(key) {
            return Ok(value);
        }
        let started = Instant::now();
        let ticket = self.client_cache.ticket();
        let (result, outcome) = self.lookup(key, ttl, loader).await;
        if let (Ok(value), "hit" | "miss") = (&result, outcome) {
            self.client_cache.fill(ticket, key, value.clone());
        }
        self.metrics.looked_up(outcome, started.elapsed());
        result
    }

    /// The value under `key` when the client cache holds it (counted as a hit): the answer [`Self::get_or_load`]
    /// gives without Redis, without its `async` machinery. A caller on a hot path tries this first and awaits
    /// `get_or_load` (boxed) only on `None`: that future holds the Redis calls and the loader's, and every
    /// `async` layer awaiting it copies all of it — a cost measured on each request.
    pub fn get_from_memory<T: Clone + Send + Sync + 'static>(&self, key: &str) -> Option<T> {
        let value = self.client_cache.get::<T>(key)?;
        self.metrics.hit_in_memory();
        Some(value)
    }

    /// Forgets `key` after a write to what it caches — call it once the write is committed. It deletes the entry
    /// and its fill ticket, so no load that began before this call can store what it read. An error means the
    /// entry may stay stale until its TTL ends.
    pub async fn invalidate(&self, key: &str) -> Result<(), RedisError> {
        // Forgotten in memory before (fills in flight are refused) and after (a read answered between the two
        // by Redis' old value is dropped) — the tracking push would do it, but not necessarily before this
        // process's next read.
        self.client_cache.forget(key);
        let deleted = self.redis.del(&[key, &ticket_key(key)]).await.map(drop);
        self.client_cache.forget(key);
        deleted
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
            Err(err) if err.is_unavailable() => return (self.bypass(key, &err, loader).await, "bypass"),
            // A value that cannot be decoded (old format...) is replaced by a fresh load.
            Err(err) => tracing::warn!(key, error = %err, "cache value unreadable; reloading"),
        }
        match self.take_ticket::<T>(key, ttl).await {
            Ok(Ticketed::Cached(value)) => (Ok(value), "hit"),
            Ok(Ticketed::Load(ticket)) => self.load_and_fill(key, &ticket, ttl, loader).await,
            Err(err) if err.is_unavailable() => (self.bypass(key, &err, loader).await, "bypass"),
            Err(err) => {
                tracing::warn!(key, error = %err, "cannot take the cache's fill ticket; loading without caching");
                (loader().await, "error")
            }
        }
    }

    async fn bypass<T, E, F, Fut>(&self, key: &str, err: &RedisError, loader: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        tracing::debug!(key, error = %err, "cache bypassed: Redis unavailable");
        loader().await
    }

    async fn take_ticket<T: DeserializeOwned>(&self, key: &str, ttl: Duration) -> Result<Ticketed<T>, RedisError> {
        let fresh = new_ticket()?;
        let keys = [key, &ticket_key(key)];
        let (ticket, cached): (String, Option<Vec<u8>>) =
            self.redis.eval(&TAKE_TICKET, &keys, &(fresh, expiry_ms(ttl))).await?;
        // An entry that does not decode is a miss: the fill replaces it.
        match cached.and_then(|bytes| serde_json::from_slice(&bytes).ok()) {
            Some(value) => Ok(Ticketed::Cached(value)),
            None => Ok(Ticketed::Load(ticket)),
        }
    }

    /// Runs `loader` once for every caller in this process holding the same ticket (a caller that took its ticket
    /// after an invalidation does not wait for a load that began before it), then fills under the ticket.
    async fn load_and_fill<T, E, F, Fut>(
        &self,
        key: &str,
        ticket: &str,
        ttl: Duration,
        loader: F,
    ) -> (Result<T, E>, &'static str)
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let flight_key = (key.to_string(), ticket.to_string());
        let flight = self.flight::<T>(&flight_key);
        let ran_loader = AtomicBool::new(false);
        let loaded = flight
            .get_or_try_init(|| async {
                ran_loader.store(true, Ordering::Relaxed);
                loader().await
            })
            .await
            .cloned();
        let outcome = match &loaded {
            Ok(value) if ran_loader.load(Ordering::Relaxed) => self.fill(key, ticket, value, ttl).await,
            Ok(_) => "miss",
            Err(_) => "error",
        };
        // Landed after the fill: a caller arriving meanwhile takes the loaded value instead of loading again.
        self.land(&flight_key, &flight);
        (loaded, outcome)
    }

    /// Stores `value` unless `key` was invalidated since `ticket` was taken; the lookup's outcome.
    async fn fill<T: Serialize>(&self, key: &str, ticket: &str, value: &T, ttl: Duration) -> &'static str {
        let json = match serde_json::to_vec(value) {
            Ok(json) => json,
            Err(err) => {
                tracing::warn!(key, error = %err, "cannot encode the loaded value; not cached");
                return "error";
            }
        };
        let keys = [key, &ticket_key(key)];
        let args = (ticket, json, expiry_ms(self.jittered(ttl)));
        match self.redis.eval::<u8, _>(&FILL, &keys, &args).await {
            Ok(1) => "miss",
            Ok(_) => {
                tracing::debug!(key, "invalidated while loading: the loaded value is not cached");
                "miss"
            }
            Err(err) => {
                tracing::debug!(key, error = %err, "cannot store the loaded value");
                "error"
            }
        }
    }

    fn flight<T: Send + Sync + 'static>(&self, flight_key: &FlightKey) -> Arc<OnceCell<T>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = in_flight.entry(flight_key.clone()).or_insert_with(|| Arc::new(OnceCell::<T>::new()) as Flight);
        match entry.clone().downcast::<OnceCell<T>>() {
            Ok(cell) => cell,
            // The same key loaded as another type at the same time: load on its own.
            Err(_) => Arc::new(OnceCell::new()),
        }
    }

    /// Forgets the finished load (once), so a later miss loads afresh.
    fn land<T: Send + Sync + 'static>(&self, flight_key: &FlightKey, flight: &Arc<OnceCell<T>>) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let same = in_flight
            .get(flight_key)
            .and_then(|entry| entry.clone().downcast::<OnceCell<T>>().ok())
            .is_some_and(|entry| Arc::ptr_eq(&entry, flight));
        // Removed once loaded, or when nobody else waits on a failed load (the map and this caller hold it).
        if same && (flight.initialized() || Arc::strong_count(flight) <= 2) {
            in_flight.remove(flight_key);
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

/// Where the fill ticket of `key` lives: `key:ticket` (same hash slot when `key` has a hash tag).
fn ticket_key(key: &str) -> String {
    format!("{key}:ticket")
}

/// 128 random bits: a ticket never equals one taken before, even one that expired.
fn new_ticket() -> Result<String, RedisError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|err| RedisError::Conversion(format!("no randomness: {err}")))?;
    Ok(hex::encode(bytes))
}

/// A TTL as the scripts take it: milliseconds, rounded up so a short TTL does not become "none" (0).
fn expiry_ms(ttl: Duration) -> u64 {
    ttl.as_micros().div_ceil(1000).try_into().unwrap_or(u64::MAX)
}
