//! What `/metrics` says of every metric the infra crate registers: its type, unit and `# HELP` text, in one
//! table ([`INFRA_METRICS`]) described to the recorder when it is installed ([`super::prometheus::install`]).
//!
//! **Adding a metric to infra**: its name goes in its module's `names`, its [`Description`] in
//! [`INFRA_METRICS`] below, and a line in docs/metrics.md. The service's own metrics have the same kind of
//! table in `app::metric_catalog`. The service's `/metrics` test fails for any series without HELP, and a unit
//! test checks every table against the naming rules (`_total` counters, `_seconds`/`_bytes` units) and the docs.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

use crate::kafka::metrics::names as kafka;
use crate::postgres::metrics::names as postgres;
use crate::redis::metrics::names as redis;
use crate::resilience::names as resilience;
use crate::supervisor::names as supervisor;

/// The Prometheus type of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts at 0 with the process); named `*_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count of observations.
    Histogram,
}

/// One metric's `# TYPE`, unit and `# HELP` line.
#[derive(Clone, Copy, Debug)]
pub struct Description {
    /// The metric's name, units in it (`_seconds`, `_bytes`) and `_total` for counters.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The unit of its values (`Unit::Count` for plain numbers).
    pub unit: Unit,
    /// One sentence for `# HELP`: what is counted or measured. Labels and advice live in docs/metrics.md.
    pub help: &'static str,
}

impl Description {
    /// A counter.
    pub const fn counter(name: &'static str, unit: Unit, help: &'static str) -> Self {
        Description { name, kind: Kind::Counter, unit, help }
    }

    /// A gauge.
    pub const fn gauge(name: &'static str, unit: Unit, help: &'static str) -> Self {
        Description { name, kind: Kind::Gauge, unit, help }
    }

    /// A histogram.
    pub const fn histogram(name: &'static str, unit: Unit, help: &'static str) -> Self {
        Description { name, kind: Kind::Histogram, unit, help }
    }
}

/// Hands every description to the installed recorder (the first description of a name wins). Without a
/// recorder it does nothing.
pub fn describe(descriptions: &[Description]) {
    for description in descriptions {
        let Description { name, unit, help, .. } = *description;
        match description.kind {
            Kind::Counter => describe_counter!(name, unit, help),
            Kind::Gauge => describe_gauge!(name, unit, help),
            Kind::Histogram => describe_histogram!(name, unit, help),
        }
    }
}

/// Every metric of the infra crate: PostgreSQL, Redis, Kafka and the circuit breakers.
pub const INFRA_METRICS: &[Description] = &[
    // PostgreSQL (`infra::postgres`)
    Description::gauge(postgres::POOL_CONNECTIONS, Unit::Count, "PostgreSQL pool connections by state (idle, in_use)."),
    Description::gauge(
        postgres::POOL_MAX,
        Unit::Count,
        "Largest size of the PostgreSQL pool (POSTGRES_MAX_OPEN_CONNS).",
    ),
    Description::gauge(postgres::POOL_WAITING, Unit::Count, "Callers waiting for a PostgreSQL connection right now."),
    Description::histogram(
        postgres::ACQUIRE_DURATION,
        Unit::Seconds,
        "Time to get a PostgreSQL connection from the pool, opening one included.",
    ),
    Description::histogram(
        postgres::QUERY_DURATION,
        Unit::Seconds,
        "PostgreSQL statement duration by operation and outcome, acquisition included.",
    ),
    Description::counter(
        postgres::ERRORS,
        Unit::Count,
        "Failed PostgreSQL statements by SQLSTATE class or failure kind.",
    ),
    Description::counter(
        postgres::TRANSACTION_RETRIES,
        Unit::Count,
        "PostgreSQL transactions retried after a serialization failure or deadlock.",
    ),
    // Redis (`infra::redis`)
    Description::histogram(
        redis::COMMAND_DURATION,
        Unit::Seconds,
        "Redis command duration by command and outcome, retries included.",
    ),
    Description::counter(redis::ERRORS, Unit::Count, "Failed Redis commands by kind."),
    Description::counter(redis::RETRIES, Unit::Count, "Retries of idempotent Redis commands after a connection error."),
    Description::counter(redis::CACHE_LOOKUPS, Unit::Count, "Cache lookups by result (hit, miss, error, bypass)."),
    Description::histogram(
        redis::CACHE_DURATION,
        Unit::Seconds,
        "Duration of cache lookups that reached Redis, by result; a miss includes loading the value.",
    ),
    Description::counter(
        redis::RATE_LIMIT_DECISIONS,
        Unit::Count,
        "Rate limiter decisions (allowed, limited, fail_open, fail_closed).",
    ),
    Description::counter(
        redis::CLIENT_CACHE_LOOKUPS,
        Unit::Count,
        "Lookups in the Redis client-side cache (process memory) by result (hit, miss).",
    ),
    Description::counter(
        redis::CLIENT_CACHE_INVALIDATIONS,
        Unit::Count,
        "Keys dropped from the client-side cache because Redis reported them changed.",
    ),
    Description::counter(
        redis::CLIENT_CACHE_FLUSHES,
        Unit::Count,
        "Times the whole client-side cache was emptied (tracking lost or restarted, database flushed).",
    ),
    Description::gauge(
        redis::CLIENT_CACHE_TRACKING,
        Unit::Count,
        "1 while Redis tracks the client-side cache's keys and hits are served from memory, else 0.",
    ),
    Description::gauge(redis::CLIENT_CACHE_ENTRIES, Unit::Count, "Entries in the Redis client-side cache."),
    // Kafka (`infra::kafka`)
    Description::counter(kafka::PRODUCED, Unit::Count, "Kafka records acknowledged by the brokers, by topic."),
    Description::counter(
        kafka::PRODUCE_ERRORS,
        Unit::Count,
        "Kafka records not acknowledged (timeout or rejection), by topic.",
    ),
    Description::histogram(
        kafka::DELIVERY_DURATION,
        Unit::Seconds,
        "Time from sending a Kafka record to its delivery report, by topic.",
    ),
    Description::counter(kafka::CONSUMED, Unit::Count, "Kafka records handed to the handler, by topic."),
    Description::counter(
        kafka::HANDLER_FAILURES,
        Unit::Count,
        "Failed Kafka handler attempts (each retry counts), by topic.",
    ),
    Description::counter(
        kafka::DEAD_LETTERED,
        Unit::Count,
        "Kafka records published to the dead-letter topic, by original topic.",
    ),
    Description::histogram(
        kafka::PROCESSING_DURATION,
        Unit::Seconds,
        "Time to handle one Kafka record, retries and backoff included, by topic and outcome.",
    ),
    Description::gauge(
        kafka::CONSUMER_LAG,
        Unit::Count,
        "Kafka records not yet handled, by topic and assigned partition.",
    ),
    Description::gauge(kafka::ASSIGNED_PARTITIONS, Unit::Count, "Kafka partitions assigned to this consumer."),
    Description::counter(
        kafka::PRODUCERS_REPLACED,
        Unit::Count,
        "Kafka producers that failed for good or whose id the brokers forgot, replaced by a new one.",
    ),
    Description::counter(
        kafka::CONNECTION_ERRORS,
        Unit::Count,
        "Connection failures librdkafka reported (broker unreachable, all brokers down, request timed out).",
    ),
    Description::gauge(
        kafka::CONSUMER_WAITING,
        Unit::Count,
        "1 while the consumer waits for a dependency its handler reported unavailable, else 0.",
    ),
    // Background tasks (`infra::supervisor`)
    Description::counter(
        supervisor::RESTARTS,
        Unit::Count,
        "Restarts of a background task that ended or panicked before shutdown.",
    ),
    // Resilience (`infra::resilience`)
    Description::gauge(
        resilience::BREAKER_STATE,
        Unit::Count,
        "Circuit breaker state: 1 for the state each breaker (name) is in, 0 for the others.",
    ),
];
