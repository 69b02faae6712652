//! An admin client: metadata requests (health) and topic creation.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::config::KafkaConfig;
use super::error::{KafkaError, NOT_IN_METADATA};

/// What the broker reports about a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Brokers in the cluster.
    pub brokers: usize,
    /// Partitions of the topic.
    pub partitions: usize,
}

/// A Kafka admin client. Cheap to clone.
#[derive(Clone)]
pub struct KafkaClient {
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// Metadata requests (health) go through a client of the consumer kind: its metadata requests never create
    /// the topic, and polling it serves librdkafka's error events, which the admin client never does — so a
    /// failed request can say why.
    metadata: Arc<BaseConsumer<ConnectionErrors>>,
    address: String,
}

/// Events polled after a failed metadata request, at most (they are the few errors queued since the last poll).
const MAX_EVENTS_DRAINED: usize = 100;

/// Remembers the last connection error librdkafka reported, so a failed metadata request (health) can say why:
/// the request itself only times out or reports a transport failure, the reason — a certificate that does not
/// verify against KAFKA_SSL_CA_LOCATION, a failed authentication — comes as a log event. The health check
/// reports it; the client's own log lines go to DEBUG (rdkafka's default would log each failure at ERROR).
///
/// librdkafka reports an error again only when it changes (it suppresses identical repeats), so the last one
/// is kept until a request succeeds, not only while the request that fails runs.
#[derive(Default)]
struct ConnectionErrors {
    last: Mutex<Option<String>>,
}

impl ClientContext for ConnectionErrors {
    /// librdkafka reports a failed connection (refused, TLS handshake, authentication) as a log line of the
    /// `FAIL` facility: `[thrd:…]: ssl://host:port/bootstrap: SSL handshake failed: … certificate verify failed …`.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, facility, message, "Kafka metadata client");
        if facility == "FAIL" {
            // Without the thread name: the broker and the reason remain.
            self.record(message.split_once("]: ").map_or(message, |(_, reason)| reason));
        }
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", error = %error, reason, "Kafka metadata client error");
        self.record(reason);
    }
}

impl ConsumerContext for ConnectionErrors {}

impl ConnectionErrors {
    fn record(&self, reason: &str) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(reason.to_string());
        }
    }

    /// The last error reported since the last successful request.
    fn last(&self) -> Option<String> {
        self.last.lock().ok()?.clone()
    }

    /// A request succeeded: earlier errors are history.
    fn clear(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }
}

impl fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaClient").field("address", &self.address).finish_non_exhaustive()
    }
}

impl KafkaClient {
    /// Creates the client; librdkafka connects in the background, so this succeeds with brokers down.
    pub fn connect_lazy(config: &KafkaConfig) -> Result<Self, KafkaError> {
        // A health check must observe the topic, not create it as a side effect (brokers with auto-creation
        // would, on a metadata request from a client that allows it).
        let admin =
            base_client_config(config).set("allow.auto.create.topics", "false").create().map_err(KafkaError::Config)?;
        let metadata = base_client_config(config)
            .set("allow.auto.create.topics", "false")
            .create_with_context(ConnectionErrors::default())
            .map_err(KafkaError::Config)?;
        Ok(KafkaClient { admin: Arc::new(admin), metadata: Arc::new(metadata), address: config.bootstrap_servers() })
    }

    /// The bootstrap brokers (KAFKA_BROKERS), safe to log.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Asks the cluster for `topic`'s metadata. Runs librdkafka's blocking call on the blocking pool. A failure
    /// while connecting to the brokers failed carries librdkafka's reason ([`KafkaError::Connection`]).
    pub async fn topic_metadata(&self, topic: &str, timeout: Duration) -> Result<TopicMetadata, KafkaError> {
        let client = self.metadata.clone();
        let name = topic.to_string();
        let metadata = tokio::task::spawn_blocking(move || {
            let metadata = client.fetch_metadata(Some(&name), timeout);
            match &metadata {
                Ok(_) => client.context().clear(),
                // Serves the queued error events: the context records their reasons.
                Err(_) => (0..MAX_EVENTS_DRAINED).map_while(|_| client.poll(Duration::ZERO)).for_each(drop),
            }
            metadata
        })
        .await
        .map_err(|err| KafkaError::Aborted(err.to_string()))?
        .map_err(|error| self.request_error(error))?;
        let topic_error = |reason: String| KafkaError::Topic { topic: topic.to_string(), reason };
        let found =
            metadata.topics().iter().find(|t| t.name() == topic).ok_or_else(|| topic_error(NOT_IN_METADATA.into()))?;
        if let Some(err) = found.error() {
            return Err(topic_error(RDKafkaErrorCode::from(err).to_string()));
        }
        Ok(TopicMetadata { brokers: metadata.brokers().len(), partitions: found.partitions().len() })
    }

    /// Records `topic` holds now: over its partitions, the high watermark minus the low one (records removed by
    /// retention no longer count). For the ops page's dead-letter depth; blocking calls run on the blocking pool,
    /// each bounded by `timeout`. The broker answers from ListOffsets: a broker whose ListOffsets is wrong (the
    /// local tansu reports the last batch's start) gives a wrong count.
    pub async fn topic_record_count(&self, topic: &str, timeout: Duration) -> Result<i64, KafkaError> {
        let partitions = self.topic_metadata(topic, timeout).await?.partitions;
        let admin = self.admin.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            (0..partitions as i32).try_fold(0, |count, partition| {
                let (low, high) = admin.inner().fetch_watermarks(&name, partition, timeout)?;
                Ok(count + (high - low).max(0))
            })
        })
        .await
        .map_err(|err| KafkaError::Aborted(err.to_string()))?
        .map_err(KafkaError::Metadata)
    }

    /// Creates `topic` unless it exists. Brokers with auto-creation would create it on first produce anyway;
    /// creating it up front makes health green from the start and fixes the partition count.
    pub async fn ensure_topic(&self, topic: &str, partitions: i32, timeout: Duration) -> Result<(), KafkaError> {
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().request_timeout(Some(timeout)).operation_timeout(Some(timeout));
        let results = self.admin.create_topics([&new_topic], &options).await.map_err(KafkaError::Metadata)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(KafkaError::Topic { topic: name, reason: code.to_string() }),
            }
        }
        Ok(())
    }
}

impl KafkaClient {
    /// A request failed with `error`: with the last connection error since the last success, if any.
    fn request_error(&self, error: RdKafkaError) -> KafkaError {
        match self.metadata.context().last() {
            Some(cause) => KafkaError::Connection { error, cause },
            None => KafkaError::Metadata(error),
        }
    }
}

/// librdkafka settings shared by every client of this layer, security included. The SASL password is exposed
/// only here, into librdkafka's own configuration; rdkafka's `Debug` of a `ClientConfig` leaves it out.
pub(crate) fn base_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", config.bootstrap_servers())
        .set("security.protocol", config.security_protocol.to_ascii_lowercase())
        .set("socket.connection.setup.timeout.ms", config.dial_timeout.as_millis().to_string())
        .set("connections.max.idle.ms", config.conn_idle_time.as_millis().to_string())
        .set("log_level", "4");
    if config.uses_sasl() {
        client
            .set("sasl.mechanism", config.sasl_mechanism)
            .set("sasl.username", config.sasl_username.as_str())
            .set("sasl.password", secrecy::ExposeSecret::expose_secret(&config.sasl_password));
    }
    if let Some(ca) = &config.ssl_ca_location {
        client.set("ssl.ca.location", ca.display().to_string());
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Reader, Sources};

    fn kafka(env: &[(&str, &str)]) -> KafkaConfig {
        let sources = Sources::from_env_pairs(env);
        let mut r = Reader::new(&sources);
        let config = KafkaConfig::read(&mut r);
        assert_eq!(r.problems(), [], "{env:?}");
        config
    }

    #[test]
    fn the_client_gets_sasl_settings_only_with_a_sasl_protocol() {
        let client = base_client_config(&kafka(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-256"),
            ("KAFKA_SASL_USERNAME", "alice"),
            ("KAFKA_SASL_PASSWORD", "k4fk4-s3cr3t"),
        ]));
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(client.get("sasl.username"), Some("alice"));
        assert_eq!(client.get("sasl.password"), Some("k4fk4-s3cr3t"));
        assert_eq!(client.get("ssl.ca.location"), None, "the system's CAs unless set");

        let client = base_client_config(&kafka(&[]));
        assert_eq!(client.get("security.protocol"), Some("plaintext"));
        for key in ["sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location"] {
            assert_eq!(client.get(key), None, "{key}");
        }
    }

    #[test]
    fn the_client_gets_the_ca_file_when_set() {
        // Any readable file passes the configuration; librdkafka itself parses the PEM.
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let client = base_client_config(&kafka(&[("KAFKA_SECURITY_PROTOCOL", "ssl"), ("KAFKA_SSL_CA_LOCATION", ca)]));
        assert_eq!(client.get("ssl.ca.location"), Some(ca));
        assert_eq!(client.get("sasl.username"), None);
    }

    #[test]
    fn the_client_configuration_never_shows_the_password() {
        let client = base_client_config(&kafka(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("KAFKA_SASL_USERNAME", "alice"),
            ("KAFKA_SASL_PASSWORD", "k4fk4-s3cr3t"),
        ]));
        let shown = [format!("{client:?}"), format!("{:?}", client.config_map())];
        for shown in &shown {
            assert!(shown.contains("alice"), "the rest is shown: {shown}");
            assert!(!shown.contains("k4fk4-s3cr3t"), "secret leaked: {shown}");
        }
    }
}
