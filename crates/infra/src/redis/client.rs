//! The connection pool (bb8) over redis-rs multiplexed connections.

use std::fmt;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};
use secrecy::ExposeSecret;

use super::RedisConfig;

/// Errors of the Redis layer. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// REDIS_ADDR could not be turned into connection settings.
    #[error("REDIS_ADDR {addr} is not a valid Redis address: {reason}")]
    InvalidAddress {
        /// The address, password masked.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No connection could be had from the pool.
    #[error("no Redis connection: {0}")]
    Pool(String),
    /// The server answered with an error, or the connection failed mid-command.
    #[error("Redis command failed: {0}")]
    Command(#[from] redis::RedisError),
}

/// Opens multiplexed connections with the configured dial and response timeouts; redis-rs' own bb8 support
/// uses fixed defaults instead, which would ignore REDIS_DIAL_TIMEOUT and REDIS_READ/WRITE_TIMEOUT.
pub struct RedisConnector {
    client: Client,
    connection: AsyncConnectionConfig,
}

impl bb8::ManageConnection for RedisConnector {
    type Connection = MultiplexedConnection;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        self.client.get_multiplexed_async_connection_with_config(&self.connection).await
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        redis::cmd("PING").query_async::<()>(conn).await
    }

    fn has_broken(&self, _: &mut Self::Connection) -> bool {
        false
    }
}

/// A pool of Redis connections honouring every REDIS_* pool setting. Built lazily: the process starts (and
/// reports Redis down) even when Redis is not reachable.
#[derive(Clone)]
pub struct RedisClient {
    pool: bb8::Pool<RedisConnector>,
    addr: String,
}

impl fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClient").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl RedisClient {
    /// Builds the pool from `config`.
    pub fn connect_lazy(config: &RedisConfig) -> Result<Self, RedisError> {
        let addr = config.redacted_addr();
        let invalid =
            |err: redis::RedisError| RedisError::InvalidAddress { addr: addr.clone(), reason: err.to_string() };
        let url = if config.addr.contains("://") { config.addr.clone() } else { format!("redis://{}", config.addr) };
        let info = url.as_str().into_connection_info().map_err(invalid)?;
        let mut settings = info.redis_settings().clone().set_db(i64::from(config.db));
        let password = config.password.expose_secret();
        if !password.is_empty() {
            settings = settings.set_password(password);
        }
        let client = Client::open(info.set_redis_settings(settings)).map_err(invalid)?;
        // One reply may take the time to write the command plus the time to read the answer.
        let response_timeout = config.read_timeout + config.write_timeout;
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.dial_timeout))
            .set_response_timeout(Some(response_timeout));
        let non_zero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        let pool = bb8::Pool::builder()
            .max_size(config.pool_size)
            .min_idle(Some(config.min_idle_conns).filter(|n| *n > 0))
            .max_lifetime(non_zero(config.max_conn_age))
            .idle_timeout(non_zero(config.idle_timeout))
            .connection_timeout(config.pool_timeout)
            // Fail fast with the real cause instead of retrying until the pool timeout: retries belong to the
            // callers, which know whether a command is idempotent.
            .retry_connection(false)
            // A PING before every checkout would double the round trips of every command; broken connections
            // surface as command errors instead, which the caller may retry.
            .test_on_check_out(false)
            .build_unchecked(RedisConnector { client, connection });
        Ok(RedisClient { pool, addr })
    }

    /// A connection from the pool.
    pub async fn connection(&self) -> Result<bb8::PooledConnection<'_, RedisConnector>, RedisError> {
        self.pool.get().await.map_err(|err| RedisError::Pool(err.to_string()))
    }

    /// Pool statistics: (connections, idle connections).
    pub fn pool_state(&self) -> (u32, u32) {
        let state = self.pool.state();
        (state.connections, state.idle_connections)
    }

    /// The configured address, password masked.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}
