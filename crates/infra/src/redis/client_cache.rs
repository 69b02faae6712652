//! Server-assisted client-side caching: values read from Redis kept in process memory, and dropped the moment
//! Redis says they changed — on every instance, whoever wrote.
//!
//! One dedicated RESP3 connection per process asks Redis for `CLIENT TRACKING ON BCAST PREFIX ...`: from then on
//! Redis pushes an `invalidate` message naming every key under those prefixes that any client modifies, deletes,
//! or lets expire. The push is applied as it is read (redis-rs calls the push sender inline), so it is in effect
//! before anything that happened after the write reaches this process — in practice; the guarantee is Redis'
//! ordering: the push is queued when the write executes, before the writer even gets its reply.
//!
//! Written here rather than with redis-rs' `cache-aio` (experimental in 1.x): that one caches raw replies per
//! connection, so a hit still pays our command path (span, breaker, pool) and the JSON decoding; this one keeps
//! decoded values (`Arc`s) and answers a hit in well under a microsecond. The store is quick_cache (bounded,
//! S3-FIFO eviction; cheaper per hit than moka, used before, which records every read for its admission policy),
//! each entry with its expiry instant (REDIS_CLIENT_CACHE_TTL), checked on read.
//!
//! # Never serving what Redis invalidated
//!
//! - **Fills race invalidations.** A value read on a pooled connection may be answered just before an
//!   invalidation of the same key arrives on the tracking connection. So a fill takes a [`FillTicket`] (the
//!   invalidation epoch) *before* reading Redis, and is dropped if any invalidation arrived since.
//! - **The tracking connection is lost.** Nothing is served from memory unless tracking is on: the connection
//!   dropping (redis-rs reports the disconnection), or a PING on it failing or taking longer than
//!   [`PING_TIMEOUT`] (a network partition sends no FIN), turns it off and empties the memory. Tracking is
//!   turned on again — memory emptied once more — only after `CLIENT TRACKING` is acknowledged on a new
//!   connection. While it is off every read goes to Redis, as without this cache.
//! - **Own writes.** The writer calls [`ClientCache::forget`] before and after its write: the push would do it,
//!   but the writer's next read must not depend on when the push is read.
//!
//! In a Redis Cluster each node tracks its own keys, which needs one tracking connection per node: not done, so
//! in cluster mode the client cache is off (documented).

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, counter, gauge};
use redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, Value};

use super::client::node_info;
use super::config::{RedisConfig, RedisMode};
use super::metrics::names;

/// How often the tracking connection is checked with a PING.
pub const PING_EVERY: Duration = Duration::from_millis(500);
/// A PING slower than this counts as a lost connection: memory is emptied and tracking restarted.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest pause between two attempts to open the tracking connection.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);
/// The name the tracking connection gives itself (`CLIENT LIST`), so operators and tests can find it.
pub const CONNECTION_NAME: &str = "rust-app-client-cache";

/// A kept value and when it stops being served.
type Entry = (Arc<dyn Any + Send + Sync>, Instant);

/// What a fill must present: the invalidation epoch when the read began. Opaque.
#[derive(Clone, Copy, Debug)]
pub struct FillTicket(u64);

/// Values of tracked keys kept in memory (see the module's doc). Cheap to clone; clones share the memory. The
/// disabled cache (REDIS_CLIENT_CACHE=false, cluster mode) answers nothing and stores nothing.
#[derive(Clone, Default)]
pub struct ClientCache {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCache").field("tracking", &self.is_tracking()).finish_non_exhaustive()
    }
}

struct Shared {
    memory: quick_cache::sync::Cache<String, Entry>,
    /// How long a value is served from memory (a bound on staleness should an invalidation be lost).
    ttl: Duration,
    /// Bumped by every invalidation and every emptying: a fill whose ticket is older is dropped.
    epoch: AtomicU64,
    /// Whether Redis is known to be tracking for us now.
    tracking: AtomicBool,
    /// Which tracking connection is the current one: a late "disconnected" from an old one changes nothing.
    generation: AtomicU64,
    metrics: ClientCacheMetrics,
}

impl ClientCache {
    /// A cache that stores nothing.
    pub fn disabled() -> Self {
        ClientCache { shared: None }
    }

    /// Starts caching the keys under `prefixes` (e.g. `user:`), tracked through a connection of its own to the
    /// server of `config`; disabled when `config` says so or in cluster mode. Must be called inside a Tokio
    /// runtime: the tracking task runs until the last clone is dropped.
    pub fn start(config: &RedisConfig, prefixes: &[&str]) -> Self {
        let settings = config.client_cache;
        if !settings.enabled || config.mode == RedisMode::Cluster {
            return ClientCache::disabled();
        }
        let capacity = usize::try_from(settings.max_entries).unwrap_or(usize::MAX).max(1);
        let shared = Arc::new(Shared {
            memory: quick_cache::sync::Cache::new(capacity),
            ttl: settings.ttl,
            epoch: AtomicU64::new(0),
            tracking: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            metrics: ClientCacheMetrics::new(),
        });
        let tracker = Tracker {
            shared: Arc::downgrade(&shared),
            config: config.clone(),
            prefixes: prefixes.iter().map(|prefix| (*prefix).to_string()).collect(),
        };
        tokio::spawn(tracker.run());
        ClientCache { shared: Some(shared) }
    }

    /// Whether values are being served from memory now (tracking is on).
    pub fn is_tracking(&self) -> bool {
        self.shared.as_ref().is_some_and(|shared| shared.tracking.load(Ordering::Acquire))
    }

    /// The value kept for `key`, if tracking is on and it was stored as a `T`.
    pub fn get<T: Clone + Send + Sync + 'static>(&self, key: &str) -> Option<T> {
        let shared = self.shared.as_ref()?;
        if !shared.tracking.load(Ordering::Acquire) {
            return None;
        }
        let found = match shared.memory.get(key) {
            Some((value, expires)) if Instant::now() < expires => value.downcast_ref::<T>().cloned(),
            Some(_) => {
                shared.memory.remove(key);
                None
            }
            None => None,
        };
        match found {
            Some(_) => shared.metrics.hits.increment(1),
            None => shared.metrics.misses.increment(1),
        }
        found
    }

    /// Taken before reading `key` from Redis, for [`ClientCache::fill`]; `None` while tracking is off.
    pub fn ticket(&self) -> Option<FillTicket> {
        let shared = self.shared.as_ref()?;
        // The epoch is read before the tracking flag: an emptying between the two bumps the epoch.
        let epoch = shared.epoch.load(Ordering::Acquire);
        shared.tracking.load(Ordering::Acquire).then_some(FillTicket(epoch))
    }

    /// Keeps `value` for `key` if no invalidation arrived since `ticket` was taken (and tracking is still on).
    pub fn fill<T: Send + Sync + 'static>(&self, ticket: Option<FillTicket>, key: &str, value: T) {
        let (Some(shared), Some(FillTicket(epoch))) = (self.shared.as_ref(), ticket) else { return };
        if shared.epoch.load(Ordering::Acquire) != epoch || !shared.tracking.load(Ordering::Acquire) {
            return;
        }
        shared.memory.insert(key.to_string(), (Arc::new(value), Instant::now() + shared.ttl));
        // An invalidation that arrived during the insert may have run before it: look again.
        if shared.epoch.load(Ordering::Acquire) != epoch {
            shared.memory.remove(key);
        }
    }

    /// Drops `key` from memory and refuses fills in flight: call it before and after writing `key`.
    pub fn forget(&self, key: &str) {
        if let Some(shared) = &self.shared {
            shared.epoch.fetch_add(1, Ordering::AcqRel);
            shared.memory.remove(key);
        }
    }
}

impl Shared {
    /// Applies one push from tracking connection number `generation`.
    fn on_push(&self, generation: u64, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    for key in keys {
                        if let Value::BulkString(bytes) = key {
                            self.memory.remove(String::from_utf8_lossy(bytes).as_ref());
                        }
                    }
                    self.metrics.invalidations.increment(keys.len() as u64);
                }
                // A null list: everything (FLUSHALL / FLUSHDB).
                _ => self.empty(),
            },
            PushKind::Disconnection if generation == self.generation.load(Ordering::Acquire) => {
                self.stop_tracking("the tracking connection was closed");
            }
            _ => {}
        }
    }

    /// Forgets everything and refuses the fills in flight.
    fn empty(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.memory.clear();
        self.metrics.flushes.increment(1);
    }

    fn stop_tracking(&self, why: &str) {
        if self.tracking.swap(false, Ordering::AcqRel) {
            tracing::warn!(reason = why, "Redis client cache off until tracking is restored; reads go to Redis");
            self.metrics.tracking.set(0.0);
        }
        self.empty();
    }

    fn start_tracking(&self) {
        self.empty();
        if !self.tracking.swap(true, Ordering::AcqRel) {
            tracing::info!("Redis client cache on: Redis tracks the cached keys");
            self.metrics.tracking.set(1.0);
        }
    }
}

/// The task keeping the tracking connection: opens it, asks for tracking, PINGs it, and starts over when it
/// fails. Ends when the cache is dropped.
struct Tracker {
    shared: Weak<Shared>,
    config: RedisConfig,
    prefixes: Vec<String>,
}

impl Tracker {
    async fn run(self) {
        // However the task ends (a panic, the runtime shutting down), nothing is served from memory afterwards:
        // without this task nobody would notice the tracking connection going away.
        let _stop = StopTrackingOnExit(self.shared.clone());
        let mut pause = Duration::from_millis(100);
        loop {
            match self.connect().await {
                Ok(connection) => {
                    pause = Duration::from_millis(100);
                    let Some(shared) = self.shared.upgrade() else { return };
                    shared.start_tracking();
                    drop(shared);
                    let reason = self.watch(connection).await;
                    let Some(shared) = self.shared.upgrade() else { return };
                    shared.stop_tracking(&reason);
                }
                Err(err) => {
                    tracing::debug!(error = %err, "cannot open the Redis client cache's tracking connection");
                }
            }
            if self.shared.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
        }
    }

    /// A RESP3 connection whose pushes reach the cache, tracking the prefixes in broadcast mode.
    async fn connect(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let node = self.config.nodes().next().unwrap_or_default().to_string();
        let info = node_info(&self.config, &node)?;
        let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))?;
        let shared = self.shared.clone();
        let generation = match self.shared.upgrade() {
            Some(shared) => shared.generation.fetch_add(1, Ordering::AcqRel) + 1,
            None => 0,
        };
        let pushes = move |push: PushInfo| {
            if let Some(shared) = shared.upgrade() {
                shared.on_push(generation, push);
            }
            Ok::<(), redis::aio::SendError>(())
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.dial_timeout))
            .set_response_timeout(Some(PING_TIMEOUT))
            .set_push_sender(pushes);
        let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
        redis::cmd("CLIENT").arg("SETNAME").arg(CONNECTION_NAME).exec_async(&mut connection).await?;
        let mut tracking = redis::cmd("CLIENT");
        tracking.arg("TRACKING").arg("ON").arg("BCAST");
        for prefix in &self.prefixes {
            tracking.arg("PREFIX").arg(prefix);
        }
        tracking.exec_async(&mut connection).await?;
        Ok(connection)
    }

    /// PINGs the connection until it fails; why it is considered lost.
    async fn watch(&self, mut connection: redis::aio::MultiplexedConnection) -> String {
        loop {
            tokio::time::sleep(PING_EVERY).await;
            let Some(shared) = self.shared.upgrade() else { return "the cache was dropped".to_string() };
            shared.metrics.entries.set(shared.memory.len() as f64);
            if !shared.tracking.load(Ordering::Acquire) {
                return "the tracking connection was closed".to_string();
            }
            drop(shared);
            let ping = tokio::time::timeout(PING_TIMEOUT, redis::cmd("PING").exec_async(&mut connection)).await;
            match ping {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return format!("PING failed: {err}"),
                Err(_) => return format!("PING unanswered within {PING_TIMEOUT:?}"),
            }
        }
    }
}

/// Turns tracking off when the tracker's task ends, whichever way it ends.
struct StopTrackingOnExit(Weak<Shared>);

impl Drop for StopTrackingOnExit {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.stop_tracking("the tracking task ended");
        }
    }
}

/// The client cache's metrics, handles taken once (a hit must not look a series up).
struct ClientCacheMetrics {
    hits: Counter,
    misses: Counter,
    invalidations: Counter,
    flushes: Counter,
    tracking: Gauge,
    entries: Gauge,
}

impl ClientCacheMetrics {
    fn new() -> Self {
        let metrics = ClientCacheMetrics {
            hits: counter!(names::CLIENT_CACHE_LOOKUPS, "result" => "hit"),
            misses: counter!(names::CLIENT_CACHE_LOOKUPS, "result" => "miss"),
            invalidations: counter!(names::CLIENT_CACHE_INVALIDATIONS),
            flushes: counter!(names::CLIENT_CACHE_FLUSHES),
            tracking: gauge!(names::CLIENT_CACHE_TRACKING),
            entries: gauge!(names::CLIENT_CACHE_ENTRIES),
        };
        for counter in [&metrics.hits, &metrics.misses, &metrics.invalidations, &metrics.flushes] {
            counter.increment(0);
        }
        metrics.tracking.set(0.0);
        metrics.entries.set(0.0);
        metrics
    }
}
