//! Typed configuration for the whole process, read once at startup from the environment.
//!
//! Every variable of the specification is read here with its default, each module reading its own. Bad
//! values never stop reading: all problems are collected and reported together (see [`ConfigError`]), so a
//! user fixes a broken deployment in one round instead of one variable per restart. Secrets are masked
//! wherever a value is shown.
//!
//! This lives apart from [`crate::config`] (the reading toolkit) because it depends on every module's
//! settings, which themselves depend on the toolkit.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::config::{Entry, Problem, Reader, Sensitivity, Sources, Unit};
use crate::health::HealthConfig;
use crate::kafka::KafkaConfig;
use crate::postgres::PostgresConfig;
use crate::redis::RedisConfig;
use crate::telemetry::ServiceConfig;

/// The exit code for a configuration error (`EX_CONFIG` from BSD's sysexits.h), which process supervisors
/// recognise as "do not restart in a loop, a human must fix the settings".
pub const EXIT_CONFIG: i32 = 78;

/// The HTTP server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `APP_HOST`: the address the HTTP server binds (all interfaces by default, as containers need).
    pub host: std::net::IpAddr,
    /// `APP_PORT`: the port the HTTP server listens on (0 is refused: tests bind port 0 programmatically).
    pub port: u16,
    /// `SHUTDOWN_TIMEOUT`: how long in-flight work may take to finish after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
}

impl ServerConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        ServerConfig {
            host: r.parsed("APP_HOST", Sensitivity::Plain, std::net::IpAddr::from([0, 0, 0, 0]), |raw| {
                raw.trim().parse().map_err(|_| "must be an IP address such as 0.0.0.0 or 127.0.0.1".to_string())
            }),
            port: r.int("APP_PORT", 8080, 1, 65535),
            shutdown_timeout: r.duration("SHUTDOWN_TIMEOUT", Duration::from_secs(30), Unit::Seconds, false),
        }
    }
}

/// Everything the process needs to start, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Service identity and log verbosity.
    pub service: ServiceConfig,
    /// HTTP server.
    pub server: ServerConfig,
    /// Health checks.
    pub health: HealthConfig,
    /// PostgreSQL.
    pub postgres: PostgresConfig,
    /// Redis.
    pub redis: RedisConfig,
    /// Kafka.
    pub kafka: KafkaConfig,
    effective: Vec<Entry>,
}

impl Config {
    /// Reads the process environment and `./.env` (the environment wins).
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_sources(&Sources::from_process(Path::new(".env")))
    }

    /// Reads and validates every variable from `sources`, reporting all problems at once.
    pub fn from_sources(sources: &Sources) -> Result<Self, ConfigError> {
        Self::from_sources_with(sources, |_| ()).map(|(config, ())| config)
    }

    /// Like [`Config::from_sources`], and also reads the service's own variables with `read_service`: its
    /// problems are reported together with the infrastructure's, and its variables appear in
    /// [`Config::effective`]. This is how a service built on this crate adds settings without this crate
    /// knowing them.
    pub fn from_sources_with<T>(
        sources: &Sources,
        read_service: impl FnOnce(&mut Reader<'_>) -> T,
    ) -> Result<(Self, T), ConfigError> {
        let mut r = Reader::new(sources);
        let service = ServiceConfig::read(&mut r);
        let server = ServerConfig::read(&mut r);
        let health = HealthConfig::read(&mut r);
        let postgres = PostgresConfig::read(&mut r);
        let redis = RedisConfig::read(&mut r);
        let kafka = KafkaConfig::read(&mut r);
        let extra = read_service(&mut r);
        let effective = r.finish().map_err(|problems| ConfigError { problems })?;
        Ok((Config { service, server, health, postgres, redis, kafka, effective }, extra))
    }

    /// The effective configuration, one entry per variable, secrets masked, with each value's origin.
    pub fn effective(&self) -> &[Entry] {
        &self.effective
    }
}

/// Every problem found in the configuration. Its `Display` is the message printed before exiting with
/// [`EXIT_CONFIG`]: a header, then one line per problem.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    /// The individual problems, in the order the variables are read.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "invalid configuration ({n} problem{}):", if n == 1 { "" } else { "s" })?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}
