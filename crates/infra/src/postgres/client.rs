//! The connection pool.

use std::fmt;
use std::str::FromStr;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::PostgresConfig;

/// Errors of the PostgreSQL layer.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The DSN could not be turned into connection options. The DSN itself is not quoted: it holds a password.
    #[error("POSTGRES_DSN is not a valid PostgreSQL connection URL")]
    InvalidDsn,
}

/// A pool of PostgreSQL connections, opened lazily: the process starts (and reports the database down) even
/// when PostgreSQL is not reachable yet.
#[derive(Clone)]
pub struct PostgresClient {
    pool: PgPool,
    target: String,
}

impl fmt::Debug for PostgresClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresClient").field("target", &self.target).finish_non_exhaustive()
    }
}

impl PostgresClient {
    /// Builds the pool from `config`; no connection is made until one is needed.
    pub fn connect_lazy(config: &PostgresConfig) -> Result<Self, PostgresError> {
        let options = PgConnectOptions::from_str(config.dsn.expose_secret()).map_err(|_| PostgresError::InvalidDsn)?;
        let non_zero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_open_conns)
            .max_lifetime(non_zero(config.conn_max_lifetime))
            .idle_timeout(non_zero(config.conn_max_idle_time))
            .connect_lazy_with(options);
        Ok(PostgresClient { pool, target: config.target() })
    }

    /// The underlying sqlx pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `host:port/database`, safe to log.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Closes every connection; waits for borrowed ones to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
