//! An admin client: metadata requests (health) and topic creation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaConfig;

/// Errors of the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused the configuration.
    #[error("invalid Kafka client configuration: {0}")]
    Config(RdKafkaError),
    /// A metadata request failed or timed out.
    #[error("metadata request failed: {0}")]
    Metadata(RdKafkaError),
    /// The broker answered but the topic is unusable.
    #[error("topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A blocking librdkafka call could not be run.
    #[error("Kafka call aborted: {0}")]
    Aborted(String),
}

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
    bootstrap: String,
}

impl fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaClient").field("bootstrap", &self.bootstrap).finish_non_exhaustive()
    }
}

impl KafkaClient {
    /// Creates the client; librdkafka connects in the background, so this succeeds with brokers down.
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        // A health check must observe the topic, not create it as a side effect (brokers with auto-creation
        // would, on a metadata request from a client that allows it).
        let admin =
            base_client_config(config).set("allow.auto.create.topics", "false").create().map_err(KafkaError::Config)?;
        Ok(KafkaClient { admin: Arc::new(admin), bootstrap: config.bootstrap_servers() })
    }

    /// The bootstrap brokers.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Asks the cluster for `topic`'s metadata. Runs librdkafka's blocking call on the blocking pool.
    pub async fn topic_metadata(&self, topic: &str, timeout: Duration) -> Result<TopicMetadata, KafkaError> {
        let admin = self.admin.clone();
        let name = topic.to_string();
        let metadata = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(Some(&name), timeout))
            .await
            .map_err(|err| KafkaError::Aborted(err.to_string()))?
            .map_err(KafkaError::Metadata)?;
        let topic_error = |reason: String| KafkaError::Topic { topic: topic.to_string(), reason };
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| topic_error("not in metadata".into()))?;
        if let Some(err) = found.error() {
            return Err(topic_error(RDKafkaErrorCode::from(err).to_string()));
        }
        Ok(TopicMetadata { brokers: metadata.brokers().len(), partitions: found.partitions().len() })
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
