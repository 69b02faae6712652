//! Kafka settings.

use std::time::Duration;

use crate::config::{Reader, Sensitivity, Unit, check_broker_list};

/// The security protocols librdkafka understands (`security.protocol`).
pub const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

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
}

impl KafkaConfig {
    /// Reads the Kafka settings, recording problems in `r`.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let brokers = r.parsed("KAFKA_BROKERS", Sensitivity::Plain, BrokerList(vec!["localhost:9092".into()]), |raw| {
            check_broker_list(raw).map(BrokerList)
        });
        let topic = r.parsed("KAFKA_TOPIC", Sensitivity::Plain, "rust-app-events".to_string(), check_topic);
        let dlq_default = format!("{topic}.dlq");
        KafkaConfig {
            brokers: brokers.0,
            topic,
            consumer_group: r.string("KAFKA_CONSUMER_GROUP", "rust-app-consumer-group"),
            batch_size: r.int("KAFKA_BATCH_SIZE", 100, 1, 1_000_000),
            dial_timeout: r.duration("KAFKA_DIAL_TIMEOUT", Duration::from_secs(15), Unit::Seconds, false),
            conn_idle_time: r.duration("KAFKA_CONN_IDLE_TIME", Duration::from_secs(20 * 60), Unit::Minutes, true),
            security_protocol: r.choice("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", &SECURITY_PROTOCOLS),
            linger: r.duration("KAFKA_LINGER_MS", Duration::from_millis(5), Unit::Milliseconds, true),
            compression: r.choice("KAFKA_COMPRESSION", "lz4", &COMPRESSIONS),
            delivery_timeout: r.duration("KAFKA_DELIVERY_TIMEOUT", Duration::from_secs(30), Unit::Seconds, false),
            max_retries: r.int("KAFKA_MAX_RETRIES", 3, 0, 100),
            retry_backoff: r.duration("KAFKA_RETRY_BACKOFF", Duration::from_millis(100), Unit::Milliseconds, false),
            dlq_topic: r.parsed("KAFKA_DLQ_TOPIC", Sensitivity::Plain, dlq_default, check_topic),
            session_timeout: r.duration("KAFKA_SESSION_TIMEOUT", Duration::from_secs(45), Unit::Seconds, false),
        }
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
