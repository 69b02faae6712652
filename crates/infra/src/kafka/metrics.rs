//! Metrics of the Kafka layer (names documented in docs/metrics.md). Labels are topics and partitions, both
//! bounded by configuration; never keys or offsets.

use std::collections::HashMap;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

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
    /// Counter: producers that failed for good (librdkafka's fatal error, e.g. the idempotent producer's
    /// `UnknownProducerId` after a broker lost its state) and were replaced by a new one.
    pub const PRODUCERS_REPLACED: &str = "kafka_producers_replaced_total";
    /// Counter: connection failures librdkafka reported (a broker unreachable, all brokers down, a request
    /// timed out), by `client` (`producer`, `consumer`); logged once per outage, not each time.
    pub const CONNECTION_ERRORS: &str = "kafka_connection_errors_total";
    /// Gauge: 1 while the consumer waits for a dependency its handler reported unavailable, else 0, by `topic`.
    pub const CONSUMER_WAITING: &str = "kafka_consumer_waiting";
}

/// The producer's series. Topics are labels and a producer sends to any topic (the dead-letter topic too),
/// so the series are looked up per record rather than held.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProducerMetrics;

impl ProducerMetrics {
    /// Registers the series for `topic` at zero, so dashboards and alerts see them before the first record
    /// (a `rate()` over a missing series is empty, not zero).
    pub(crate) fn register(&self, topic: &str) {
        counter!(names::PRODUCED, "topic" => topic.to_string()).increment(0);
        counter!(names::PRODUCE_ERRORS, "topic" => topic.to_string()).increment(0);
        counter!(names::PRODUCERS_REPLACED).increment(0);
    }

    pub(crate) fn replaced(&self) {
        counter!(names::PRODUCERS_REPLACED).increment(1);
    }

    pub(crate) fn delivered(&self, topic: &str, elapsed: Duration) {
        counter!(names::PRODUCED, "topic" => topic.to_string()).increment(1);
        histogram!(names::DELIVERY_DURATION, "topic" => topic.to_string()).record(elapsed.as_secs_f64());
    }

    pub(crate) fn delivery_failed(&self, topic: &str, elapsed: Duration) {
        counter!(names::PRODUCE_ERRORS, "topic" => topic.to_string()).increment(1);
        histogram!(names::DELIVERY_DURATION, "topic" => topic.to_string()).record(elapsed.as_secs_f64());
    }
}

/// The consumer's series for its topic, looked up once: a registry look-up per record (label strings built,
/// the map searched) cost more than the rest of the per-record bookkeeping together (measured in
/// benches/kafka.rs). Registered at zero, so dashboards and alerts see them before the first record.
#[derive(Clone)]
pub(crate) struct ConsumerMetrics {
    consumed: Counter,
    handler_failures: Counter,
    dead_lettered: Counter,
    processed_ok: Histogram,
    processed_dead_lettered: Histogram,
}

impl ConsumerMetrics {
    pub(crate) fn new(topic: &str) -> Self {
        let labelled = |name: &'static str| counter!(name, "topic" => topic.to_string());
        let duration = |outcome: &'static str| histogram!(names::PROCESSING_DURATION, "topic" => topic.to_string(), "outcome" => outcome);
        let metrics = ConsumerMetrics {
            consumed: labelled(names::CONSUMED),
            handler_failures: labelled(names::HANDLER_FAILURES),
            dead_lettered: labelled(names::DEAD_LETTERED),
            processed_ok: duration("ok"),
            processed_dead_lettered: duration("dead_lettered"),
        };
        for counter in [&metrics.consumed, &metrics.handler_failures, &metrics.dead_lettered] {
            counter.increment(0);
        }
        gauge!(names::ASSIGNED_PARTITIONS).set(0.0);
        gauge!(names::CONSUMER_WAITING, "topic" => topic.to_string()).set(0.0);
        metrics
    }

    pub(crate) fn consumed(&self) {
        self.consumed.increment(1);
    }

    pub(crate) fn handler_failed(&self) {
        self.handler_failures.increment(1);
    }

    pub(crate) fn processed(&self, elapsed: Duration, dead_lettered: bool) {
        if dead_lettered {
            self.dead_lettered.increment(1);
            self.processed_dead_lettered.record(elapsed.as_secs_f64());
        } else {
            self.processed_ok.record(elapsed.as_secs_f64());
        }
    }
}

/// The consumer state's gauges: partitions assigned, and the lag of each partition of one topic (looked up
/// once per partition).
#[derive(Default)]
pub(crate) struct StateMetrics {
    lag_by_partition: HashMap<i32, Gauge>,
}

impl StateMetrics {
    pub(crate) fn assigned(&self, partitions: usize) {
        gauge!(names::ASSIGNED_PARTITIONS).set(partitions as f64);
    }

    pub(crate) fn waiting(&self, topic: &str, waiting: bool) {
        gauge!(names::CONSUMER_WAITING, "topic" => topic.to_string()).set(if waiting { 1.0 } else { 0.0 });
    }

    pub(crate) fn lag(&mut self, topic: &str, partition: i32, lag: i64) {
        self.lag_by_partition
            .entry(partition)
            .or_insert_with(
                || gauge!(names::CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string()),
            )
            .set(lag as f64);
    }
}
