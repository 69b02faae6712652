//! Redis settings.

use std::time::Duration;

use secrecy::SecretString;

use crate::config::{Origin, Reader, Sensitivity, Unit, check_host_port, check_url, redact_url};
use crate::resilience::{BreakerConfig, BreakerVariables};

/// How the client talks to Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// One server (REDIS_DB selects the database).
    Standalone,
    /// A Redis Cluster: REDIS_ADDR lists seed nodes, the slot map is discovered, MOVED/ASK are followed.
    Cluster,
}

/// Redis settings, named as in the specification. Bare numbers: seconds for timeouts, minutes for the
/// connection age and idle time. `Debug` shows REDIS_ADDR redacted: a `redis://` URL may carry a password.
#[derive(Clone)]
pub struct RedisConfig {
    /// `REDIS_ADDR`: `host:port`, or a `redis://` / `rediss://` URL; in cluster mode a comma-separated list of
    /// seed nodes.
    pub addr: String,
    /// `REDIS_MODE`: one server (`standalone`) or a Redis Cluster (`cluster`).
    pub mode: RedisMode,
    /// `REDIS_PASSWORD`: AUTH password; empty means none.
    pub password: SecretString,
    /// `REDIS_DB`: logical database number.
    pub db: u32,
    /// `REDIS_MAX_RETRIES`: retries of idempotent commands after a connection or timeout error.
    pub max_retries: u32,
    /// `REDIS_DIAL_TIMEOUT`: connecting (TCP + handshake).
    pub dial_timeout: Duration,
    /// `REDIS_READ_TIMEOUT`: waiting for a reply.
    pub read_timeout: Duration,
    /// `REDIS_WRITE_TIMEOUT`: sending a command.
    pub write_timeout: Duration,
    /// `REDIS_POOL_SIZE`: most connections in the pool.
    pub pool_size: u32,
    /// `REDIS_MIN_IDLE_CONNS`: idle connections kept ready.
    pub min_idle_conns: u32,
    /// `REDIS_MAX_CONN_AGE`: connections older than this are replaced (zero: no limit).
    pub max_conn_age: Duration,
    /// `REDIS_POOL_TIMEOUT`: waiting for a free connection from the pool.
    pub pool_timeout: Duration,
    /// `REDIS_IDLE_TIMEOUT`: idle connections are closed after this (zero: never).
    pub idle_timeout: Duration,
    /// `REDIS_USERNAME`: ACL user (empty: the default user).
    pub username: String,
    /// `REDIS_TLS`: connect with TLS even when REDIS_ADDR is a plain `host:port`.
    pub tls: bool,
    /// `REDIS_BREAKER_*`: when to stop calling Redis, and how to recover.
    pub breaker: BreakerConfig,
    /// `REDIS_RATE_LIMIT_FAIL_OPEN`: when Redis is unavailable, rate limiters let requests through (true) or
    /// refuse them (false).
    pub rate_limit_fail_open: bool,
    /// `REDIS_CLIENT_CACHE*`: cached values kept in process memory, invalidated by Redis (client tracking).
    pub client_cache: ClientCacheConfig,
}

/// Server-assisted client-side caching (`REDIS_CLIENT_CACHE`, `REDIS_CLIENT_CACHE_SIZE`,
/// `REDIS_CLIENT_CACHE_TTL`): see `infra::redis::ClientCache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientCacheConfig {
    /// `REDIS_CLIENT_CACHE`: keep cached values in process memory (standalone mode only).
    pub enabled: bool,
    /// `REDIS_CLIENT_CACHE_SIZE`: most entries kept in memory (least recently used go first).
    pub max_entries: u64,
    /// `REDIS_CLIENT_CACHE_TTL`: an entry is dropped this long after it was read from Redis, invalidated or not.
    pub ttl: Duration,
}

impl ClientCacheConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        ClientCacheConfig {
            enabled: r.bool("REDIS_CLIENT_CACHE", true),
            max_entries: r.int("REDIS_CLIENT_CACHE_SIZE", 10_000, 1, 10_000_000),
            ttl: r.duration("REDIS_CLIENT_CACHE_TTL", secs(60), Unit::Seconds, false),
        }
    }
}

impl RedisConfig {
    /// Reads the Redis settings, recording problems in `r`.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let addr = r.parsed("REDIS_ADDR", Sensitivity::Url, "localhost:6379".to_string(), parse_addr);
        let mode = match r.choice("REDIS_MODE", "standalone", &["standalone", "cluster"]) {
            "cluster" => RedisMode::Cluster,
            _ => RedisMode::Standalone,
        };
        let password = r.secret("REDIS_PASSWORD");
        let db = r.int("REDIS_DB", 0, 0, i64::from(u32::MAX));
        check_mode(r, mode, &addr, db);
        let max_retries = r.int("REDIS_MAX_RETRIES", 3, 0, 100);
        let dial_timeout = r.duration("REDIS_DIAL_TIMEOUT", secs(5), Unit::Seconds, false);
        let read_timeout = r.duration("REDIS_READ_TIMEOUT", secs(3), Unit::Seconds, false);
        let write_timeout = r.duration("REDIS_WRITE_TIMEOUT", secs(3), Unit::Seconds, false);
        let pool_size: u32 = r.int("REDIS_POOL_SIZE", 10, 1, i64::from(u32::MAX));
        let size_ok = r.problems().iter().all(|p| p.name != "REDIS_POOL_SIZE");
        let mut min_idle_conns: u32 = r.int("REDIS_MIN_IDLE_CONNS", 2, 0, i64::from(u32::MAX));
        if r.origin("REDIS_MIN_IDLE_CONNS") == Origin::Default {
            min_idle_conns = min_idle_conns.min(pool_size);
        } else if size_ok && min_idle_conns > pool_size {
            r.cross_check("REDIS_MIN_IDLE_CONNS", format!("must not exceed REDIS_POOL_SIZE ({pool_size})"));
        }
        RedisConfig {
            addr,
            mode,
            password,
            db,
            max_retries,
            dial_timeout,
            read_timeout,
            write_timeout,
            pool_size,
            min_idle_conns,
            max_conn_age: r.duration("REDIS_MAX_CONN_AGE", secs(30 * 60), Unit::Minutes, true),
            pool_timeout: r.duration("REDIS_POOL_TIMEOUT", secs(4), Unit::Seconds, false),
            idle_timeout: r.duration("REDIS_IDLE_TIMEOUT", secs(5 * 60), Unit::Minutes, true),
            username: r.parsed("REDIS_USERNAME", Sensitivity::Plain, String::new(), |raw| Ok(raw.trim().to_string())),
            tls: r.bool("REDIS_TLS", false),
            breaker: BreakerConfig::read(r, &BREAKER_VARIABLES, &BreakerConfig::default()),
            rate_limit_fail_open: r.bool("REDIS_RATE_LIMIT_FAIL_OPEN", true),
            client_cache: ClientCacheConfig::read(r),
        }
    }

    /// The address with any password masked, safe to log. The list is masked as a whole, not node by node:
    /// a comma in a password splits it into what look like further nodes.
    pub fn redacted_addr(&self) -> String {
        redact_url(&self.nodes().collect::<Vec<_>>().join(","))
    }

    /// The addresses in REDIS_ADDR (one in standalone mode).
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.addr.split(',').map(str::trim)
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("addr", &self.redacted_addr())
            .field("mode", &self.mode)
            .field("password", &self.password)
            .field("db", &self.db)
            .field("max_retries", &self.max_retries)
            .field("dial_timeout", &self.dial_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("pool_size", &self.pool_size)
            .field("min_idle_conns", &self.min_idle_conns)
            .field("max_conn_age", &self.max_conn_age)
            .field("pool_timeout", &self.pool_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("username", &self.username)
            .field("tls", &self.tls)
            .field("breaker", &self.breaker)
            .field("rate_limit_fail_open", &self.rate_limit_fail_open)
            .finish()
    }
}

/// REDIS_BREAKER_*: the breaker's defaults (five failures in a row, or half of the last twenty commands).
const BREAKER_VARIABLES: BreakerVariables = BreakerVariables {
    failures: "REDIS_BREAKER_FAILURES",
    failure_rate: "REDIS_BREAKER_FAILURE_RATE",
    window: "REDIS_BREAKER_WINDOW",
    min_calls: "REDIS_BREAKER_MIN_CALLS",
    cooldown: "REDIS_BREAKER_COOLDOWN",
    probes: "REDIS_BREAKER_PROBES",
};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn parse_addr(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    for node in raw.split(',').map(str::trim) {
        if node.contains("://") {
            check_url(node, &["redis", "rediss"])?;
        } else {
            check_host_port(node)?;
        }
    }
    Ok(raw.to_string())
}

/// A list of seed nodes needs cluster mode, and a cluster has only database 0.
fn check_mode(r: &mut Reader<'_>, mode: RedisMode, addr: &str, db: u32) {
    if mode == RedisMode::Standalone && addr.contains(',') {
        r.cross_check("REDIS_ADDR", "lists several nodes: set REDIS_MODE=cluster, or give one address".into());
    }
    if mode == RedisMode::Cluster && db != 0 {
        r.cross_check("REDIS_DB", "must be 0 with REDIS_MODE=cluster (a Redis Cluster has only database 0)".into());
    }
}
