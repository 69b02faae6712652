//! Metrics of the outbox relay (documented in docs/metrics.md). No labels: one service has one outbox and one
//! event topic, and Kafka's own per-topic series (`kafka_produced_total`, `kafka_delivery_duration_seconds`)
//! already measure the sends themselves.

use metrics::{Counter, Gauge, counter, gauge};

/// Metric names, so tests and dashboards refer to the same strings as the code.
pub mod names {
    /// Gauge: events written to the outbox and not yet acknowledged by Kafka.
    pub const PENDING: &str = "outbox_pending_events";
    /// Gauge: age of the oldest pending event in seconds (0 when none is pending).
    pub const OLDEST_PENDING_AGE: &str = "outbox_oldest_pending_age_seconds";
    /// Counter: events acknowledged by Kafka.
    pub const PUBLISHED: &str = "outbox_published_total";
    /// Counter: sends of an event that Kafka did not acknowledge (each retry counts).
    pub const PUBLISH_FAILURES: &str = "outbox_publish_failures_total";
    /// Counter: sent events deleted after OUTBOX_RETENTION.
    pub const PRUNED: &str = "outbox_pruned_total";
    /// Gauge: events parked after OUTBOX_MAX_ATTEMPTS rejections, waiting for an operator.
    pub const PARKED: &str = "outbox_parked_events";
    /// Counter: events parked (each once, when parked).
    pub const PARKED_TOTAL: &str = "outbox_parked_total";
}

/// The relay's series, looked up once. Registered at zero when built, so dashboards and alerts see "none"
/// rather than "no data" before the first event.
#[derive(Clone)]
pub(crate) struct OutboxMetrics {
    pub(crate) published: Counter,
    pub(crate) publish_failures: Counter,
    pub(crate) pruned: Counter,
    pub(crate) parked: Counter,
    pub(crate) parked_now: Gauge,
    pub(crate) pending: Gauge,
    pub(crate) oldest_pending_age: Gauge,
}

impl OutboxMetrics {
    pub(crate) fn new() -> Self {
        let metrics = OutboxMetrics {
            published: counter!(names::PUBLISHED),
            publish_failures: counter!(names::PUBLISH_FAILURES),
            pruned: counter!(names::PRUNED),
            parked: counter!(names::PARKED_TOTAL),
            parked_now: gauge!(names::PARKED),
            pending: gauge!(names::PENDING),
            oldest_pending_age: gauge!(names::OLDEST_PENDING_AGE),
        };
        for counter in [&metrics.published, &metrics.publish_failures, &metrics.pruned, &metrics.parked] {
            counter.increment(0);
        }
        metrics.pending.set(0.0);
        metrics.parked_now.set(0.0);
        metrics.oldest_pending_age.set(0.0);
        metrics
    }
}
