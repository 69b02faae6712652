//! Record headers this layer adds: where a dead-lettered record came from and why.

use super::consumer::Record;

/// Header names on dead-lettered records.
pub mod dlq {
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
    /// Every header this layer adds (replay strips them).
    pub const ALL: [&str; 6] =
        [ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, ORIGINAL_TIMESTAMP, ERROR, ATTEMPTS];
}

/// The headers added to a dead-lettered copy of `record`.
pub(crate) fn dead_letter_headers(record: &Record, error: &str, attempts: u32) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (dlq::ORIGINAL_TOPIC, record.topic.clone()),
        (dlq::ORIGINAL_PARTITION, record.partition.to_string()),
        (dlq::ORIGINAL_OFFSET, record.offset.to_string()),
        (dlq::ERROR, error.to_string()),
        (dlq::ATTEMPTS, attempts.to_string()),
    ];
    if let Some(timestamp) = record.timestamp {
        headers.push((dlq::ORIGINAL_TIMESTAMP, timestamp.to_string()));
    }
    headers
}
