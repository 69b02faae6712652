//! The event topics the service publishes to: created at start and re-created when the broker lost them (a
//! broker without persistent storage comes back empty from a restart) — when the service is the one that
//! creates its topics (KAFKA_CREATE_TOPICS). Otherwise a missing topic is reported and waited for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use infra::kafka::{KafkaClient, KafkaConfig};

/// Partitions of the event topic when the service creates it.
pub const EVENT_TOPIC_PARTITIONS: i32 = 3;

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
    /// whoever provisions topics. Returns whether a topic was created. A broker that does not answer is not
    /// judged here: the sends' own errors already say so.
    pub async fn restore(&self) -> bool {
        let (topic, _) = &self.topics[0];
        let missing = match self.kafka.topic_metadata(topic, self.timeout).await {
            Ok(_) => false,
            Err(err) => err.is_unknown_topic(),
        };
        if !missing {
            self.reported_missing.store(false, Ordering::Relaxed);
            return false;
        }
        if !self.create {
            if !self.reported_missing.swap(true, Ordering::Relaxed) {
                tracing::warn!(%topic, "the event topic does not exist and KAFKA_CREATE_TOPICS=false: events wait in the outbox until it is provisioned");
            }
            return false;
        }
        let mut created = false;
        for (name, partitions) in &self.topics {
            match self.kafka.ensure_topic(name, *partitions, self.timeout).await {
                Ok(()) => created = true,
                Err(err) => tracing::debug!(topic = %name, error = %err, "topic not re-created yet"),
            }
        }
        if created {
            tracing::info!(%topic, partitions = EVENT_TOPIC_PARTITIONS, "the broker had lost the event topics; re-created them");
        }
        created
    }
}
