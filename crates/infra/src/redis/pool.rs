//! A small pool of multiplexed Redis connections (standalone or cluster).
//!
//! Written here because no crate fits: bb8 and deadpool lend a connection to one caller at a time, which suits
//! connections that carry one command at a time and wastes redis-rs' multiplexed connections, which pipeline
//! any number of concurrent commands. Lending clones and spreading commands over every connection (what this
//! layer did over bb8) costs a fifth of the throughput at 64 concurrent commands on two cores, because each
//! connection then batches fewer commands per write (measured: 0.80-0.85x one raw connection at 64 concurrent).
//!
//! So this pool fills connections in order: a command goes to the first usable connection carrying fewer than
//! [`SPILL_AT`] commands, and a new connection is opened (in the background, up to REDIS_POOL_SIZE) only when
//! every open one is that busy. At low load that is one connection, like Lettuce's shared connection; under
//! heavy load, or behind a slow reply, commands spill over to more. REDIS_MIN_IDLE_CONNS connections are
//! kept open, REDIS_MAX_CONN_AGE and REDIS_IDLE_TIMEOUT retire connections, and a connection on which a
//! command failed at the connection level is retired at once (redis-rs cannot tell on its own: redis-rs #1415).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, Value};

use crate::health::PoolStats;

/// Commands in flight on a connection before the pool prefers to open another one. One multiplexed connection
/// pipelines 64 concurrent commands at full speed (0.98x a raw connection); spilling at 32 cost 15%.
pub(crate) const SPILL_AT: usize = 128;

/// How often idle, aged and missing connections are dealt with.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

/// A connection to a single server, or to a whole cluster (one connection per node, MOVED/ASK followed).
#[derive(Clone)]
pub(crate) enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Opens connections with the configured dial and response timeouts.
pub(crate) enum Connector {
    Single { client: Client, config: AsyncConnectionConfig },
    Cluster(ClusterClient),
}

impl Connector {
    async fn connect(&self) -> redis::RedisResult<Connection> {
        match self {
            Connector::Single { client, config } => {
                client.get_multiplexed_async_connection_with_config(config).await.map(Connection::Single)
            }
            Connector::Cluster(client) => client.get_async_connection().await.map(Connection::Cluster),
        }
    }
}

/// The pool's limits (REDIS_POOL_SIZE, REDIS_MIN_IDLE_CONNS, REDIS_MAX_CONN_AGE, REDIS_IDLE_TIMEOUT,
/// REDIS_POOL_TIMEOUT).
#[derive(Clone, Debug)]
pub(crate) struct PoolLimits {
    pub max_size: usize,
    pub min_idle: usize,
    pub max_age: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub wait_timeout: Duration,
}

struct Slot {
    conn: Connection,
    opened: Instant,
    /// Milliseconds since the pool's epoch when the last command on this connection finished.
    last_used: AtomicU64,
    in_flight: AtomicUsize,
    broken: AtomicBool,
}

impl Slot {
    fn usable(&self, now: Instant, max_age: Option<Duration>) -> bool {
        !self.broken.load(Ordering::Relaxed) && max_age.is_none_or(|age| now.duration_since(self.opened) < age)
    }
}

/// The pool. Always used behind an `Arc` (background growth and maintenance hold a `Weak`).
pub(crate) struct Pool {
    slots: RwLock<Vec<Arc<Slot>>>,
    connector: Connector,
    limits: PoolLimits,
    /// Held by whoever is opening a connection; remembers the last failure so callers queued behind a failed
    /// attempt fail with its cause instead of each waiting out their own dial timeout.
    opening: tokio::sync::Mutex<Option<(Instant, String)>>,
    epoch: Instant,
}

/// One command's use of a pooled connection. The connection is a clone (multiplexed), so the slot is never
/// held exclusively; the lease only counts the command in flight.
pub(crate) struct Lease {
    slot: Arc<Slot>,
    epoch: Instant,
    /// The connection to send the command on.
    pub conn: Connection,
}

impl Lease {
    /// Retires the connection: the command saw it fail at the connection level.
    pub fn mark_broken(&self) {
        self.slot.broken.store(true, Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.slot.last_used.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Why no connection could be had.
#[derive(Debug)]
pub(crate) struct NoConnection(pub String);

impl Pool {
    /// A pool opening connections with `connector`; starts the maintenance task when called in a runtime.
    pub fn new(connector: Connector, limits: PoolLimits) -> Arc<Self> {
        let pool = Arc::new(Pool {
            slots: RwLock::new(Vec::new()),
            connector,
            limits,
            opening: tokio::sync::Mutex::new(None),
            epoch: Instant::now(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(maintain(Arc::downgrade(&pool)));
        }
        pool
    }

    /// A connection for one command: the first usable one with room, else a new one, else the least busy.
    pub async fn get(self: &Arc<Self>) -> Result<Lease, NoConnection> {
        let (pick, open) = self.pick();
        match pick {
            Some(slot) => {
                if slot.in_flight.load(Ordering::Relaxed) >= SPILL_AT && open < self.limits.max_size {
                    self.grow_in_background();
                }
                Ok(self.lease(slot))
            }
            None => {
                let slot = tokio::time::timeout(self.limits.wait_timeout, self.open_first())
                    .await
                    .map_err(|_| NoConnection(format!("no connection within {:?}", self.limits.wait_timeout)))??;
                Ok(self.lease(slot))
            }
        }
    }

    /// Open connections, those with no command in flight, and the most the pool may open.
    pub fn stats(&self) -> PoolStats {
        let slots = self.read();
        let idle = slots.iter().filter(|s| s.in_flight.load(Ordering::Relaxed) == 0).count();
        PoolStats { size: slots.len(), idle, max_size: self.limits.max_size }
    }

    fn lease(&self, slot: Arc<Slot>) -> Lease {
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease { conn: slot.conn.clone(), slot, epoch: self.epoch }
    }

    /// The slot to use and the number of usable slots; retires unusable ones on the way.
    fn pick(&self) -> (Option<Arc<Slot>>, usize) {
        let now = Instant::now();
        let (mut first_with_room, mut least_busy, mut usable, mut unusable) = (None, None::<&Arc<Slot>>, 0, 0);
        let slots = self.read();
        for slot in slots.iter() {
            if !slot.usable(now, self.limits.max_age) {
                unusable += 1;
                continue;
            }
            usable += 1;
            let busy = slot.in_flight.load(Ordering::Relaxed);
            if busy < SPILL_AT && first_with_room.is_none() {
                first_with_room = Some(slot);
            }
            if least_busy.is_none_or(|best| busy < best.in_flight.load(Ordering::Relaxed)) {
                least_busy = Some(slot);
            }
        }
        let pick = first_with_room.or(least_busy).cloned();
        drop(slots);
        if unusable > 0 {
            self.retire_unusable();
        }
        (pick, usable)
    }

    /// Opens the first connection of an empty pool in the caller's task, one caller at a time: if Redis is
    /// down this fails at once with its cause, and the callers queued behind share that failure.
    async fn open_first(self: &Arc<Self>) -> Result<Arc<Slot>, NoConnection> {
        let queued_at = Instant::now();
        let mut last_failure = self.opening.lock().await;
        if let (Some(slot), _) = self.pick() {
            return Ok(slot);
        }
        if let Some((failed_at, cause)) = last_failure.as_ref()
            && *failed_at >= queued_at
        {
            return Err(NoConnection(cause.clone()));
        }
        match self.connector.connect().await {
            Ok(conn) => {
                *last_failure = None;
                Ok(self.add(conn))
            }
            Err(err) => {
                let cause = err.to_string();
                *last_failure = Some((Instant::now(), cause.clone()));
                Err(NoConnection(cause))
            }
        }
    }

    /// Opens one more connection in the background unless one is being opened already or the pool is full.
    fn grow_in_background(self: &Arc<Self>) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(pool) = pool.upgrade() {
                pool.open_one().await;
            }
        });
    }

    /// Opens one connection if the pool has room and nobody else is opening one; failures are left to the
    /// commands (and the breaker) to report.
    async fn open_one(&self) {
        let Ok(mut last_failure) = self.opening.try_lock() else { return };
        if self.read().len() >= self.limits.max_size {
            return;
        }
        match self.connector.connect().await {
            Ok(conn) => {
                *last_failure = None;
                self.add(conn);
            }
            Err(err) => {
                tracing::debug!(target: "infra::redis::pool", error = %err, "could not open a Redis connection");
                *last_failure = Some((Instant::now(), err.to_string()));
            }
        }
    }

    fn add(&self, conn: Connection) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            conn,
            opened: Instant::now(),
            last_used: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            in_flight: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
        });
        self.write().push(slot.clone());
        slot
    }

    fn retire_unusable(&self) {
        let now = Instant::now();
        self.write().retain(|slot| slot.usable(now, self.limits.max_age));
    }

    /// Closes connections idle for longer than REDIS_IDLE_TIMEOUT, keeping REDIS_MIN_IDLE_CONNS of them.
    fn retire_idle(&self) {
        let Some(idle_timeout) = self.limits.idle_timeout else { return };
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let idle_ms = idle_timeout.as_millis() as u64;
        let mut slots = self.write();
        let mut keep = slots.len();
        slots.retain(|slot| {
            let idle = slot.in_flight.load(Ordering::Relaxed) == 0
                && now_ms.saturating_sub(slot.last_used.load(Ordering::Relaxed)) >= idle_ms;
            if idle && keep > self.limits.min_idle {
                keep -= 1;
                false
            } else {
                true
            }
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Slot>>> {
        self.slots.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Slot>>> {
        self.slots.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Every second: retire aged, broken and idle connections, and open connections up to REDIS_MIN_IDLE_CONNS.
/// Ends when the pool is dropped.
async fn maintain(pool: Weak<Pool>) {
    let mut ticks = tokio::time::interval(MAINTENANCE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.retire_unusable();
        pool.retire_idle();
        if pool.read().len() < pool.limits.min_idle {
            pool.open_one().await;
        }
    }
}
