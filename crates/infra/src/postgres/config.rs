//! PostgreSQL settings.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::{Origin, Reader, Unit, check_url, unambiguous_url};
use crate::resilience::{BreakerConfig, BreakerVariables};

/// The default DSN of the local stack (`scripts/stack up` creates this role and database).
pub const DEFAULT_DSN: &str = "postgres://rust_app_user:rust_app_password@localhost:5432/rust_app?sslmode=disable";

const SSL_MODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// PostgreSQL settings. The DSN holds a password, so it is a [`SecretString`]: `Debug` never shows it.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// `POSTGRES_DSN`: `postgres://user:password@host:port/database?sslmode=...`.
    pub dsn: SecretString,
    /// `POSTGRES_MAX_OPEN_CONNS`: most connections open at once.
    pub max_open_conns: u32,
    /// `POSTGRES_MAX_IDLE_CONNS`: most idle connections kept (a cap, not a floor).
    pub max_idle_conns: u32,
    /// `POSTGRES_CONN_MAX_LIFETIME`: a connection older than this is closed (zero: no limit).
    pub conn_max_lifetime: Duration,
    /// `POSTGRES_CONN_MAX_IDLE_TIME`: a connection idle longer than this is closed (zero: no limit).
    pub conn_max_idle_time: Duration,
    /// `POSTGRES_CONNECT_TIMEOUT`: one direct connection attempt (the probes that diagnose an outage and detect
    /// recovery). The pool's own connection attempts are bounded by the acquire timeout.
    pub connect_timeout: Duration,
    /// `POSTGRES_ACQUIRE_TIMEOUT`: waiting for a pooled connection, including opening one.
    pub acquire_timeout: Duration,
    /// `POSTGRES_STATEMENT_TIMEOUT`: server-side `statement_timeout` on every connection (zero: none).
    pub statement_timeout: Duration,
    /// `POSTGRES_STATEMENT_CACHE_CAPACITY`: prepared statements kept per connection (zero: no caching).
    pub statement_cache_capacity: usize,
    /// `POSTGRES_SLOW_QUERY_THRESHOLD`: queries slower than this are logged at warn.
    pub slow_query_threshold: Duration,
    /// `POSTGRES_MIGRATE_ON_START`: apply the embedded migrations when the service starts.
    pub migrate_on_start: bool,
    /// `POSTGRES_SSL_ROOT_CERT`: CA certificate file for `sslmode=verify-ca` / `verify-full`.
    pub ssl_root_cert: Option<std::path::PathBuf>,
    /// `POSTGRES_BREAKER_*`: when to stop asking the pool for connections, and how to recover.
    pub breaker: BreakerConfig,
}

impl PostgresConfig {
    /// Reads the PostgreSQL settings, recording problems in `r`.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let dsn = r.secret_url("POSTGRES_DSN", DEFAULT_DSN, check_dsn);
        let max_open_conns: u32 = r.int("POSTGRES_MAX_OPEN_CONNS", 25, 1, i64::from(u32::MAX));
        let open_ok = r.problems().iter().all(|p| p.name != "POSTGRES_MAX_OPEN_CONNS");
        let mut max_idle_conns: u32 = r.int("POSTGRES_MAX_IDLE_CONNS", 10, 0, i64::from(u32::MAX));
        if r.origin("POSTGRES_MAX_IDLE_CONNS") == Origin::Default {
            // Only the user's own contradiction is an error; the default follows a smaller pool.
            max_idle_conns = max_idle_conns.min(max_open_conns);
        } else if open_ok && max_idle_conns > max_open_conns {
            r.cross_check(
                "POSTGRES_MAX_IDLE_CONNS",
                format!("must not exceed POSTGRES_MAX_OPEN_CONNS ({max_open_conns})"),
            );
        }
        PostgresConfig {
            dsn,
            max_open_conns,
            max_idle_conns,
            conn_max_lifetime: r.duration("POSTGRES_CONN_MAX_LIFETIME", minutes(5), Unit::Minutes, true),
            conn_max_idle_time: r.duration("POSTGRES_CONN_MAX_IDLE_TIME", minutes(5), Unit::Minutes, true),
            connect_timeout: r.duration("POSTGRES_CONNECT_TIMEOUT", secs(5), Unit::Seconds, false),
            acquire_timeout: r.duration("POSTGRES_ACQUIRE_TIMEOUT", secs(5), Unit::Seconds, false),
            statement_timeout: r.duration("POSTGRES_STATEMENT_TIMEOUT", secs(30), Unit::Seconds, true),
            statement_cache_capacity: r.int("POSTGRES_STATEMENT_CACHE_CAPACITY", 100, 0, 100_000),
            slow_query_threshold: r.duration(
                "POSTGRES_SLOW_QUERY_THRESHOLD",
                Duration::from_millis(500),
                Unit::Milliseconds,
                false,
            ),
            migrate_on_start: r.bool("POSTGRES_MIGRATE_ON_START", true),
            ssl_root_cert: r.optional_file("POSTGRES_SSL_ROOT_CERT"),
            breaker: BreakerConfig::read(r, &BREAKER_VARIABLES, &breaker_defaults()),
        }
    }

    /// Connection options from the DSN plus every per-connection setting (statement timeout, statement cache,
    /// CA certificate). Not `Debug`-printed anywhere: sqlx's options hold the password.
    pub fn connect_options(&self) -> Result<sqlx::postgres::PgConnectOptions, String> {
        use sqlx::ConnectOptions;
        let mut options = sqlx::postgres::PgConnectOptions::from_str(self.dsn.expose_secret())
            .map_err(|_| "POSTGRES_DSN is not a valid PostgreSQL connection URL".to_string())?
            .statement_cache_capacity(self.statement_cache_capacity)
            // Statements are traced by this layer's own spans, and slow ones warned about with their duration.
            // sqlx's own statement log is off: its `tracing::enabled!` probe, answered "no" by the log filter,
            // left tracing-subscriber's per-layer filter state dirty and silenced the next event on the thread.
            .disable_statement_logging();
        if !self.statement_timeout.is_zero() {
            let millis = self.statement_timeout.as_millis().to_string();
            options = options.options([("statement_timeout", millis)]);
        }
        if let Some(ca) = &self.ssl_root_cert {
            options = options.ssl_root_cert(ca);
        }
        Ok(options)
    }

    /// The DSN's `host:port/database`, safe to log: a DSN whose password broke its parsing (an unencoded
    /// `/`, `?` or `#`) is not shown at all, as its "database" would be the password's tail.
    pub fn address(&self) -> String {
        match unambiguous_url(self.dsn.expose_secret()) {
            Some(url) => format!("{}:{}{}", url.host_str().unwrap_or_default(), url.port().unwrap_or(5432), url.path()),
            None => "(invalid DSN)".to_string(),
        }
    }
}

/// POSTGRES_BREAKER_*, named like Redis's.
const BREAKER_VARIABLES: BreakerVariables = BreakerVariables {
    failures: "POSTGRES_BREAKER_FAILURES",
    failure_rate: "POSTGRES_BREAKER_FAILURE_RATE",
    window: "POSTGRES_BREAKER_WINDOW",
    min_calls: "POSTGRES_BREAKER_MIN_CALLS",
    cooldown: "POSTGRES_BREAKER_COOLDOWN",
    probes: "POSTGRES_BREAKER_PROBES",
};

/// One connection failure opens the breaker by default: failures are counted only for connection-level errors
/// (refused, unreachable, authentication, TLS) after the pool already retried for the whole acquire timeout,
/// so a single one is a strong signal; the failure rate is off. Query errors never count.
fn breaker_defaults() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 1,
        failure_rate: 0.0,
        open_for: Duration::from_secs(1),
        half_open_probes: 1,
        ..BreakerConfig::default()
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

fn check_dsn(raw: &str) -> Result<(), String> {
    let url = check_url(raw, &["postgres", "postgresql"])?;
    let sslmode = url.query_pairs().find(|(k, _)| k == "sslmode").map(|(_, v)| v.into_owned());
    match sslmode {
        Some(mode) if !SSL_MODES.contains(&mode.as_str()) => {
            Err(format!("sslmode must be one of {}", SSL_MODES.join(", ")))
        }
        _ => Ok(()),
    }
}
