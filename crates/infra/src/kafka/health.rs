//! Kafka health: a metadata request for the service's topic, plus the consumer's group membership, assignment
//! and lag when the service consumes.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::client::KafkaClient;
use super::state::ConsumerState;
use crate::health::{CheckFailure, Details, HealthCheck};

/// Checks that the cluster answers a metadata request for the configured topic and that the topic exists.
#[derive(Debug)]
pub struct KafkaHealth {
    client: KafkaClient,
    topic: String,
    timeout: Duration,
    consumer: Option<ConsumerState>,
}

impl KafkaHealth {
    /// A check of `topic` through `client`; `timeout` bounds the metadata request itself.
    pub fn new(client: KafkaClient, topic: String, timeout: Duration) -> Self {
        KafkaHealth { client, topic, timeout, consumer: None }
    }

    /// Also reports `consumer`'s state: member of the group or not, assigned partitions, lag. A consumer that
    /// is not (yet) a member does not fail the check — a rebalance is normal — but shows in the details.
    pub fn with_consumer(mut self, consumer: ConsumerState) -> Self {
        self.consumer = Some(consumer);
        self
    }
}

#[async_trait]
impl HealthCheck for KafkaHealth {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn check(&self) -> Result<Details, CheckFailure> {
        let metadata = self
            .client
            .topic_metadata(&self.topic, self.timeout)
            .await
            .map_err(|err| CheckFailure::new(format!("{}: {err}", self.client.address())))?;
        let mut details = Details::new();
        details.insert("address".into(), json!(self.client.address()));
        details.insert("brokers".into(), json!(metadata.brokers));
        details.insert("topic".into(), json!(self.topic));
        details.insert("partitions".into(), json!(metadata.partitions));
        if let Some(consumer) = &self.consumer {
            details.insert("consumer".into(), json!(consumer.snapshot()));
        }
        Ok(details)
    }
}
