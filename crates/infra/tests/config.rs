//! Configuration: defaults, every variable's validation rule, several problems at once, `.env` precedence,
//! secrets never shown.

use std::time::Duration;

use infra::config::{Origin, Sources};
use infra::settings::Config;
use secrecy::ExposeSecret;

fn load(env: &[(&str, &str)]) -> Result<Config, infra::settings::ConfigError> {
    Config::from_sources(&Sources::from_env_pairs(env))
}

fn problems(env: &[(&str, &str)]) -> Vec<String> {
    match load(env) {
        Ok(_) => Vec::new(),
        Err(err) => err.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn defaults_are_the_specifications_with_rust_names() {
    let config = load(&[]).expect("defaults are valid");
    assert_eq!(config.service.name, "rust-app");
    assert_eq!(config.service.version, env!("CARGO_PKG_VERSION"), "the release's own version");
    assert_eq!(config.server.port, 8080);
    assert_eq!(
        config.postgres.dsn.expose_secret(),
        "postgres://rust_app_user:rust_app_password@localhost:5432/rust_app?sslmode=disable"
    );
    assert_eq!(config.postgres.max_open_conns, 25);
    assert_eq!(config.postgres.max_idle_conns, 10);
    assert_eq!(config.postgres.conn_max_lifetime, Duration::from_secs(5 * 60));
    assert_eq!(config.postgres.conn_max_idle_time, Duration::from_secs(5 * 60));
    let breaker = &config.postgres.breaker;
    assert_eq!((breaker.consecutive_failures, breaker.failure_rate), (1, 0.0), "one confirmed outage opens it");
    assert_eq!((breaker.window, breaker.min_calls, breaker.half_open_probes), (20, 10, 1));
    assert_eq!(breaker.open_for, Duration::from_secs(1));
    let redis = &config.redis;
    assert_eq!(redis.addr, "localhost:6379");
    assert_eq!(redis.password.expose_secret(), "");
    assert_eq!((redis.db, redis.max_retries, redis.pool_size, redis.min_idle_conns), (0, 3, 10, 2));
    assert_eq!(redis.dial_timeout, Duration::from_secs(5));
    assert_eq!(redis.read_timeout, Duration::from_secs(3));
    assert_eq!(redis.write_timeout, Duration::from_secs(3));
    assert_eq!(redis.max_conn_age, Duration::from_secs(30 * 60));
    assert_eq!(redis.pool_timeout, Duration::from_secs(4));
    assert_eq!(redis.idle_timeout, Duration::from_secs(5 * 60));
    let kafka = &config.kafka;
    assert_eq!(kafka.brokers, ["localhost:9092"]);
    assert_eq!(kafka.topic, "rust-app-events");
    assert_eq!(kafka.consumer_group, "rust-app-consumer-group");
    assert_eq!(kafka.batch_size, 100);
    assert_eq!(kafka.dial_timeout, Duration::from_secs(15));
    assert_eq!(kafka.conn_idle_time, Duration::from_secs(20 * 60));
    assert_eq!(kafka.security_protocol, "PLAINTEXT");
    assert_eq!(config.health.check_timeout, Duration::from_secs(2));
    assert_eq!(config.health.cache_ttl, Duration::from_secs(1));
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(30));
    let pg = &config.postgres;
    assert_eq!((pg.connect_timeout, pg.acquire_timeout), (Duration::from_secs(5), Duration::from_secs(5)));
    assert_eq!(pg.statement_timeout, Duration::from_secs(30));
    assert_eq!(pg.statement_cache_capacity, 100);
    assert_eq!(pg.slow_query_threshold, Duration::from_millis(500));
    assert!(pg.migrate_on_start);
    assert_eq!(pg.ssl_root_cert, None);
    assert!(config.effective().iter().all(|e| e.origin == Origin::Default));
}

#[test]
fn every_variable_is_listed_in_the_effective_configuration() {
    let config = load(&[]).expect("defaults are valid");
    let names: Vec<&str> = config.effective().iter().map(|e| e.name).collect();
    for name in [
        "OTEL_SERVICE_NAME",
        "OTEL_SERVICE_VERSION",
        "OTEL_LOG_VERBOSITY",
        "APP_HOST",
        "APP_PORT",
        "SHUTDOWN_TIMEOUT",
        "HEALTH_CHECK_TIMEOUT",
        "HEALTH_CACHE_TTL",
        "POSTGRES_DSN",
        "POSTGRES_MAX_OPEN_CONNS",
        "POSTGRES_MAX_IDLE_CONNS",
        "POSTGRES_CONN_MAX_LIFETIME",
        "POSTGRES_CONN_MAX_IDLE_TIME",
        "REDIS_ADDR",
        "REDIS_MODE",
        "REDIS_PASSWORD",
        "REDIS_DB",
        "REDIS_MAX_RETRIES",
        "REDIS_DIAL_TIMEOUT",
        "REDIS_READ_TIMEOUT",
        "REDIS_WRITE_TIMEOUT",
        "REDIS_POOL_SIZE",
        "REDIS_MIN_IDLE_CONNS",
        "REDIS_MAX_CONN_AGE",
        "REDIS_POOL_TIMEOUT",
        "REDIS_IDLE_TIMEOUT",
        "KAFKA_BROKERS",
        "KAFKA_TOPIC",
        "KAFKA_CONSUMER_GROUP",
        "KAFKA_BATCH_SIZE",
        "KAFKA_DIAL_TIMEOUT",
        "KAFKA_CONN_IDLE_TIME",
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SSL_CA_LOCATION",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}

#[test]
fn durations_keep_the_seeds_unit_for_bare_numbers_and_accept_units() {
    let config = load(&[
        ("POSTGRES_CONN_MAX_LIFETIME", "2"),
        ("POSTGRES_CONN_MAX_IDLE_TIME", "90s"),
        ("REDIS_DIAL_TIMEOUT", "7"),
        ("REDIS_READ_TIMEOUT", "500ms"),
        ("REDIS_MAX_CONN_AGE", "1h"),
        ("KAFKA_CONN_IDLE_TIME", "0"),
        ("HEALTH_CACHE_TTL", "250ms"),
        ("POSTGRES_SLOW_QUERY_THRESHOLD", "250"),
        ("POSTGRES_MIGRATE_ON_START", "No"),
    ])
    .expect("valid");
    assert_eq!(config.postgres.conn_max_lifetime, Duration::from_secs(120), "bare lifetime = minutes");
    assert_eq!(config.postgres.conn_max_idle_time, Duration::from_secs(90));
    assert_eq!(config.redis.dial_timeout, Duration::from_secs(7), "bare timeout = seconds");
    assert_eq!(config.redis.read_timeout, Duration::from_millis(500));
    assert_eq!(config.redis.max_conn_age, Duration::from_secs(3600));
    assert_eq!(config.kafka.conn_idle_time, Duration::ZERO, "zero = no limit");
    assert_eq!(config.health.cache_ttl, Duration::from_millis(250));
    assert_eq!(config.postgres.slow_query_threshold, Duration::from_millis(250), "bare threshold = milliseconds");
    assert!(!config.postgres.migrate_on_start);
}

#[test]
fn choices_and_lists_are_normalised() {
    let config = load(&[
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
        ("KAFKA_SASL_USERNAME", "alice"),
        ("KAFKA_SASL_PASSWORD", "secret"),
        ("KAFKA_BROKERS", "b1:9092, b2:9093"),
        ("REDIS_ADDR", "rediss://:pw@cache.internal:6380"),
        ("APP_HOST", "127.0.0.1"),
    ])
    .expect("valid");
    assert_eq!(config.kafka.security_protocol, "SASL_SSL");
    assert_eq!(config.kafka.brokers, ["b1:9092", "b2:9093"]);
    assert_eq!(config.redis.redacted_addr(), "rediss://:***@cache.internal:6380");
    assert_eq!(config.server.host.to_string(), "127.0.0.1");
}

/// One row per variable and bad value: the exact problem line expected.
#[test]
fn every_rule_has_its_own_message() {
    let cases: &[(&str, &str, &str)] = &[
        ("OTEL_LOG_VERBOSITY", "9", "must be an integer from 0 to 3"),
        ("OTEL_LOG_VERBOSITY", "loud", "must be an integer from 0 to 3"),
        ("APP_HOST", "localhost", "must be an IP address such as 0.0.0.0 or 127.0.0.1"),
        ("APP_PORT", "0", "must be an integer from 1 to 65535"),
        ("APP_PORT", "70000", "must be an integer from 1 to 65535"),
        ("APP_PORT", "http", "must be an integer from 1 to 65535"),
        ("SHUTDOWN_TIMEOUT", "0", "must be greater than zero"),
        ("HEALTH_CHECK_TIMEOUT", "-1", "must not be negative"),
        (
            "HEALTH_CACHE_TTL",
            "soon",
            "must be a duration: a whole number of seconds or a number with a unit such as 500ms, 30s, 2m, 1h",
        ),
        (
            "POSTGRES_DSN",
            "mysql://u@h/db",
            "must be a URL like postgres://user:password@host:port/name (scheme must be one of postgres, postgresql)",
        ),
        (
            "POSTGRES_DSN",
            "postgres://u@h/db?sslmode=sometimes",
            "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
        (
            "POSTGRES_DSN",
            "postgres://u@h:0/db",
            "must be a URL like postgres://user:password@host:port/name (port must be from 1 to 65535)",
        ),
        ("POSTGRES_MAX_OPEN_CONNS", "abc", "must be a positive integer"),
        ("POSTGRES_MAX_OPEN_CONNS", "-3", "must be a positive integer"),
        ("POSTGRES_MAX_IDLE_CONNS", "-1", "must be a non-negative integer"),
        ("POSTGRES_MAX_IDLE_CONNS", "26", "must not exceed POSTGRES_MAX_OPEN_CONNS (25)"),
        (
            "POSTGRES_CONN_MAX_LIFETIME",
            "5 fortnights",
            "must be a duration: a whole number of minutes or a number with a unit such as 500ms, 30s, 2m, 1h",
        ),
        ("POSTGRES_CONN_MAX_IDLE_TIME", "-5", "must not be negative"),
        ("POSTGRES_CONNECT_TIMEOUT", "0", "must be greater than zero"),
        (
            "POSTGRES_ACQUIRE_TIMEOUT",
            "soon",
            "must be a duration: a whole number of seconds or a number with a unit such as 500ms, 30s, 2m, 1h",
        ),
        ("POSTGRES_STATEMENT_TIMEOUT", "-1", "must not be negative"),
        ("POSTGRES_STATEMENT_CACHE_CAPACITY", "-1", "must be an integer from 0 to 100000"),
        ("POSTGRES_SLOW_QUERY_THRESHOLD", "0", "must be greater than zero"),
        (
            "POSTGRES_SLOW_QUERY_THRESHOLD",
            "fast",
            "must be a duration: a whole number of milliseconds or a number with a unit such as 500ms, 30s, 2m, 1h",
        ),
        ("POSTGRES_MIGRATE_ON_START", "maybe", "must be true or false"),
        (
            "POSTGRES_SSL_ROOT_CERT",
            "/nonexistent/ca.pem",
            "must be a readable file (No such file or directory (os error 2))",
        ),
        ("REDIS_ADDR", "localhost", "must be host:port with a port from 1 to 65535"),
        ("REDIS_ADDR", "localhost:99999", "must be host:port with a port from 1 to 65535"),
        ("REDIS_DB", "-1", "must be a non-negative integer"),
        ("REDIS_MAX_RETRIES", "1000", "must be an integer from 0 to 100"),
        ("REDIS_DIAL_TIMEOUT", "0", "must be greater than zero"),
        (
            "REDIS_READ_TIMEOUT",
            "x",
            "must be a duration: a whole number of seconds or a number with a unit such as 500ms, 30s, 2m, 1h",
        ),
        ("REDIS_WRITE_TIMEOUT", "-2", "must not be negative"),
        ("REDIS_POOL_SIZE", "0", "must be a positive integer"),
        ("REDIS_MIN_IDLE_CONNS", "11", "must not exceed REDIS_POOL_SIZE (10)"),
        (
            "REDIS_MAX_CONN_AGE",
            "forever",
            "must be a duration: a whole number of minutes or a number with a unit such as 500ms, 30s, 2m, 1h",
        ),
        ("REDIS_POOL_TIMEOUT", "0s", "must be greater than zero"),
        ("REDIS_IDLE_TIMEOUT", "-1", "must not be negative"),
        ("REDIS_TLS", "sometimes", "must be true or false"),
        ("POSTGRES_BREAKER_FAILURES", "-1", "must be an integer from 0 to 1000"),
        ("POSTGRES_BREAKER_COOLDOWN", "0", "must be greater than zero"),
        ("REDIS_BREAKER_FAILURE_RATE", "150", "must be an integer from 0 to 100"),
        ("REDIS_BREAKER_COOLDOWN", "0", "must be greater than zero"),
        ("REDIS_BREAKER_PROBES", "0", "must be an integer from 1 to 1000"),
        ("REDIS_RATE_LIMIT_FAIL_OPEN", "perhaps", "must be true or false"),
        ("KAFKA_BROKERS", " , ", "must list at least one broker as host:port"),
        ("KAFKA_BROKERS", "b1:9092,b2", "must be a comma-separated list of host:port (port 1 to 65535); \"b2\" is not"),
        ("KAFKA_TOPIC", "bad topic!", "must be 1 to 249 characters of a-z, A-Z, 0-9, '.', '_' or '-'"),
        ("KAFKA_BATCH_SIZE", "0", "must be an integer from 1 to 1000000"),
        ("KAFKA_DIAL_TIMEOUT", "0", "must be greater than zero"),
        ("KAFKA_CONN_IDLE_TIME", "-1", "must not be negative"),
        ("KAFKA_SECURITY_PROTOCOL", "bogus", "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ];
    for (name, value, rule) in cases {
        let found = problems(&[(name, value)]);
        let expected = format!("{name}={value:?} (environment): {rule}");
        assert_eq!(found, [expected], "{name}={value}");
    }
}

#[test]
fn several_problems_are_reported_together_in_reading_order() {
    let err = load(&[
        ("POSTGRES_MAX_OPEN_CONNS", "abc"),
        ("REDIS_POOL_SIZE", "0"),
        ("KAFKA_SECURITY_PROTOCOL", "bogus"),
        ("APP_PORT", "99999"),
    ])
    .expect_err("four problems");
    let message = err.to_string();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines[0], "invalid configuration (4 problems):");
    assert_eq!(lines.len(), 5, "{message}");
    for (line, name) in
        lines[1..].iter().zip(["APP_PORT", "POSTGRES_MAX_OPEN_CONNS", "REDIS_POOL_SIZE", "KAFKA_SECURITY_PROTOCOL"])
    {
        assert!(line.trim_start().starts_with(name), "{line}");
    }
}

#[test]
fn default_idle_counts_follow_a_smaller_pool_but_explicit_contradictions_are_errors() {
    let config = load(&[("POSTGRES_MAX_OPEN_CONNS", "1"), ("REDIS_POOL_SIZE", "1")]).expect("defaults adapt");
    assert_eq!((config.postgres.max_idle_conns, config.redis.min_idle_conns), (1, 1));
    let found = problems(&[("POSTGRES_MAX_OPEN_CONNS", "1"), ("POSTGRES_MAX_IDLE_CONNS", "10")]);
    assert_eq!(found, ["POSTGRES_MAX_IDLE_CONNS=\"10\" (environment): must not exceed POSTGRES_MAX_OPEN_CONNS (1)"]);
}

#[test]
fn a_bad_pool_size_does_not_also_blame_the_idle_count() {
    assert_eq!(problems(&[("REDIS_POOL_SIZE", "zero")]).len(), 1);
    assert_eq!(problems(&[("POSTGRES_MAX_OPEN_CONNS", "none")]).len(), 1);
}

#[test]
fn the_environment_wins_over_dotenv_which_wins_over_defaults() {
    let env = [("APP_PORT", "9000")];
    let dotenv = [("APP_PORT", "9100"), ("REDIS_DB", "4"), ("KAFKA_TOPIC", "")];
    let sources = Sources::from_maps(
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        dotenv.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let config = Config::from_sources(&sources).expect("valid");
    assert_eq!(config.server.port, 9000);
    assert_eq!(config.redis.db, 4);
    assert_eq!(config.kafka.topic, "rust-app-events", "an empty value means unset");
    let origin = |name: &str| config.effective().iter().find(|e| e.name == name).map(|e| e.origin);
    assert_eq!(origin("APP_PORT"), Some(Origin::Environment));
    assert_eq!(origin("REDIS_DB"), Some(Origin::DotEnv));
    assert_eq!(origin("KAFKA_TOPIC"), Some(Origin::Default));
}

#[test]
fn a_dotenv_file_is_read_from_disk_and_its_problems_are_reported_with_the_rest() {
    let dir = std::env::temp_dir().join(format!("rust-app-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(".env");
    std::fs::write(&path, "REDIS_DB=5\n# comment\nKAFKA_TOPIC=from-dotenv\n").expect("write .env");
    let config = Config::from_sources(&Sources::from_process(&path)).expect("valid");
    assert_eq!(config.redis.db, 5);
    assert_eq!(config.kafka.topic, "from-dotenv");

    std::fs::write(&path, "REDIS_DB=5\nthis line is not an assignment\n").expect("write .env");
    let err = Config::from_sources(&Sources::from_process(&path)).expect_err("malformed .env");
    assert!(err.problems()[0].to_string().starts_with(".env (.env): the file cannot be parsed"), "{err}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn secrets_never_appear_in_messages_listings_or_debug_output() {
    let password = "s3cr3t-Pa55";
    let good =
        load(&[("POSTGRES_DSN", &format!("postgres://app:{password}@db:5432/app")), ("REDIS_PASSWORD", password)])
            .expect("valid");
    let listing = format!("{:?}", good.effective());
    assert!(listing.contains("postgres://app:***@db:5432/app"), "{listing}");
    assert!(listing.contains("\"***\""), "REDIS_PASSWORD shows as ***: {listing}");
    let debug = format!("{good:?}");
    for shown in [&listing, &debug] {
        assert!(!shown.contains(password), "secret leaked: {shown}");
    }

    let bad_dsn = format!("postgres://app:{password}@db:99999/app");
    let err = load(&[("POSTGRES_DSN", &bad_dsn), ("REDIS_PASSWORD", password), ("REDIS_POOL_SIZE", "0")])
        .expect_err("bad port");
    let message = err.to_string();
    assert!(message.contains("POSTGRES_DSN=\"postgres://***\""), "unparsable: masked whole: {message}");
    assert!(!message.contains(password), "secret leaked: {message}");
    assert!(!format!("{err:?}").contains(password), "secret leaked in Debug");
}

#[test]
fn the_postgres_breaker_is_configured_like_the_redis_one() {
    let env = [
        ("FAILURES", "4"),
        ("FAILURE_RATE", "30"),
        ("WINDOW", "50"),
        ("MIN_CALLS", "5"),
        ("COOLDOWN", "3s"),
        ("PROBES", "2"),
    ];
    let names: Vec<(String, &str)> = ["POSTGRES", "REDIS"]
        .iter()
        .flat_map(|prefix| env.iter().map(move |(suffix, value)| (format!("{prefix}_BREAKER_{suffix}"), *value)))
        .collect();
    let pairs: Vec<(&str, &str)> = names.iter().map(|(name, value)| (name.as_str(), *value)).collect();
    let config = load(&pairs).expect("valid");
    assert_eq!(config.postgres.breaker, config.redis.breaker);
    let breaker = &config.postgres.breaker;
    assert_eq!((breaker.consecutive_failures, breaker.failure_rate, breaker.window), (4, 0.3, 50));
    assert_eq!((breaker.min_calls, breaker.open_for, breaker.half_open_probes), (5, Duration::from_secs(3), 2));
}

#[test]
fn the_configuration_reference_documents_every_variable() {
    let reference = include_str!("../../../docs/configuration.md");
    let config = load(&[]).expect("defaults are valid");
    for entry in config.effective() {
        let row = format!("| `{}` |", entry.name);
        assert!(reference.contains(&row), "docs/configuration.md has no row for {}", entry.name);
    }
}

#[test]
fn cluster_mode_takes_a_list_of_seed_nodes_and_only_database_zero() {
    let config = load(&[("REDIS_MODE", "cluster"), ("REDIS_ADDR", "10.0.0.1:7000, 10.0.0.2:7000")]).expect("valid");
    assert_eq!(config.redis.mode, infra::redis::RedisMode::Cluster);
    assert_eq!(config.redis.nodes().collect::<Vec<_>>(), ["10.0.0.1:7000", "10.0.0.2:7000"]);
    assert_eq!(load(&[]).expect("defaults").redis.mode, infra::redis::RedisMode::Standalone);

    let found = problems(&[("REDIS_ADDR", "redis://:hunter2@a:7000,redis://:hunter2@b:7000")]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("set REDIS_MODE=cluster"), "{found:?}");
    assert!(!found[0].contains("hunter2"), "the password is masked: {found:?}");
    let found = problems(&[("REDIS_MODE", "cluster"), ("REDIS_DB", "2")]);
    assert_eq!(
        found,
        ["REDIS_DB=\"2\" (environment): must be 0 with REDIS_MODE=cluster (a Redis Cluster has only database 0)"]
    );
    let found = problems(&[("REDIS_MODE", "sentinel"), ("REDIS_ADDR", "a:1,b")]);
    assert_eq!(found.len(), 2, "a bad mode and a bad node are both reported: {found:?}");
}

/// A self-signed CA certificate (public data only, no key) for the `KAFKA_SSL_CA_LOCATION` tests.
const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBjDCCATOgAwIBAgIUA+Psgk3yOInZg7iGr3z6PlDt3T4wCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQcnVzdC1hcHAgdGVzdCBDQTAgFw0yNjExMjcxNTQwMjlaGA8y
MTI2MTEwMzE1NDAyOVowGzEZMBcGA1UEAwwQcnVzdC1hcHAgdGVzdCBDQTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABD+IniEwYKD1BcR7tIUxe1YNDVNdLlqE0eLG
OB2ZRijnqUPSiLehVMlZzRxmFO8HtyCdzGeafOZKOjOLiPPrKYujUzBRMB0GA1Ud
DgQWBBTkdudEK5j4RRzYC8wxUIaHEIiFyjAfBgNVHSMEGDAWgBTkdudEK5j4RRzY
C8wxUIaHEIiFyjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIGg0
Ek+tbixI1X2ioHLQvQKzW7SsoEKLpFgMpOLn1sAcAiBR/LzkqKvWDt5S9vDYYO/9
zXtPzRkpwh+CFf+ub5qdNg==
-----END CERTIFICATE-----
";

/// A file of a test's own (tests run in parallel), removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(test: &str, contents: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rust-app-kafka-config-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ca.pem");
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn kafka_security_defaults_to_no_sasl_and_the_system_cas() {
    let config = load(&[]).expect("defaults are valid");
    let kafka = &config.kafka;
    assert_eq!(kafka.sasl_mechanism, "PLAIN");
    assert_eq!(kafka.sasl_username, "");
    assert_eq!(kafka.sasl_password.expose_secret(), "");
    assert_eq!(kafka.ssl_ca_location, None);
    assert!(!kafka.uses_sasl());
    let shown = |name: &str| config.effective().iter().find(|e| e.name == name).map(|e| e.value.clone());
    assert_eq!(shown("KAFKA_SASL_PASSWORD").as_deref(), Some(""), "unset shows empty, not ***");
    assert_eq!(shown("KAFKA_SASL_MECHANISM").as_deref(), Some("PLAIN"));
}

#[test]
fn a_valid_sasl_ssl_configuration_loads_with_every_field() {
    let ca = TempFile::new("valid-sasl-ssl", TEST_CA_PEM);
    let config = load(&[
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
        ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
        ("KAFKA_SASL_USERNAME", " alice "),
        ("KAFKA_SASL_PASSWORD", "pa ss:w@rd"),
        ("KAFKA_SSL_CA_LOCATION", ca.path()),
    ])
    .expect("valid");
    let kafka = &config.kafka;
    assert_eq!(kafka.security_protocol, "SASL_SSL");
    assert_eq!(kafka.sasl_mechanism, "SCRAM-SHA-512", "canonical spelling");
    assert_eq!(kafka.sasl_username, "alice", "trimmed");
    assert_eq!(kafka.sasl_password.expose_secret(), "pa ss:w@rd", "kept as given");
    assert_eq!(kafka.ssl_ca_location.as_deref(), Some(std::path::Path::new(ca.path())));
    assert!(kafka.uses_sasl());
    let entry = |name: &str| config.effective().iter().find(|e| e.name == name).cloned().expect(name);
    assert_eq!(entry("KAFKA_SASL_PASSWORD").value, "***");
    assert_eq!(entry("KAFKA_SASL_PASSWORD").origin, Origin::Environment);
    assert_eq!(entry("KAFKA_SASL_USERNAME").value, "alice");
    assert_eq!(entry("KAFKA_SSL_CA_LOCATION").value, ca.path());

    for (protocol, mechanism) in [("SASL_PLAINTEXT", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-256")] {
        let config = load(&[
            ("KAFKA_SECURITY_PROTOCOL", protocol),
            ("KAFKA_SASL_MECHANISM", mechanism),
            ("KAFKA_SASL_USERNAME", "alice"),
            ("KAFKA_SASL_PASSWORD", "secret"),
        ])
        .unwrap_or_else(|err| panic!("{protocol} {mechanism}: {err}"));
        assert_eq!((config.kafka.security_protocol, config.kafka.sasl_mechanism), (protocol, mechanism));
    }
    let tls_only = load(&[("KAFKA_SECURITY_PROTOCOL", "SSL"), ("KAFKA_SSL_CA_LOCATION", ca.path())]).expect("valid");
    assert!(tls_only.kafka.ssl_ca_location.is_some());
}

/// One row per broken rule: the variables set, and the exact problem lines expected, in reading order.
#[test]
fn every_kafka_security_rule_has_its_own_message() {
    let ca = TempFile::new("rules", TEST_CA_PEM);
    let ca = ca.path();
    let missing =
        |name: &str, protocol: &str| format!("{name} (default): must be set with KAFKA_SECURITY_PROTOCOL={protocol}");
    let unused = |name: &str, value: &str, protocol: &str| {
        format!(
            "{name}={value:?} (environment): is not used with KAFKA_SECURITY_PROTOCOL={protocol}: \
             use SASL_PLAINTEXT or SASL_SSL, or unset it"
        )
    };
    let no_tls = |protocol: &str| {
        format!(
            "KAFKA_SSL_CA_LOCATION={ca:?} (environment): is not used with KAFKA_SECURITY_PROTOCOL={protocol} \
             (no TLS): use SSL or SASL_SSL, or unset it"
        )
    };
    // The variables set, and the problem lines expected.
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<String>);
    let cases: Vec<Case<'_>> = vec![
        (
            vec![("KAFKA_SASL_MECHANISM", "GSSAPI")],
            vec![
                "KAFKA_SASL_MECHANISM=\"GSSAPI\" (environment): must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
                    .into(),
            ],
        ),
        (
            vec![("KAFKA_SECURITY_PROTOCOL", "SSL"), ("KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem")],
            vec![
                "KAFKA_SSL_CA_LOCATION=\"/nonexistent/ca.pem\" (environment): \
                 must be a readable file (No such file or directory (os error 2))"
                    .into(),
            ],
        ),
        // A SASL protocol needs both credentials; each missing one is its own line.
        (
            vec![("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")],
            vec![missing("KAFKA_SASL_USERNAME", "SASL_SSL"), missing("KAFKA_SASL_PASSWORD", "SASL_SSL")],
        ),
        (
            vec![("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"), ("KAFKA_SASL_USERNAME", "alice")],
            vec![missing("KAFKA_SASL_PASSWORD", "SASL_PLAINTEXT")],
        ),
        (
            vec![("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"), ("KAFKA_SASL_PASSWORD", "secret")],
            vec![missing("KAFKA_SASL_USERNAME", "SASL_SSL")],
        ),
        (
            vec![("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"), ("KAFKA_SASL_USERNAME", "  "), ("KAFKA_SASL_PASSWORD", "x")],
            vec!["KAFKA_SASL_USERNAME=\"  \" (environment): must be set with KAFKA_SECURITY_PROTOCOL=SASL_SSL".into()],
        ),
        // Credentials with a protocol that would silently ignore them; the password stays masked.
        (vec![("KAFKA_SASL_USERNAME", "alice")], vec![unused("KAFKA_SASL_USERNAME", "alice", "PLAINTEXT")]),
        (
            vec![("KAFKA_SECURITY_PROTOCOL", "ssl"), ("KAFKA_SASL_PASSWORD", "secret")],
            vec![unused("KAFKA_SASL_PASSWORD", "***", "SSL")],
        ),
        (
            vec![("KAFKA_SECURITY_PROTOCOL", "SSL"), ("KAFKA_SASL_USERNAME", "alice"), ("KAFKA_SASL_PASSWORD", "pw")],
            vec![unused("KAFKA_SASL_USERNAME", "alice", "SSL"), unused("KAFKA_SASL_PASSWORD", "***", "SSL")],
        ),
        // A CA file with a protocol that does not use TLS.
        (vec![("KAFKA_SSL_CA_LOCATION", ca)], vec![no_tls("PLAINTEXT")]),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
                ("KAFKA_SASL_USERNAME", "alice"),
                ("KAFKA_SASL_PASSWORD", "pw"),
                ("KAFKA_SSL_CA_LOCATION", ca),
            ],
            vec![no_tls("SASL_PLAINTEXT")],
        ),
        // Every problem at once, one line each.
        (
            vec![("KAFKA_SASL_USERNAME", "alice"), ("KAFKA_SASL_PASSWORD", "pw"), ("KAFKA_SSL_CA_LOCATION", ca)],
            vec![
                unused("KAFKA_SASL_USERNAME", "alice", "PLAINTEXT"),
                unused("KAFKA_SASL_PASSWORD", "***", "PLAINTEXT"),
                no_tls("PLAINTEXT"),
            ],
        ),
        // An unreadable protocol is the only problem: the rest is not judged against its default.
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", "SASL-SSL"),
                ("KAFKA_SASL_USERNAME", "alice"),
                ("KAFKA_SSL_CA_LOCATION", ca),
            ],
            vec![
                "KAFKA_SECURITY_PROTOCOL=\"SASL-SSL\" (environment): \
                 must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
                    .into(),
            ],
        ),
    ];
    for (env, expected) in cases {
        assert_eq!(problems(&env), expected, "{env:?}");
    }
}

#[test]
fn a_bad_kafka_security_configuration_fails_as_a_whole_with_one_line_per_problem() {
    let err =
        load(&[("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"), ("KAFKA_SASL_MECHANISM", "md5")]).expect_err("three problems");
    let message = err.to_string();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines[0], "invalid configuration (3 problems):", "{message}");
    for (line, name) in lines[1..].iter().zip(["KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"]) {
        assert!(line.trim_start().starts_with(name), "{line}");
    }
}

#[test]
fn the_kafka_sasl_password_never_appears_in_messages_listings_or_debug_output() {
    let password = "k4fk4-s3cr3t";
    let good = load(&[
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("KAFKA_SASL_USERNAME", "alice"),
        ("KAFKA_SASL_PASSWORD", password),
    ])
    .expect("valid");
    let listing = format!("{:?}", good.effective());
    assert!(listing.contains("\"KAFKA_SASL_PASSWORD\", value: \"***\""), "{listing}");
    let client = infra::kafka::KafkaClient::connect_lazy(&good.kafka).expect("client");
    for shown in [listing, format!("{good:?}"), format!("{:?}", good.kafka), format!("{client:?}")] {
        assert!(!shown.contains(password), "secret leaked: {shown}");
    }

    // Refused with the password set: as the wrong protocol's problem, and among other problems.
    for env in [
        vec![("KAFKA_SECURITY_PROTOCOL", "SSL"), ("KAFKA_SASL_PASSWORD", password)],
        vec![("KAFKA_SASL_PASSWORD", password), ("KAFKA_SASL_MECHANISM", "bogus"), ("REDIS_POOL_SIZE", "0")],
        vec![("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"), ("KAFKA_SASL_PASSWORD", password)],
    ] {
        let err = load(&env).expect_err("invalid");
        let message = err.to_string();
        assert!(!message.contains(password), "secret leaked: {message}");
        assert!(!format!("{err:?}").contains(password), "secret leaked in Debug: {err:?}");
    }
}

/// librdkafka checks its configuration when a client is created (it connects lazily: no broker is needed).
#[test]
fn librdkafka_accepts_the_security_settings() {
    let ca = TempFile::new("librdkafka", TEST_CA_PEM);
    let sasl = [
        ("KAFKA_BROKERS", "127.0.0.1:9"),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ("KAFKA_SASL_USERNAME", "alice"),
        ("KAFKA_SASL_PASSWORD", "secret"),
    ];
    let config = load(&sasl).expect("valid");
    infra::kafka::KafkaClient::connect_lazy(&config.kafka).expect("SASL_SSL + SCRAM-SHA-512");

    let mut with_ca = sasl.to_vec();
    with_ca.push(("KAFKA_SSL_CA_LOCATION", ca.path()));
    let config = load(&with_ca).expect("valid");
    infra::kafka::KafkaClient::connect_lazy(&config.kafka).expect("SASL_SSL with a CA file");

    let plain = [
        ("KAFKA_BROKERS", "127.0.0.1:9"),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
        ("KAFKA_SASL_USERNAME", "alice"),
        ("KAFKA_SASL_PASSWORD", "secret"),
    ];
    let config = load(&plain).expect("valid");
    infra::kafka::KafkaClient::connect_lazy(&config.kafka).expect("SASL_PLAINTEXT + PLAIN");
}

/// The CA file really reaches librdkafka: one that is readable but not PEM makes the client fail to start.
#[test]
fn a_ca_file_librdkafka_cannot_load_is_refused_when_the_client_is_created() {
    let not_pem = TempFile::new("not-pem", "this is not a certificate\n");
    let config = load(&[
        ("KAFKA_BROKERS", "127.0.0.1:9"),
        ("KAFKA_SECURITY_PROTOCOL", "SSL"),
        ("KAFKA_SSL_CA_LOCATION", not_pem.path()),
    ])
    .expect("readable, so the configuration itself is valid");
    let err = infra::kafka::KafkaClient::connect_lazy(&config.kafka).expect_err("librdkafka cannot load it");
    assert!(matches!(err, infra::kafka::KafkaError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("ssl.ca.location"), "{err}");
}

#[test]
fn telemetry_settings_are_read_and_each_bad_one_named() {
    let config = load(&[
        ("LOG_FORMAT", "Pretty"),
        ("LOG_LEVEL", "warn,infra=debug"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
    ])
    .expect("valid");
    assert_eq!(config.service.log_format, infra::telemetry::LogFormat::Pretty);
    assert_eq!(config.service.effective_log_filter(), "warn,infra=debug");
    assert_eq!(config.service.otlp.as_ref().map(|o| o.endpoint.as_str()), Some("http://127.0.0.1:4317"));
    assert_eq!((config.service.sampler, config.service.sampler_ratio), ("parentbased_traceidratio", 0.25));
    let defaults = load(&[]).expect("valid");
    assert!(defaults.service.otlp.is_none(), "no endpoint, no exporter");
    assert_eq!(defaults.service.effective_log_filter(), "info");
    assert_eq!(
        load(&[("RUST_LOG", "debug"), ("LOG_LEVEL", "warn")]).expect("valid").service.effective_log_filter(),
        "debug"
    );

    let found = problems(&[
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "infoo=="),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
    ]);
    let names: Vec<&str> = found.iter().map(|p| p.split('=').next().unwrap_or_default()).collect();
    assert_eq!(
        names,
        ["LOG_FORMAT", "LOG_LEVEL", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"],
        "{found:#?}"
    );
}

#[test]
fn otlp_header_values_never_appear_in_messages_listings_or_debug_output() {
    let token = "t0k3n-s3cr3t";
    let headers = format!("authorization=Bearer%20{token},x-tenant=blue");
    let good =
        load(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"), ("OTEL_EXPORTER_OTLP_HEADERS", &headers)])
            .expect("valid");
    let otlp = good.service.otlp.as_ref().expect("exporter configured");
    let names: Vec<&str> = otlp.headers.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["authorization", "x-tenant"]);
    assert_eq!(otlp.headers[0].1.expose_secret(), format!("Bearer {token}"));
    let listing = format!("{:?}", good.effective());
    assert!(listing.contains("\"OTEL_EXPORTER_OTLP_HEADERS\", value: \"***\""), "{listing}");
    for shown in [listing, format!("{good:?}"), format!("{otlp:?}")] {
        assert!(!shown.contains(token), "secret leaked: {shown}");
    }
    let bad = format!("authorization Bearer {token}");
    let err = load(&[("OTEL_EXPORTER_OTLP_HEADERS", &bad), ("REDIS_POOL_SIZE", "0")]).expect_err("invalid");
    assert!(!err.to_string().contains(token), "secret leaked: {err}");
    assert!(!format!("{err:?}").contains(token), "secret leaked in Debug: {err:?}");
}

/// A password with any printable characters (the URL delimiters `#/?@:%&` among them, unencoded as a human
/// would paste it) around a marker, so that "the password appears" is meaningful.
fn password() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::strategy::Strategy;
    let part = "([#/?@:%&=,+;\\\\ ]|[!-~]){0,8}";
    (part, part).prop_map(|(before, after)| format!("{before}Pw9marker{after}"))
}

/// The DSN shapes the password can take: user info, a `password` parameter, a Redis AUTH password.
fn secret_variable(shape: usize, password: &str) -> (&'static str, String) {
    match shape {
        0 => ("POSTGRES_DSN", format!("postgres://app:{password}@db.internal:5432/app?sslmode=disable")),
        1 => ("POSTGRES_DSN", format!("postgres://app@db.internal:5432/app?password={password}")),
        _ => ("REDIS_ADDR", format!("redis://:{password}@cache.internal:6379")),
    }
}

fn leaks(shown: &str, password: &str) -> bool {
    let shown = shown.to_lowercase();
    shown.contains("pw9marker") || shown.contains(&password.to_lowercase())
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(256))]

    /// Whatever the password, it is in neither the effective configuration nor `Debug` when the rest is
    /// valid, nor in the exit-78 message (and its `Debug`) when another variable is bad; in cluster mode the
    /// cross-variable check shows REDIS_ADDR too.
    #[test]
    fn no_password_appears_in_listings_messages_or_debug(password in password(), shape in 0..3usize) {
        let (name, value) = secret_variable(shape, &password);
        let shown = match load(&[(name, &value)]) {
            Ok(config) => format!("{:?}\n{config:?}", config.effective()),
            Err(err) => format!("{err}\n{err:?}"),
        };
        proptest::prop_assert!(!leaks(&shown, &password), "{value} shown as {shown}");

        let err = load(&[(name, &value), ("REDIS_POOL_SIZE", "0"), ("REDIS_DB", "3"), ("REDIS_MODE", "cluster")])
            .expect_err("a bad pool size");
        let message = format!("{err}\n{err:?}");
        proptest::prop_assert!(!leaks(&message, &password), "{value} shown as {message}");
    }
}
