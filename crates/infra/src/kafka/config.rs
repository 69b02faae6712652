//! Kafka settings.

use std::time::Duration;

use crate::config::{Reader, Sensitivity, Unit, check_broker_list};

/// The security protocols librdkafka understands (`security.protocol`).
pub const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

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
}

impl KafkaConfig {
    /// Reads the Kafka settings, recording problems in `r`.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let brokers = r.parsed("KAFKA_BROKERS", Sensitivity::Plain, BrokerList(vec!["localhost:9092".into()]), |raw| {
            check_broker_list(raw).map(BrokerList)
        });
        KafkaConfig {
            brokers: brokers.0,
            topic: r.parsed("KAFKA_TOPIC", Sensitivity::Plain, "rust-app-events".to_string(), check_topic),
            consumer_group: r.string("KAFKA_CONSUMER_GROUP", "rust-app-consumer-group"),
            batch_size: r.int("KAFKA_BATCH_SIZE", 100, 1, 1_000_000),
            dial_timeout: r.duration("KAFKA_DIAL_TIMEOUT", Duration::from_secs(15), Unit::Seconds, false),
            conn_idle_time: r.duration("KAFKA_CONN_IDLE_TIME", Duration::from_secs(20 * 60), Unit::Minutes, true),
            security_protocol: r.choice("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", &SECURITY_PROTOCOLS),
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
