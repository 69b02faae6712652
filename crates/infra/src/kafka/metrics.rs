//! Metrics of the Kafka layer (names documented in docs/metrics.md). Labels are topics and partitions, both
//! bounded by configuration; never keys or offsets.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Metric names.
pub mod names {
    /// Counter: records acknowledged by the broker, by `topic`.
    pub const PRODUCED: &str = "kafka_produced_total";
    /// Counter: records the broker did not acknowledge (timeout, rejection), by `topic`.
    pub const PRODUCE_ERRORS: &str = "kafka_produce_errors_total";
    /// Histogram: from send to delivery report, by `topic`, seconds.
    pub const DELIVERY_DURATION: &str = "kafka_delivery_duration_seconds";
    /// Counter: records handed to the handler, by `topic`.
    pub const CONSUMED: &str = "kafka_consumed_total";
    /// Counter: failed handler attempts, by `topic`.
    pub const HANDLER_FAILURES: &str = "kafka_handler_failures_total";
    /// Counter: records published to the dead-letter topic, by the original `topic`.
    pub const DEAD_LETTERED: &str = "kafka_dead_lettered_total";
    /// Histogram: handling one record, retries included, by `topic` and `outcome` (`ok`, `dead_lettered`),
    /// seconds.
    pub const PROCESSING_DURATION: &str = "kafka_processing_duration_seconds";
    /// Gauge: records not yet processed, by `topic` and `partition`, for every assigned partition.
    pub const CONSUMER_LAG: &str = "kafka_consumer_lag";
    /// Gauge: partitions assigned to this consumer.
    pub const ASSIGNED_PARTITIONS: &str = "kafka_consumer_assigned_partitions";
}

/// Registers the producer's series for `topic` at zero, so dashboards and alerts see them before the first
/// record (a `rate()` over a missing series is empty, not zero).
pub(crate) fn register_producer(topic: &str) {
    counter!(names::PRODUCED, "topic" => topic.to_string()).increment(0);
    counter!(names::PRODUCE_ERRORS, "topic" => topic.to_string()).increment(0);
}

/// Registers the consumer's series for `topic` at zero (see [`register_producer`]).
pub(crate) fn register_consumer(topic: &str) {
    for name in [names::CONSUMED, names::HANDLER_FAILURES, names::DEAD_LETTERED] {
        counter!(name, "topic" => topic.to_string()).increment(0);
    }
    gauge!(names::ASSIGNED_PARTITIONS).set(0.0);
}

pub(crate) fn delivered(topic: &str, elapsed: Duration) {
    counter!(names::PRODUCED, "topic" => topic.to_string()).increment(1);
    histogram!(names::DELIVERY_DURATION, "topic" => topic.to_string()).record(elapsed.as_secs_f64());
}

pub(crate) fn delivery_failed(topic: &str, elapsed: Duration) {
    counter!(names::PRODUCE_ERRORS, "topic" => topic.to_string()).increment(1);
    histogram!(names::DELIVERY_DURATION, "topic" => topic.to_string()).record(elapsed.as_secs_f64());
}

pub(crate) fn consumed(topic: &str) {
    counter!(names::CONSUMED, "topic" => topic.to_string()).increment(1);
}

pub(crate) fn handler_failed(topic: &str) {
    counter!(names::HANDLER_FAILURES, "topic" => topic.to_string()).increment(1);
}

pub(crate) fn processed(topic: &str, elapsed: Duration, dead_lettered: bool) {
    let outcome = if dead_lettered { "dead_lettered" } else { "ok" };
    if dead_lettered {
        counter!(names::DEAD_LETTERED, "topic" => topic.to_string()).increment(1);
    }
    histogram!(names::PROCESSING_DURATION, "topic" => topic.to_string(), "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

pub(crate) fn lag(topic: &str, partition: i32, lag: i64) {
    gauge!(names::CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string()).set(lag as f64);
}

pub(crate) fn assigned(partitions: usize) {
    gauge!(names::ASSIGNED_PARTITIONS).set(partitions as f64);
}
