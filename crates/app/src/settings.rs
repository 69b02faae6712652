//! The service's settings: the infrastructure's [`Config`] plus the service's own variables (HTTP limits,
//! sessions, rate limits, the user cache, the outbox, the event log's retention), read in one pass so every bad
//! variable of either kind is reported in one message.

use std::path::Path;
use std::time::Duration;

use infra::config::{Reader, Sensitivity, Sources, Unit};
use infra::settings::{Config, ConfigError};
use ipnet::IpNet;

use crate::serve::{MIN_HEADER_BYTES, ServerLimits};

/// Everything the service needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The infrastructure: service identity, server, health, PostgreSQL, Redis, Kafka.
    pub config: Config,
    /// HTTP request limits and client addresses.
    pub http: HttpSettings,
    /// Sessions and login.
    pub sessions: SessionSettings,
    /// The user read cache.
    pub users: UserSettings,
    /// The transactional outbox relay.
    pub outbox: OutboxSettings,
    /// The event log.
    pub event_log: EventLogSettings,
}

/// Request limits and how the client's address is determined.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// `HTTP_BODY_LIMIT`: the largest request body accepted, in bytes (413 beyond it).
    pub body_limit: usize,
    /// `HTTP_REQUEST_TIMEOUT`: a request still unanswered after this gets 503 and its work is dropped.
    pub request_timeout: Duration,
    /// `HTTP_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed (comma-separated IPs or CIDRs).
    /// Empty (the default): the TCP peer is the client, and the header is ignored — anyone can forge it.
    pub trusted_proxies: Vec<IpNet>,
    /// `RATE_LIMIT_RPS`: requests per second admitted per client IP on every route (on average).
    pub rate_limit_rps: u32,
    /// `RATE_LIMIT_BURST`: how many requests a client IP may send at once before the rate applies.
    pub rate_limit_burst: u32,
    /// `HTTP_HEADER_READ_TIMEOUT`, `HTTP_KEEP_ALIVE_TIMEOUT`, `HTTP_MAX_CONNECTIONS`, `HTTP_MAX_HEADER_BYTES`:
    /// the limits on connections, which bound what slow or idle clients can hold.
    pub server: ServerLimits,
}

/// Sessions and the login brute-force limit.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// `SESSION_TTL`: how long a session lives without use (each use renews it).
    pub ttl: Duration,
    /// `SESSION_MAX_LIFETIME`: how long a session lives at most from sign-in, however often it is used.
    pub max_lifetime: Duration,
    /// `SESSION_COOKIE_NAME`: the cookie carrying the session id.
    pub cookie_name: String,
    /// `SESSION_COOKIE_SECURE`: mark the cookie `Secure` (sent over HTTPS only). Off by default so the local
    /// walk-through over plain HTTP works; turn it on behind TLS.
    pub cookie_secure: bool,
    /// `LOGIN_RATE_LIMIT`: login attempts admitted per client IP (IPv6: per /64) and account per minute.
    pub login_attempts_per_minute: u32,
    /// `LOGIN_ACCOUNT_RATE_LIMIT`: login attempts admitted per account per minute, from all addresses together.
    pub account_login_attempts_per_minute: u32,
}

/// The user read cache.
#[derive(Clone, Debug)]
pub struct UserSettings {
    /// `USER_CACHE_TTL`: how long a user stays in Redis after a read (writes invalidate it at once).
    pub cache_ttl: Duration,
    /// `PASSWORD_HASH_CONCURRENCY` / `PASSWORD_HASH_QUEUE`: password hashes running at once (0, the default:
    /// one per CPU) and waiting for a turn; beyond that a login or registration gets 503 at once.
    pub hashing: crate::users::HashingLimits,
}

/// The outbox relay.
#[derive(Clone, Debug)]
pub struct OutboxSettings {
    /// `OUTBOX_POLL_INTERVAL`: how often the relay looks for pending events when it found none.
    pub poll_interval: Duration,
    /// `OUTBOX_BATCH_SIZE`: events published per relay round.
    pub batch_size: u32,
    /// `OUTBOX_RETENTION`: how long sent events stay in the outbox table before they are pruned.
    pub retention: Duration,
    /// `OUTBOX_MAX_ATTEMPTS`: failed sends after which an event Kafka rejects for its own sake (too large,
    /// malformed) is parked: kept, no longer sent, reported — so it stops holding back its key's later events.
    pub max_attempts: u32,
}

/// The event log (every consumed event).
#[derive(Clone, Debug)]
pub struct EventLogSettings {
    /// `EVENT_LOG_RETENTION`: how long a consumed event stays in the event log (and `GET /events/{id}`) before
    /// it is pruned.
    pub retention: Duration,
}

impl Settings {
    /// Reads the process environment and `./.env` (the environment wins).
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_sources(&Sources::from_process(Path::new(".env")))
    }

    /// Reads and validates every variable from `sources`, reporting all problems at once.
    pub fn from_sources(sources: &Sources) -> Result<Self, ConfigError> {
        let (config, (http, sessions, users, outbox, event_log)) = Config::from_sources_with(sources, |r| {
            let event_log = EventLogSettings {
                retention: r.duration("EVENT_LOG_RETENTION", Duration::from_secs(30 * 24 * 3600), Unit::Minutes, false),
            };
            (HttpSettings::read(r), SessionSettings::read(r), UserSettings::read(r), OutboxSettings::read(r), event_log)
        })?;
        Ok(Settings { config, http, sessions, users, outbox, event_log })
    }
}

impl HttpSettings {
    fn read(r: &mut Reader<'_>) -> Self {
        HttpSettings {
            body_limit: r.int("HTTP_BODY_LIMIT", 1024 * 1024, 1, 1 << 30),
            request_timeout: r.duration("HTTP_REQUEST_TIMEOUT", Duration::from_secs(30), Unit::Seconds, false),
            trusted_proxies: r
                .parsed("HTTP_TRUSTED_PROXIES", Sensitivity::Plain, Networks::default(), parse_networks)
                .0,
            rate_limit_rps: r.int("RATE_LIMIT_RPS", 100, 1, 1_000_000),
            rate_limit_burst: r.int("RATE_LIMIT_BURST", 200, 1, 1_000_000),
            server: ServerLimits {
                header_read_timeout: r.duration(
                    "HTTP_HEADER_READ_TIMEOUT",
                    Duration::from_secs(10),
                    Unit::Seconds,
                    false,
                ),
                keep_alive_timeout: r.duration(
                    "HTTP_KEEP_ALIVE_TIMEOUT",
                    Duration::from_secs(75),
                    Unit::Seconds,
                    false,
                ),
                max_connections: r.int("HTTP_MAX_CONNECTIONS", 1024, 1, 1_000_000),
                max_header_bytes: r.int("HTTP_MAX_HEADER_BYTES", 32 * 1024, MIN_HEADER_BYTES as i64, 1 << 20),
            },
        }
    }
}

impl SessionSettings {
    fn read(r: &mut Reader<'_>) -> Self {
        SessionSettings {
            ttl: r.duration("SESSION_TTL", Duration::from_secs(24 * 3600), Unit::Minutes, false),
            max_lifetime: r.duration("SESSION_MAX_LIFETIME", Duration::from_secs(7 * 24 * 3600), Unit::Minutes, false),
            cookie_name: r.parsed("SESSION_COOKIE_NAME", Sensitivity::Plain, "rust_app_session".into(), |raw| {
                let name = raw.trim();
                let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                token.then(|| name.to_string()).ok_or_else(|| "must be letters, digits, '_', '-' or '.'".into())
            }),
            cookie_secure: r.bool("SESSION_COOKIE_SECURE", false),
            login_attempts_per_minute: r.int("LOGIN_RATE_LIMIT", 5, 1, 10_000),
            account_login_attempts_per_minute: r.int("LOGIN_ACCOUNT_RATE_LIMIT", 20, 1, 100_000),
        }
    }
}

impl UserSettings {
    fn read(r: &mut Reader<'_>) -> Self {
        let cache_ttl = r.duration("USER_CACHE_TTL", Duration::from_secs(300), Unit::Seconds, false);
        let concurrency: usize = r.int("PASSWORD_HASH_CONCURRENCY", 0, 0, 1024);
        let queue = r.int("PASSWORD_HASH_QUEUE", 16, 0, 100_000);
        let concurrency = match concurrency {
            0 => crate::users::HashingLimits::from_cpu_count().concurrency,
            n => n,
        };
        UserSettings { cache_ttl, hashing: crate::users::HashingLimits { concurrency, queue } }
    }
}

impl OutboxSettings {
    fn read(r: &mut Reader<'_>) -> Self {
        OutboxSettings {
            poll_interval: r.duration("OUTBOX_POLL_INTERVAL", Duration::from_millis(500), Unit::Milliseconds, false),
            batch_size: r.int("OUTBOX_BATCH_SIZE", 100, 1, 10_000),
            retention: r.duration("OUTBOX_RETENTION", Duration::from_secs(7 * 24 * 3600), Unit::Minutes, false),
            max_attempts: r.int("OUTBOX_MAX_ATTEMPTS", 10, 1, 1_000_000),
        }
    }
}

/// A list of networks as configured, displayable for `rust-app config`.
#[derive(Clone, Debug, Default)]
struct Networks(Vec<IpNet>);

impl std::fmt::Display for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&shown.join(","))
    }
}

/// Comma-separated IP addresses (a single host) or CIDR networks.
fn parse_networks(raw: &str) -> Result<Networks, String> {
    let mut networks = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let network = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{item:?} is not an IP address or CIDR network (e.g. 10.0.0.0/8)"))?;
        networks.push(network);
    }
    Ok(Networks(networks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_sources(&Sources::from_env_pairs(env))
    }

    #[test]
    fn defaults_need_no_variables() {
        let settings = settings(&[]).expect("defaults are valid");
        assert_eq!(settings.http.body_limit, 1024 * 1024);
        assert_eq!(settings.http.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(settings.http.server.keep_alive_timeout, Duration::from_secs(75));
        assert_eq!(settings.http.server.max_connections, 1024);
        assert_eq!(settings.http.server.max_header_bytes, 32 * 1024);
        assert!(settings.http.trusted_proxies.is_empty(), "X-Forwarded-For is ignored by default");
        assert!(!settings.sessions.cookie_secure);
        assert!(settings.config.effective().iter().any(|entry| entry.name == "OUTBOX_RETENTION"));
        assert_eq!(settings.event_log.retention, Duration::from_secs(30 * 24 * 3600), "30 days");
    }

    #[test]
    fn bad_service_variables_are_reported_with_the_infrastructure_ones() {
        let err = settings(&[
            ("HTTP_TRUSTED_PROXIES", "10.0.0.0/8, not-an-ip"),
            ("SESSION_COOKIE_NAME", "a b"),
            ("REDIS_POOL_SIZE", "zero"),
        ])
        .expect_err("invalid");
        let names: Vec<&str> = err.problems().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["REDIS_POOL_SIZE", "HTTP_TRUSTED_PROXIES", "SESSION_COOKIE_NAME"]);
    }

    #[test]
    fn the_configuration_reference_documents_every_service_variable() {
        let reference = include_str!("../../../docs/configuration.md");
        for entry in settings(&[]).expect("defaults are valid").config.effective() {
            let row = format!("| `{}` |", entry.name);
            assert!(reference.contains(&row), "docs/configuration.md has no row for {}", entry.name);
        }
    }

    #[test]
    fn server_limits_refuse_a_header_limit_below_hypers_smallest_buffer_and_a_zero_cap() {
        let err = settings(&[("HTTP_MAX_HEADER_BYTES", "4096"), ("HTTP_MAX_CONNECTIONS", "0")]).expect_err("invalid");
        let names: Vec<&str> = err.problems().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["HTTP_MAX_CONNECTIONS", "HTTP_MAX_HEADER_BYTES"]);
        let ok = settings(&[("HTTP_HEADER_READ_TIMEOUT", "2s"), ("HTTP_KEEP_ALIVE_TIMEOUT", "1m")]).expect("valid");
        assert_eq!(ok.http.server.header_read_timeout, Duration::from_secs(2));
        assert_eq!(ok.http.server.keep_alive_timeout, Duration::from_secs(60));
    }

    #[test]
    fn trusted_proxies_accept_hosts_and_networks() {
        let settings = settings(&[("HTTP_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")]).expect("valid");
        assert_eq!(settings.http.trusted_proxies.len(), 2);
        assert!(settings.http.trusted_proxies[1].contains(&"127.0.0.1".parse::<std::net::IpAddr>().expect("ip")));
    }
}
