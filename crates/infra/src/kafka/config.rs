//! Kafka settings.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::{Masked, Reader, Sensitivity, Unit, check_broker_list};

/// The security protocols librdkafka understands (`security.protocol`).
pub const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

/// The SASL mechanisms supported (`sasl.mechanism`); Kerberos (GSSAPI) and OAUTHBEARER are not.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// The compression codecs librdkafka understands (`compression.codec`).
pub const COMPRESSIONS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// Kafka settings, named as in the specification. Bare numbers: seconds for the dial timeout, minutes for
/// the connection idle time.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `KAFKA_BROKERS`: comma-separated `host:port` bootstrap brokers.
    pub brokers: Vec<String>,
    /// `KAFKA_TOPIC`: the service's event topic.
    pub topic: String,
    /// `KAFKA_CONSUMER_GROUP`: the consumer group id.
    pub consumer_group: String,
    /// `KAFKA_BATCH_SIZE`: most messages per producer batch.
    pub batch_size: u32,
    /// `KAFKA_DIAL_TIMEOUT`: TCP connect + handshake to a broker (`socket.connection.setup.timeout.ms`).
    pub dial_timeout: Duration,
    /// `KAFKA_CONN_IDLE_TIME`: idle broker connections are closed after this (zero: never).
    pub conn_idle_time: Duration,
    /// `KAFKA_SECURITY_PROTOCOL`: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    pub security_protocol: &'static str,
    /// `KAFKA_LINGER_MS`: how long the producer waits to fill a batch (`linger.ms`).
    pub linger: Duration,
    /// `KAFKA_COMPRESSION`: producer compression codec.
    pub compression: &'static str,
    /// `KAFKA_DELIVERY_TIMEOUT`: how long a produced record may take to be acknowledged, retries included
    /// (`delivery.timeout.ms`); past it the send fails.
    pub delivery_timeout: Duration,
    /// `KAFKA_MAX_RETRIES`: retries of a failing consumer handler before the record goes to the dead-letter topic.
    pub max_retries: u32,
    /// `KAFKA_RETRY_BACKOFF`: the first delay between handler retries (doubling, with jitter, up to 30 s).
    pub retry_backoff: Duration,
    /// `KAFKA_DLQ_TOPIC`: the dead-letter topic (default `<KAFKA_TOPIC>.dlq`).
    pub dlq_topic: String,
    /// `KAFKA_SESSION_TIMEOUT`: the consumer group session timeout (`session.timeout.ms`).
    pub session_timeout: Duration,
    /// `KAFKA_SASL_MECHANISM`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (used with the SASL_* protocols only).
    pub sasl_mechanism: &'static str,
    /// `KAFKA_SASL_USERNAME`: the SASL user; set exactly when the protocol is SASL_*.
    pub sasl_username: String,
    /// `KAFKA_SASL_PASSWORD`: the SASL password; set exactly when the protocol is SASL_*. Never printed.
    pub sasl_password: SecretString,
    /// `KAFKA_SSL_CA_LOCATION`: CA certificate (PEM) to verify the brokers with, instead of the system's; only
    /// with the TLS protocols (SSL, SASL_SSL).
    pub ssl_ca_location: Option<PathBuf>,
    /// `KAFKA_CREATE_TOPICS`: whether the service creates its topics (at start, and again when the broker lost
    /// them). On by default for local use; off in production, where topics are provisioned.
    pub create_topics: bool,
}

impl KafkaConfig {
    /// Reads the Kafka settings, recording problems in `r`.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let brokers = r.parsed("KAFKA_BROKERS", Sensitivity::Plain, BrokerList(vec!["localhost:9092".into()]), |raw| {
            check_broker_list(raw).map(BrokerList)
        });
        let topic = r.parsed("KAFKA_TOPIC", Sensitivity::Plain, "rust-app-events".to_string(), check_topic);
        let dlq_default = format!("{topic}.dlq");
        let consumer_group = r.string("KAFKA_CONSUMER_GROUP", "rust-app-consumer-group");
        let batch_size = r.int("KAFKA_BATCH_SIZE", 100, 1, 1_000_000);
        let dial_timeout = r.duration("KAFKA_DIAL_TIMEOUT", Duration::from_secs(15), Unit::Seconds, false);
        let conn_idle_time = r.duration("KAFKA_CONN_IDLE_TIME", Duration::from_secs(20 * 60), Unit::Minutes, true);
        let security_protocol = r.choice("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", &SECURITY_PROTOCOLS);
        // A protocol that could not be read stands at its default: judging the other settings against it would
        // only add confusing problems to the one that matters.
        let protocol = r.problems().iter().all(|p| p.name != "KAFKA_SECURITY_PROTOCOL").then_some(security_protocol);
        KafkaConfig {
            brokers: brokers.0,
            topic,
            consumer_group,
            batch_size,
            dial_timeout,
            conn_idle_time,
            security_protocol,
            linger: r.duration("KAFKA_LINGER_MS", Duration::from_millis(5), Unit::Milliseconds, true),
            compression: r.choice("KAFKA_COMPRESSION", "lz4", &COMPRESSIONS),
            delivery_timeout: r.duration("KAFKA_DELIVERY_TIMEOUT", Duration::from_secs(30), Unit::Seconds, false),
            max_retries: r.int("KAFKA_MAX_RETRIES", 3, 0, 100),
            retry_backoff: r.duration("KAFKA_RETRY_BACKOFF", Duration::from_millis(100), Unit::Milliseconds, false),
            dlq_topic: r.parsed("KAFKA_DLQ_TOPIC", Sensitivity::Plain, dlq_default, check_topic),
            session_timeout: r.duration("KAFKA_SESSION_TIMEOUT", Duration::from_secs(45), Unit::Seconds, false),
            sasl_mechanism: r.choice("KAFKA_SASL_MECHANISM", "PLAIN", &SASL_MECHANISMS),
            sasl_username: read_sasl_username(r, protocol),
            sasl_password: read_sasl_password(r, protocol),
            ssl_ca_location: read_ssl_ca_location(r, protocol),
            create_topics: r.bool("KAFKA_CREATE_TOPICS", true),
        }
    }

    /// Whether the protocol authenticates with SASL (SASL_PLAINTEXT, SASL_SSL).
    pub fn uses_sasl(&self) -> bool {
        uses_sasl(self.security_protocol)
    }

    /// The brokers as librdkafka's `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.brokers.join(",")
    }
}

/// Displays as the comma-separated list it was given as.
struct BrokerList(Vec<String>);

impl std::fmt::Display for BrokerList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

fn uses_sasl(protocol: &str) -> bool {
    protocol.starts_with("SASL_")
}

fn uses_tls(protocol: &str) -> bool {
    protocol.ends_with("SSL")
}

/// The rule broken by a SASL setting given with a protocol that ignores it.
fn sasl_unused(protocol: &str) -> String {
    format!("is not used with KAFKA_SECURITY_PROTOCOL={protocol}: use SASL_PLAINTEXT or SASL_SSL, or unset it")
}

/// The rule broken by a missing SASL setting.
fn sasl_missing(protocol: &str) -> String {
    format!("must be set with KAFKA_SECURITY_PROTOCOL={protocol}")
}

/// `KAFKA_SASL_USERNAME`, given exactly when the protocol uses SASL (`protocol` is `None` when unreadable).
fn read_sasl_username(r: &mut Reader<'_>, protocol: Option<&str>) -> String {
    let username = r.parsed("KAFKA_SASL_USERNAME", Sensitivity::Plain, String::new(), |raw| Ok(raw.trim().to_string()));
    match protocol {
        Some(protocol) if uses_sasl(protocol) && username.is_empty() => {
            r.cross_check("KAFKA_SASL_USERNAME", sasl_missing(protocol));
        }
        Some(protocol) if !uses_sasl(protocol) && !username.is_empty() => {
            r.cross_check("KAFKA_SASL_USERNAME", sasl_unused(protocol));
        }
        _ => {}
    }
    username
}

/// `KAFKA_SASL_PASSWORD`, given exactly when the protocol uses SASL.
///
/// Not read with `Reader::secret` + `Reader::cross_check`: a cross check shows the raw value, masking only what
/// looks like a URL, so a bare password would be printed. Read as a [`Sensitivity::Secret`] value instead, its
/// problems show `***`, and its listing too.
fn read_sasl_password(r: &mut Reader<'_>, protocol: Option<&str>) -> SecretString {
    let unused = protocol.filter(|p| !uses_sasl(p)).map(sasl_unused);
    let password = r.parsed("KAFKA_SASL_PASSWORD", Sensitivity::Secret, Masked::default(), |raw| match unused {
        Some(rule) => Err(rule),
        None => Ok(Masked(SecretString::from(raw))),
    });
    if let Some(protocol) = protocol
        && uses_sasl(protocol)
        && password.0.expose_secret().is_empty()
    {
        // Only reached when unset: an empty value counts as unset, so nothing secret can be shown.
        r.cross_check("KAFKA_SASL_PASSWORD", sasl_missing(protocol));
    }
    password.0
}

/// `KAFKA_SSL_CA_LOCATION`: a readable file, and only with a protocol that uses TLS.
fn read_ssl_ca_location(r: &mut Reader<'_>, protocol: Option<&str>) -> Option<PathBuf> {
    let location = r.optional_file("KAFKA_SSL_CA_LOCATION");
    if let Some(protocol) = protocol
        && location.is_some()
        && !uses_tls(protocol)
    {
        r.cross_check(
            "KAFKA_SSL_CA_LOCATION",
            format!("is not used with KAFKA_SECURITY_PROTOCOL={protocol} (no TLS): use SSL or SASL_SSL, or unset it"),
        );
    }
    location
}

/// Kafka's own rule for topic names.
fn check_topic(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let legal = raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if legal && raw.len() <= 249 && raw != "." && raw != ".." {
        Ok(raw.to_string())
    } else {
        Err("must be 1 to 249 characters of a-z, A-Z, 0-9, '.', '_' or '-'".to_string())
    }
}
