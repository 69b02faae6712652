//! The client: a pool of redis-rs multiplexed connections (standalone or cluster) honouring every REDIS_*
//! setting, commands with a span each, retries of idempotent commands on connection errors, and a circuit
//! breaker.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use opentelemetry_semantic_conventions::attribute::{
    DB_NAMESPACE, DB_OPERATION_NAME, DB_SYSTEM_NAME, ERROR_TYPE, SERVER_ADDRESS, SERVER_PORT,
};
use redis::cluster::ClusterClient;
use redis::{AsyncConnectionConfig, Client, Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo, ToRedisArgs};
use secrecy::ExposeSecret;
use tracing::field::Empty;

use super::config::{RedisConfig, RedisMode};
use super::error::{RedisError, is_connection_level};
use super::metrics::RedisMetrics;
use super::pool::{Connector, Pool, PoolLimits};
use super::script::LuaScript;
use crate::health::PoolStats;
use crate::resilience::{CircuitBreaker, OutageLog};

struct Inner {
    pool: Arc<Pool>,
    mode: RedisMode,
    address: String,
    /// For spans: the server's host and port; in cluster mode the seed list and no port.
    host: String,
    port: Option<u16>,
    db: u32,
    breaker: CircuitBreaker,
    /// One WARN when the server becomes unreachable, one INFO when it is back (failures counted meanwhile).
    outage: OutageLog,
    max_retries: u32,
    backoff: ExponentialBuilder,
    metrics: RedisMetrics,
}

/// A Redis client. Cheap to clone; clones share the pool and the breaker. Built lazily: the process starts
/// (and reports Redis down) even when Redis is not reachable.
#[derive(Clone)]
pub struct RedisClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClient").field("address", &self.inner.address).finish_non_exhaustive()
    }
}

/// The span attribute naming what kind of key a command touched: this service's own (the conventions have no
/// key attribute, and a whole key may hold a session digest, an address or an account name).
pub const KEY_PREFIX: &str = "rust_app.redis.key_prefix";

/// Whether a command may be sent again after a failure that may or may not have reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

impl RedisClient {
    /// Builds the client from `config`. No connection is opened here: the process starts (and reports Redis
    /// down) even when Redis is not reachable. Called inside a Tokio runtime, it also starts the pool's
    /// maintenance (REDIS_MIN_IDLE_CONNS, REDIS_IDLE_TIMEOUT, REDIS_MAX_CONN_AGE).
    pub fn connect_lazy(config: &RedisConfig) -> Result<Self, RedisError> {
        let address = config.redacted_addr();
        let invalid =
            |err: redis::RedisError| RedisError::InvalidAddress { addr: address.clone(), reason: err.to_string() };
        let nodes =
            config.nodes().map(|node| node_info(config, node)).collect::<Result<Vec<_>, _>>().map_err(invalid)?;
        // One reply may take the time to write the command plus the time to read the answer.
        let response_timeout = config.read_timeout + config.write_timeout;
        let (connector, host, port) = match config.mode {
            RedisMode::Standalone => {
                let info = nodes.into_iter().next().ok_or_else(|| invalid(no_address()))?;
                let (host, port) = host_port(&info);
                let client = Client::open(info).map_err(invalid)?;
                let connection = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(config.dial_timeout))
                    .set_response_timeout(Some(response_timeout));
                (Connector::Single { client, config: connection }, host, Some(port))
            }
            RedisMode::Cluster => {
                let client = ClusterClient::builder(nodes)
                    .connection_timeout(config.dial_timeout)
                    .response_timeout(response_timeout)
                    .build()
                    .map_err(invalid)?;
                (Connector::Cluster(client), address.clone(), None)
            }
        };
        let non_zero = |d: Duration| (!d.is_zero()).then_some(d);
        let limits = PoolLimits {
            max_size: config.pool_size as usize,
            min_idle: config.min_idle_conns as usize,
            max_age: non_zero(config.max_conn_age),
            idle_timeout: non_zero(config.idle_timeout),
            wait_timeout: config.pool_timeout,
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(200))
            // The first retry is immediate (see `run`), the others back off.
            .with_max_times(config.max_retries.saturating_sub(1) as usize)
            .with_jitter();
        let inner = Inner {
            pool: Pool::new(connector, limits),
            mode: config.mode,
            address,
            host,
            port,
            db: config.db,
            breaker: CircuitBreaker::new("redis", config.breaker.clone()),
            outage: OutageLog::new("Redis"),
            max_retries: config.max_retries,
            backoff,
            metrics: RedisMetrics::new(),
        };
        Ok(RedisClient { inner: Arc::new(inner) })
    }

    /// `SET key value PX ttl` (no expiry when `ttl` is zero).
    #[doc(alias = "set_with_tracing")]
    pub async fn set<V>(&self, key: &str, value: V, ttl: Duration) -> Result<(), RedisError>
    where
        V: ToRedisArgs + Send + Sync,
    {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if !ttl.is_zero() {
            cmd.arg("PX").arg(ttl.as_millis() as u64);
        }
        self.run::<()>("SET", Some(key), Idempotent::Yes, cmd).await
    }

    /// `GET key`: `Ok(None)` for a missing key, distinct from an error.
    #[doc(alias = "get_with_tracing")]
    pub async fn get<T>(&self, key: &str) -> Result<Option<T>, RedisError>
    where
        T: FromRedisValue + Send,
    {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.run::<Option<T>>("GET", Some(key), Idempotent::Yes, cmd).await
    }

    /// `DEL key...`: the number of keys removed.
    #[doc(alias = "del_with_tracing")]
    pub async fn del(&self, keys: &[&str]) -> Result<u64, RedisError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(keys);
        self.run("DEL", keys.first().copied(), Idempotent::Yes, cmd).await
    }

    /// `MGET key...`: one `Option` per key, in order.
    pub async fn mget<T>(&self, keys: &[&str]) -> Result<Vec<Option<T>>, RedisError>
    where
        T: FromRedisValue + Send,
    {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        self.run("MGET", keys.first().copied(), Idempotent::Yes, cmd).await
    }

    /// `INCRBY key by`: the new value. Never retried: a retry after a lost reply would count twice.
    pub async fn incr(&self, key: &str, by: i64) -> Result<i64, RedisError> {
        let mut cmd = redis::cmd("INCRBY");
        cmd.arg(key).arg(by);
        self.run("INCRBY", Some(key), Idempotent::No, cmd).await
    }

    /// `PEXPIRE key ttl`: whether the key exists (and now expires).
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, RedisError> {
        let mut cmd = redis::cmd("PEXPIRE");
        cmd.arg(key).arg(ttl.as_millis() as u64);
        self.run("PEXPIRE", Some(key), Idempotent::Yes, cmd).await
    }

    /// `ZADD key score member`: whether the member is new (an existing one gets the new score).
    pub async fn zadd(&self, key: &str, score: i64, member: &str) -> Result<bool, RedisError> {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(key).arg(score).arg(member);
        self.run("ZADD", Some(key), Idempotent::Yes, cmd).await
    }

    /// `ZREMRANGEBYSCORE key -inf max`: removes the members scored at most `max`; how many.
    pub async fn zremrangebyscore_upto(&self, key: &str, max: i64) -> Result<u64, RedisError> {
        let mut cmd = redis::cmd("ZREMRANGEBYSCORE");
        cmd.arg(key).arg("-inf").arg(max);
        self.run("ZREMRANGEBYSCORE", Some(key), Idempotent::Yes, cmd).await
    }

    /// `ZRANGE key 0 -1`: every member of the sorted set, lowest score first (none for a missing key).
    pub async fn zrange_all(&self, key: &str) -> Result<Vec<String>, RedisError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(key).arg(0).arg(-1);
        self.run("ZRANGE", Some(key), Idempotent::Yes, cmd).await
    }

    /// Stores `value` as JSON.
    pub async fn set_json<V: serde::Serialize>(&self, key: &str, value: &V, ttl: Duration) -> Result<(), RedisError> {
        let json = serde_json::to_vec(value).map_err(|err| RedisError::Conversion(err.to_string()))?;
        self.set(key, json, ttl).await
    }

    /// Reads a JSON value; `Ok(None)` for a missing key.
    pub async fn get_json<V: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<V>, RedisError> {
        match self.get::<Vec<u8>>(key).await? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|err| RedisError::Conversion(err.to_string()))
            }
            None => Ok(None),
        }
    }

    /// Runs a script command (`EVAL`/`EVALSHA`) on `key`. Never retried: a script may not be idempotent.
    pub(crate) async fn script<T>(&self, name: &'static str, key: &str, cmd: Cmd) -> Result<T, RedisError>
    where
        T: FromRedisValue + Send,
    {
        self.run(name, Some(key), Idempotent::No, cmd).await
    }

    /// Runs `script` on `keys` (the first one routes it; in cluster mode all must share its hash slot) with
    /// `args`: `EVALSHA`, then `EVAL` when the server does not know the script yet. Never retried otherwise.
    pub(crate) async fn eval<T, A>(&self, script: &LuaScript, keys: &[&str], args: &A) -> Result<T, RedisError>
    where
        T: FromRedisValue + Send,
        A: ToRedisArgs,
    {
        let key = keys.first().copied().unwrap_or_default();
        match self.script(script.label, key, script.by_sha(keys, args)).await {
            Err(RedisError::UnknownScript { .. }) => self.script(script.label, key, script.by_source(keys, args)).await,
            other => other,
        }
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let pong: String = self.run("PING", None, Idempotent::Yes, redis::cmd("PING")).await?;
        if pong == "PONG" { Ok(()) } else { Err(RedisError::Conversion(format!("PING answered {pong:?}"))) }
    }

    /// The circuit breaker guarding every command.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// The pool's occupancy now; idle connections are those with no command in flight. In cluster mode a
    /// pooled connection holds one connection per node.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }

    /// Standalone or cluster.
    pub fn mode(&self) -> RedisMode {
        self.inner.mode
    }

    /// The configured address (REDIS_ADDR), password masked, safe to log.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Runs `cmd` with a span, retries (idempotent commands, connection-level errors only) and metrics.
    async fn run<T>(
        &self,
        name: &'static str,
        key: Option<&str>,
        idempotent: Idempotent,
        cmd: Cmd,
    ) -> Result<T, RedisError>
    where
        T: FromRedisValue + Send,
    {
        let inner = &self.inner;
        let span = tracing::info_span!(
            target: "infra::redis",
            "redis",
            otel.name = name,
            otel.kind = "client",
            otel.status_code = Empty,
            { DB_SYSTEM_NAME } = "redis",
            { DB_OPERATION_NAME } = name,
            { DB_NAMESPACE } = %inner.db,
            { KEY_PREFIX } = key.and_then(key_prefix),
            { SERVER_ADDRESS } = %inner.host,
            { SERVER_PORT } = inner.port,
            { ERROR_TYPE } = Empty,
        );
        let started = Instant::now();
        let notify = |err: &RedisError, delay: Duration| {
            inner.metrics.retried(name);
            tracing::debug!(parent: &span, command = name, error = %err, ?delay, "retrying Redis command");
        };
        // The first attempt runs outside the retry machinery: it is all but a few commands ever need. The first
        // retry is immediate (a connection the server dropped is the usual cause, and the pool has already
        // retired it); later ones back off exponentially with jitter.
        let result = match self.attempt::<T>(name, &cmd).await {
            Err(err) if idempotent == Idempotent::Yes && inner.max_retries > 0 && is_retryable(&err) => {
                notify(&err, Duration::ZERO);
                (|| self.attempt::<T>(name, &cmd))
                    .retry(inner.backoff)
                    .sleep(tokio::time::sleep)
                    .when(is_retryable)
                    .notify(notify)
                    .await
            }
            other => other,
        };
        if let Err(err) = &result {
            span.record("otel.status_code", "ERROR");
            span.record(ERROR_TYPE, err.metric_class());
        }
        inner.metrics.done(name, started.elapsed(), result.as_ref().err().map(RedisError::metric_class));
        result
    }

    async fn attempt<T>(&self, name: &'static str, cmd: &Cmd) -> Result<T, RedisError>
    where
        T: FromRedisValue + Send,
    {
        let inner = &self.inner;
        let permit = inner.breaker.acquire().map_err(|open| RedisError::CircuitOpen { retry_in: open.retry_in })?;
        // The breaker keeps its own state gauges (`circuit_breaker_state`).
        let mut lease = match inner.pool.get().await {
            Ok(lease) => lease,
            Err(err) => {
                permit.failure();
                inner.outage.failed(&inner.address, &err.0);
                return Err(RedisError::Unavailable { cause: err.0 });
            }
        };
        match cmd.query_async::<T>(&mut lease.conn).await {
            Ok(value) => {
                permit.success();
                inner.outage.succeeded(&inner.address);
                Ok(value)
            }
            Err(err) if is_connection_level(&err) => {
                lease.mark_broken();
                permit.failure();
                inner.outage.failed(&inner.address, &err);
                Err(RedisError::from_redis(name, &err))
            }
            Err(err) => {
                permit.success();
                Err(RedisError::from_redis(name, &err))
            }
        }
    }
}

/// Connection settings for one node of REDIS_ADDR, with the password, user, database and TLS settings applied.
pub(crate) fn node_info(config: &RedisConfig, node: &str) -> redis::RedisResult<ConnectionInfo> {
    let url = match (node.contains("://"), config.tls) {
        (true, _) => node.to_string(),
        (false, true) => format!("rediss://{node}"),
        (false, false) => format!("redis://{node}"),
    };
    let info = url.as_str().into_connection_info()?;
    let mut settings = info.redis_settings().clone().set_db(i64::from(config.db));
    let password = config.password.expose_secret();
    if !password.is_empty() {
        settings = settings.set_password(password);
    }
    if !config.username.is_empty() {
        settings = settings.set_username(&config.username);
    }
    Ok(info.set_redis_settings(settings))
}

fn host_port(info: &ConnectionInfo) -> (String, u16) {
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            (host.clone(), *port)
        }
        other => (other.to_string(), 0),
    }
}

fn no_address() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "REDIS_ADDR is empty"))
}

/// Only connection-level failures are retried: an error reply would fail again.
fn is_retryable(err: &RedisError) -> bool {
    matches!(err, RedisError::Unavailable { .. })
}

/// The part of `key` before its first `:` (`session`, `user`, `rate`) when it looks like a configured prefix: a
/// short name of letters, digits, `_` and `-`. A key without one yields nothing rather than the key itself.
fn key_prefix(key: &str) -> Option<&str> {
    let (prefix, _) = key.split_once(':')?;
    let plain = prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (plain && !prefix.is_empty() && prefix.len() <= 32).then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::key_prefix;

    #[test]
    fn only_a_plain_prefix_of_a_key_is_shown() {
        assert_eq!(key_prefix("session:9f86d081884c7d659a2feaa0c55ad015"), Some("session"));
        assert_eq!(key_prefix("rate:login:203.0.113.9:ada@example.com"), Some("rate"));
        assert_eq!(key_prefix("user:{0190b3c2}"), Some("user"));
        assert_eq!(key_prefix("9f86d081884c7d659a2feaa0c55ad015"), None, "no prefix: nothing, not the key");
        assert_eq!(key_prefix("{tag}:x"), None);
        assert_eq!(key_prefix(":x"), None);
    }
}
