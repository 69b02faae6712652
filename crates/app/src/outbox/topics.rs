//! The event topics the service publishes to: created at start and re-created when the broker lost them (a
//! broker without persistent storage comes back empty from a restart) — when the service is the one that
//! creates its topics (KAFKA_CREATE_TOPICS). Otherwise a missing topic is reported and waited for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use infra::kafka::{KafkaClient, KafkaConfig};

/// Partitions of the event topic when the service creates it.
pub const EVENT_TOPIC_PARTITIONS: i32 = 3;

/// What a look-up of the event topic found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicState {
    /// The broker answered and knows the topic.
    Present,
    /// The broker did not know it; the service created it (KAFKA_CREATE_TOPICS).
    Created,
    /// The broker does not know it and it was not created (KAFKA_CREATE_TOPICS=false, or creating failed).
    Missing,
    /// The broker did not answer the look-up.
    Unknown,
}

/// The event topic and its dead-letter topic, with what to do when they are missing.
#[derive(Debug)]
pub struct EventTopics {
    kafka: KafkaClient,
    topics: [(String, i32); 2],
    create: bool,
    timeout: Duration,
    /// A missing topic was reported and not yet seen again: reported once, not at every retry.
    reported_missing: AtomicBool,
}

impl EventTopics {
    /// The topics of `config` (KAFKA_TOPIC, KAFKA_DLQ_TOPIC), looked up through `kafka`; requests are bounded by
    /// KAFKA_DIAL_TIMEOUT.
    pub fn new(kafka: KafkaClient, config: &KafkaConfig) -> Self {
        EventTopics {
            kafka,
            topics: [(config.topic.clone(), EVENT_TOPIC_PARTITIONS), (config.dlq_topic.clone(), 1)],
            create: config.create_topics,
            timeout: config.dial_timeout,
            reported_missing: AtomicBool::new(false),
        }
    }

    /// At start: creates the topics when missing (KAFKA_CREATE_TOPICS), else does nothing — the health check
    /// reports a topic that is not there.
    pub async fn create_at_start(&self) {
        if !self.create {
            return;
        }
        for (topic, partitions) in &self.topics {
            match self.kafka.ensure_topic(topic, *partitions, self.timeout).await {
                Ok(()) => tracing::debug!(%topic, "topic present"),
                Err(err) => tracing::warn!(%topic, error = %err, "cannot make sure the topic exists"),
            }
        }
    }

    /// After failed sends: looks the event topic up and, when the broker does not know it, re-creates both
    /// topics (KAFKA_CREATE_TOPICS) or reports it once (a warning; `/health/kafka` shows it too) and leaves it to
    /// whoever provisions topics.
    pub async fn restore(&self) -> TopicState {
        let (topic, _) = &self.topics[0];
        match self.kafka.topic_metadata(topic, self.timeout).await {
            Ok(_) => {
                self.reported_missing.store(false, Ordering::Relaxed);
                return TopicState::Present;
            }
            Err(err) if !err.is_unknown_topic() => return TopicState::Unknown,
            Err(_) => {}
        }
        if !self.create {
            if !self.reported_missing.swap(true, Ordering::Relaxed) {
                tracing::warn!(%topic, "the event topic does not exist and KAFKA_CREATE_TOPICS=false: events wait in the outbox until it is provisioned");
            }
            return TopicState::Missing;
        }
        let mut created = true;
        for (name, partitions) in &self.topics {
            if let Err(err) = self.kafka.ensure_topic(name, *partitions, self.timeout).await {
                tracing::debug!(topic = %name, error = %err, "topic not re-created yet");
                created = false;
            }
        }
        if !created {
            return TopicState::Missing;
        }
        tracing::info!(%topic, partitions = EVENT_TOPIC_PARTITIONS, "the broker had lost the event topics; re-created them");
        TopicState::Created
    }
}
