//! The dead-letter topic, in one place: the headers a dead-lettered copy carries (where the record came from
//! and why it failed), reading the topic back, and replaying records to the topic they came from
//! (`rust-app dlq`).

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::client::{KafkaClient, base_client_config};
use super::config::KafkaConfig;
use super::error::{KafkaError, ProduceError};
use super::producer::{Delivered, KafkaProducer};
use super::record::Record;

// Header names on dead-lettered records.

/// The topic the record was consumed from.
pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
/// Its partition there.
pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
/// Its offset there.
pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";
/// Its timestamp there (milliseconds since the epoch), when it had one.
pub const ORIGINAL_TIMESTAMP: &str = "dlq.original.timestamp";
/// The handler's last error.
pub const ERROR: &str = "dlq.error";
/// How many times the handler was called.
pub const ATTEMPTS: &str = "dlq.attempts";
/// Every header a dead-lettered copy gets (replay strips them).
pub const ALL_HEADERS: [&str; 6] =
    [ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, ORIGINAL_TIMESTAMP, ERROR, ATTEMPTS];

/// The headers added to a dead-lettered copy of `record`.
pub(crate) fn dead_letter_headers(record: &Record, error: &str, attempts: u32) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (ORIGINAL_TOPIC, record.topic.clone()),
        (ORIGINAL_PARTITION, record.partition.to_string()),
        (ORIGINAL_OFFSET, record.offset.to_string()),
        (ERROR, error.to_string()),
        (ATTEMPTS, attempts.to_string()),
    ];
    if let Some(timestamp) = record.timestamp {
        headers.push((ORIGINAL_TIMESTAMP, timestamp.to_string()));
    }
    headers
}

/// A record of the dead-letter topic, with accessors for the headers this layer added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The record as stored in the dead-letter topic (its partition and offset are the DLQ's).
    pub record: Record,
}

impl DeadLetter {
    fn text(&self, name: &str) -> Option<String> {
        self.record.header(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The topic it was consumed from.
    pub fn original_topic(&self) -> Option<String> {
        self.text(ORIGINAL_TOPIC)
    }

    /// Its partition and offset there.
    pub fn original_position(&self) -> Option<(i32, i64)> {
        let partition = self.text(ORIGINAL_PARTITION)?.parse().ok()?;
        let offset = self.text(ORIGINAL_OFFSET)?.parse().ok()?;
        Some((partition, offset))
    }

    /// The handler's last error.
    pub fn error(&self) -> Option<String> {
        self.text(ERROR)
    }

    /// How many times the handler was called.
    pub fn attempts(&self) -> Option<u32> {
        self.text(ATTEMPTS)?.parse().ok()
    }

    /// The original headers, without the ones this layer added.
    pub fn original_headers(&self) -> Vec<(&str, &[u8])> {
        self.record
            .headers
            .iter()
            .filter(|(name, _)| !ALL_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect()
    }
}

/// Which dead letters to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayFilter {
    /// Only records with this key.
    pub key: Option<Vec<u8>>,
    /// Only records at or after this offset of the dead-letter topic.
    pub from_offset: Option<i64>,
    /// Only records at or before this offset of the dead-letter topic.
    pub to_offset: Option<i64>,
}

impl ReplayFilter {
    /// Whether `letter` is selected.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let offset = letter.record.offset;
        self.key.as_deref().is_none_or(|key| letter.record.key.as_deref() == Some(key))
            && self.from_offset.is_none_or(|from| offset >= from)
            && self.to_offset.is_none_or(|to| offset <= to)
    }
}

/// Reads every record of KAFKA_DLQ_TOPIC, from the start to the current end, within `timeout`. Reads outside
/// any consumer group: nothing is committed, the service's consumer is not disturbed.
pub async fn read_dead_letters(config: &KafkaConfig, timeout: Duration) -> Result<Vec<DeadLetter>, KafkaError> {
    let started = Instant::now();
    // An unreachable cluster is reported after the dial timeout, not after the whole read's.
    let metadata_timeout = config.dial_timeout.min(timeout);
    let metadata = KafkaClient::connect_lazy(config)?.topic_metadata(&config.dlq_topic, metadata_timeout).await?;
    let consumer: StreamConsumer = base_client_config(config)
        .set("group.id", "rust-app-dlq-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(KafkaError::Config)?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..metadata.partitions as i32 {
        assignment.add_partition_offset(&config.dlq_topic, partition, Offset::Beginning).map_err(KafkaError::Config)?;
    }
    consumer.assign(&assignment).map_err(KafkaError::Config)?;
    let mut at_end = vec![false; metadata.partitions];
    let mut letters = Vec::new();
    while at_end.iter().any(|done| !done) {
        let left = timeout.saturating_sub(started.elapsed());
        let reason = || format!("not read to its end within {timeout:?}");
        let message = tokio::time::timeout(left, consumer.recv())
            .await
            .map_err(|_| KafkaError::Topic { topic: config.dlq_topic.clone(), reason: reason() })?;
        match message {
            Ok(message) => letters.push(DeadLetter { record: Record::from_message(&message) }),
            Err(RdKafkaError::PartitionEOF(partition)) => {
                if let Some(done) = at_end.get_mut(partition as usize) {
                    *done = true;
                }
            }
            Err(err) => return Err(KafkaError::Metadata(err)),
        }
    }
    letters.sort_by_key(|l| (l.record.partition, l.record.offset));
    Ok(letters)
}

/// Publishes `letter` again to its original topic: same key, value and original headers.
pub async fn replay(producer: &KafkaProducer, letter: &DeadLetter) -> Result<Delivered, ProduceError> {
    let topic = letter.original_topic().unwrap_or_default();
    let value = letter.record.value.as_deref().unwrap_or_default();
    producer.produce(&topic, letter.record.key.as_deref(), value, &letter.original_headers()).await
}
