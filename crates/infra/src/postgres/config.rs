//! PostgreSQL settings.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::{Reader, Unit, check_url};

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
}

impl PostgresConfig {
    /// Reads the PostgreSQL settings, recording problems in `r`.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let dsn = r.secret_url("POSTGRES_DSN", DEFAULT_DSN, check_dsn);
        let max_open_conns: u32 = r.int("POSTGRES_MAX_OPEN_CONNS", 25, 1, i64::from(u32::MAX));
        let open_ok = r.problems().iter().all(|p| p.name != "POSTGRES_MAX_OPEN_CONNS");
        let max_idle_conns: u32 = r.int("POSTGRES_MAX_IDLE_CONNS", 10, 0, i64::from(u32::MAX));
        if open_ok && max_idle_conns > max_open_conns {
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
        }
    }

    /// The DSN's `host:port/database`, safe to log.
    pub fn target(&self) -> String {
        match url::Url::parse(self.dsn.expose_secret()) {
            Ok(url) => format!("{}:{}{}", url.host_str().unwrap_or_default(), url.port().unwrap_or(5432), url.path()),
            Err(_) => "(invalid DSN)".to_string(),
        }
    }
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
