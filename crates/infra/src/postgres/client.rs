//! The client: a sqlx pool honouring every POSTGRES_* setting, guarded by a circuit breaker so an outage makes
//! calls fail fast with the real cause instead of each waiting for the acquire timeout.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use opentelemetry_semantic_conventions::attribute::{DB_NAMESPACE, DB_SYSTEM_NAME};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, Postgres};
use sqlx::{Connection, PgPool};
use tracing::Instrument;

use super::config::PostgresConfig;
use super::error::PostgresError;
use super::isolation::Isolation;
use super::metrics::PoolMetrics;
use super::query::{self, QueryMeta};
use super::statement::{Row, Statement};
use super::transaction::Transaction;
use crate::health::PoolStats;
use crate::resilience::{CircuitBreaker, CircuitOpen, OutageLog};

struct Inner {
    pool: PgPool,
    /// The pool as seen by its own `after_release` hook (to count idle connections). Cleared when the client is
    /// dropped, which breaks the pool → hook → pool cycle so an unclosed pool is still freed.
    pool_slot: Arc<Mutex<Option<PgPool>>>,
    /// For direct probe connections. Holds the password: never printed.
    connect_options: PgConnectOptions,
    connect_timeout: Duration,
    breaker: CircuitBreaker,
    last_cause: Mutex<String>,
    /// One WARN when the server becomes unreachable, one INFO when it is back (failures counted meanwhile).
    outage: OutageLog,
    meta: QueryMeta,
    metrics: PoolMetrics,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.pool_slot.lock() {
            slot.take();
        }
    }
}

/// A PostgreSQL client. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PostgresClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for PostgresClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresClient").field("address", &self.inner.meta.address).finish_non_exhaustive()
    }
}

impl PostgresClient {
    /// Builds the pool from `config`. No connection is made until one is needed: the process starts (and
    /// reports the database down) even when PostgreSQL is not reachable yet.
    pub fn connect_lazy(config: &PostgresConfig) -> Result<Self, PostgresError> {
        let connect_options = config.connect_options().map_err(PostgresError::Config)?;
        let pool_slot: Arc<Mutex<Option<PgPool>>> = Arc::new(Mutex::new(None));
        let pool = pool_options(config, pool_slot.clone()).connect_lazy_with(connect_options.clone());
        if let Ok(mut slot) = pool_slot.lock() {
            *slot = Some(pool.clone());
        }
        let meta = QueryMeta::new(config, &connect_options);
        let inner = Inner {
            pool,
            pool_slot,
            connect_options,
            connect_timeout: config.connect_timeout,
            breaker: CircuitBreaker::new("postgres", config.breaker.clone()),
            last_cause: Mutex::new(String::new()),
            outage: OutageLog::new("PostgreSQL"),
            meta,
            metrics: PoolMetrics::new(config.max_open_conns),
        };
        let inner = Arc::new(inner);
        spawn_idle_trimmer(Arc::downgrade(&inner), config.max_idle_conns as usize);
        Ok(PostgresClient { inner })
    }

    /// The underlying sqlx pool, for what this API does not cover (e.g. streaming). Calls through it bypass
    /// the breaker, tracing and metrics.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// `host:port/database`: where the client connects, without credentials, safe to log.
    pub fn address(&self) -> &str {
        &self.inner.meta.address
    }

    /// The circuit breaker guarding connection acquisition.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// Runs a statement that returns no rows; returns the number of rows affected.
    #[doc(alias = "exec_with_tracing")]
    pub async fn exec(&self, statement: Statement) -> Result<u64, PostgresError> {
        self.run(statement, |conn, st| Box::pin(query::exec(conn, st)), |n| *n).await
    }

    /// Runs a query and decodes every row.
    #[doc(alias = "query_with_tracing")]
    pub async fn query<T>(&self, statement: Statement) -> Result<Vec<T>, PostgresError>
    where
        T: Row,
    {
        self.run(statement, |conn, st| Box::pin(query::fetch_all(conn, st)), |rows: &Vec<T>| rows.len() as u64).await
    }

    /// Runs a query that must return exactly one row ([`PostgresError::NotFound`] otherwise).
    pub async fn query_one<T>(&self, statement: Statement) -> Result<T, PostgresError>
    where
        T: Row,
    {
        self.run(statement, |conn, st| Box::pin(query::fetch_one(conn, st)), |_| 1).await
    }

    /// Runs a query that returns at most one row.
    pub async fn query_optional<T>(&self, statement: Statement) -> Result<Option<T>, PostgresError>
    where
        T: Row,
    {
        self.run(
            statement,
            |conn, st| Box::pin(query::fetch_optional(conn, st)),
            |row: &Option<T>| u64::from(row.is_some()),
        )
        .await
    }

    /// Starts a READ COMMITTED transaction. Commit it explicitly; dropping it rolls back.
    #[doc(alias = "begin_tx_with_tracing")]
    pub async fn begin(&self) -> Result<Transaction, PostgresError> {
        self.begin_with(Isolation::ReadCommitted).await
    }

    /// Starts a transaction at the given isolation level.
    pub async fn begin_with(&self, isolation: Isolation) -> Result<Transaction, PostgresError> {
        let span = self.inner.meta.transaction_span(isolation);
        let tx =
            self.gated(Box::pin(self.inner.pool.begin_with(isolation.begin_sql()))).instrument(span.clone()).await?;
        Ok(Transaction::new(tx, self.inner.meta.clone(), span))
    }

    /// Runs `work` in a transaction and commits it, retrying the whole transaction (a fresh one each time) on
    /// serialization failure (40001) or deadlock (40P01), with exponential backoff and jitter, at most
    /// `policy.max_attempts` times. The error says how many attempts were made.
    ///
    /// ```no_run
    /// # use infra::postgres::{Isolation, PostgresClient, PostgresError, RetryPolicy, sql};
    /// # async fn transfer(client: &PostgresClient) -> Result<(), PostgresError> {
    /// client
    ///     .transaction(Isolation::Serializable, RetryPolicy::default(), |tx| {
    ///         Box::pin(async move {
    ///             tx.exec(sql("UPDATE accounts SET balance = balance - $1 WHERE id = $2").bind(10).bind(1)).await?;
    ///             Ok(())
    ///         })
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn transaction<T, F>(
        &self,
        isolation: Isolation,
        policy: RetryPolicy,
        mut work: F,
    ) -> Result<T, PostgresError>
    where
        F: for<'t> FnMut(&'t mut Transaction) -> BoxFuture<'t, Result<T, PostgresError>>,
    {
        let mut delays = policy.delays();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome: Result<T, PostgresError> = async {
                let mut tx = self.begin_with(isolation).await?;
                let value = work(&mut tx).await?;
                tx.commit().await?;
                Ok(value)
            }
            .await;
            match outcome {
                Err(err) if err.is_transient_conflict() => match delays.next() {
                    Some(delay) if attempts < policy.max_attempts => {
                        self.inner.metrics.retries.increment(1);
                        tracing::debug!(attempt = attempts, sqlstate = err.sqlstate(), ?delay, "retrying transaction");
                        tokio::time::sleep(delay).await;
                    }
                    _ => return Err(PostgresError::RetriesExhausted { attempts, last: Box::new(err) }),
                },
                other => return other,
            }
        }
    }

    /// The pool's occupancy now (also refreshes the pool gauges).
    pub fn pool_stats(&self) -> PoolStats {
        let pool = &self.inner.pool;
        let (size, idle) = (pool.size(), pool.num_idle());
        self.inner.metrics.pool_state(size, idle);
        PoolStats { size: size as usize, idle, max_size: pool.options().get_max_connections() as usize }
    }

    /// Applies `migrator`'s migrations. sqlx holds an advisory lock meanwhile, so concurrent starts of several
    /// instances apply each migration once. Returns the versions applied by this call.
    ///
    /// Runs on a connection of its own with no statement timeout: POSTGRES_STATEMENT_TIMEOUT is for the service's
    /// statements; a migration (or the wait for another instance's migration lock) may legitimately take longer.
    pub async fn migrate(&self, migrator: &sqlx::migrate::Migrator) -> Result<Vec<i64>, PostgresError> {
        let span = tracing::info_span!(
            "postgresql migrate",
            { DB_SYSTEM_NAME } = super::query::POSTGRESQL,
            { DB_NAMESPACE } = %self.inner.meta.database,
        );
        // Through the breaker first: an outage is reported as such.
        let conn = self.gated(Box::pin(self.inner.pool.acquire())).await?;
        drop(conn);
        let mut conn =
            PgConnection::connect_with(&self.inner.connect_options).await.map_err(PostgresError::from_sqlx)?;
        let applied = migrate_on(&mut conn, migrator).instrument(span).await;
        let _ = conn.close().await;
        let applied = applied?;
        if !applied.is_empty() {
            tracing::info!(versions = ?applied, "migrations applied");
        }
        Ok(applied)
    }

    /// Closes every connection; waits for borrowed ones to be returned.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    /// Checks the server with a fresh connection (not the pool), bounded by the connect timeout: the cause of
    /// an outage, or the proof that it is over.
    pub async fn probe(&self) -> Result<(), String> {
        let inner = &self.inner;
        match tokio::time::timeout(inner.connect_timeout, PgConnection::connect_with(&inner.connect_options)).await {
            Ok(Ok(conn)) => {
                let _ = tokio::time::timeout(inner.connect_timeout, conn.close()).await;
                Ok(())
            }
            Ok(Err(err)) => Err(PostgresError::from_sqlx(err).to_string()),
            Err(_) => Err(format!("connecting timed out after {}", humantime::format_duration(inner.connect_timeout))),
        }
    }

    async fn run<T, R>(
        &self,
        statement: Statement,
        fetch: impl for<'c> FnOnce(&'c mut PgConnection, Statement) -> BoxFuture<'c, Result<T, PostgresError>>,
        rows: R,
    ) -> Result<T, PostgresError>
    where
        R: Fn(&T) -> u64,
    {
        let span = self.inner.meta.span(&statement);
        let (sql, operation) = (statement.sql, statement.operation());
        let work = async {
            let mut conn = self.acquire().await?;
            fetch(&mut conn, statement).await
        };
        query::observe(&self.inner.meta, sql, operation, span, work, rows).await
    }

    async fn acquire(&self) -> Result<PoolConnection<Postgres>, PostgresError> {
        self.gated(Box::pin(self.inner.pool.acquire())).await
    }

    /// Gets something from the pool (a connection, a begun transaction) through the breaker, measuring the
    /// wait and classifying failures.
    ///
    /// `from_pool` comes boxed: sqlx's acquire future embeds the whole connect state machine (TLS included),
    /// kilobytes that would otherwise be copied through every future awaiting it — measured at ~10 µs per
    /// statement when inline. sqlx's own executor boxes it the same way.
    async fn gated<T>(&self, from_pool: BoxFuture<'_, Result<T, sqlx::Error>>) -> Result<T, PostgresError> {
        let inner = &self.inner;
        // The breaker keeps its own state gauges (`circuit_breaker_state`).
        let permit = inner.breaker.acquire().map_err(|open| self.refused(open))?;
        if permit.is_probe()
            && let Err(cause) = Box::pin(self.probe()).await
        {
            permit.failure();
            return Err(self.unavailable(cause));
        }
        inner.metrics.waiting.increment(1.0);
        let started = Instant::now();
        let result = from_pool.await;
        let waited = started.elapsed();
        inner.metrics.waiting.decrement(1.0);
        inner.metrics.acquired(waited);
        let outcome = match result {
            Ok(value) => {
                permit.success();
                inner.outage.succeeded(&inner.meta.address);
                inner.metrics.pool_state(inner.pool.size(), inner.pool.num_idle());
                return Ok(value);
            }
            Err(sqlx::Error::PoolTimedOut) => match Box::pin(self.probe()).await {
                Ok(()) => {
                    permit.success();
                    Err(PostgresError::PoolExhausted { waited })
                }
                Err(cause) => {
                    permit.failure();
                    Err(self.unavailable(cause))
                }
            },
            Err(err) => {
                let error = PostgresError::from_sqlx(err);
                if let PostgresError::Unavailable { cause, .. } = &error {
                    permit.failure();
                    Err(self.unavailable(cause.clone()))
                } else {
                    permit.success();
                    Err(error)
                }
            }
        };
        self.pool_stats();
        outcome
    }

    fn unavailable(&self, cause: String) -> PostgresError {
        if let Ok(mut last) = self.inner.last_cause.lock() {
            last.clone_from(&cause);
        }
        // Counted in postgres_errors_total{class="unavailable"}; logged once per outage.
        self.inner.outage.failed(&self.inner.meta.address, &cause);
        PostgresError::Unavailable { cause, retry_in: None }
    }

    fn refused(&self, open: CircuitOpen) -> PostgresError {
        let cause = self.inner.last_cause.lock().map(|c| c.clone()).unwrap_or_default();
        PostgresError::Unavailable { cause, retry_in: Some(open.retry_in) }
    }
}

/// How [`PostgresClient::transaction`] retries conflicts.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// Delay before the first retry (doubled each time, with jitter).
    pub min_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, min_delay: Duration::from_millis(10), max_delay: Duration::from_millis(500) }
    }
}

impl RetryPolicy {
    fn delays(&self) -> impl Iterator<Item = Duration> {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build()
    }
}

/// How often idle connections beyond POSTGRES_MAX_IDLE_CONNS are looked for.
const IDLE_TRIM_PERIOD: Duration = Duration::from_secs(1);

/// The `after_release` check can let one connection too many stay idle when several are released at the same
/// instant (each sees the queue before the others join it). This task closes such extras, so the cap holds
/// within a second. It ends when the client is dropped.
fn spawn_idle_trimmer(inner: std::sync::Weak<Inner>, idle_cap: usize) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(IDLE_TRIM_PERIOD).await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.pool.is_closed() {
                return;
            }
            while inner.pool.num_idle() > idle_cap {
                match inner.pool.try_acquire() {
                    Some(mut conn) => conn.close_on_drop(),
                    None => break,
                }
            }
        }
    });
}

fn pool_options(config: &PostgresConfig, pool_slot: Arc<Mutex<Option<PgPool>>>) -> PgPoolOptions {
    let non_zero = |d: Duration| (!d.is_zero()).then_some(d);
    let idle_cap = config.max_idle_conns as usize;
    PgPoolOptions::new()
        .max_connections(config.max_open_conns)
        .acquire_timeout(config.acquire_timeout)
        .max_lifetime(non_zero(config.conn_max_lifetime))
        .idle_timeout(non_zero(config.conn_max_idle_time))
        // sqlx has no cap on idle connections (only a floor): a released connection beyond the cap is closed.
        .after_release(move |_conn, _meta| {
            let idle = pool_slot.lock().ok().and_then(|slot| slot.as_ref().map(PgPool::num_idle)).unwrap_or(0);
            Box::pin(async move { Ok(idle < idle_cap) })
        })
}

/// Applies `migrator` on `conn` with its statement timeout lifted, returning the versions applied.
async fn migrate_on(conn: &mut PgConnection, migrator: &sqlx::migrate::Migrator) -> Result<Vec<i64>, PostgresError> {
    sqlx::query("SET statement_timeout = 0").execute(&mut *conn).await.map_err(PostgresError::from_sqlx)?;
    let before = applied_versions(conn).await?;
    migrator.run(&mut *conn).await.map_err(|err| PostgresError::Migration(err.to_string()))?;
    let after = applied_versions(conn).await?;
    Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
}

/// The versions recorded in sqlx's migration table (none before the first migration).
async fn applied_versions(conn: &mut PgConnection) -> Result<Vec<i64>, PostgresError> {
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(PostgresError::from_sqlx)?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .map_err(PostgresError::from_sqlx)
}
