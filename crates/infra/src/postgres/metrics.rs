//! Metrics of the PostgreSQL layer, recorded through the `metrics` facade (exported by whatever recorder the
//! process installs; nothing is recorded when none is).

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::outcome_histograms::OutcomeHistograms;

/// Metric names, documented in docs/metrics.md.
pub mod names {
    /// Gauge: pool connections by `state` (`idle`, `in_use`).
    pub const POOL_CONNECTIONS: &str = "postgres_pool_connections";
    /// Gauge: the pool's maximum size.
    pub const POOL_MAX: &str = "postgres_pool_max_connections";
    /// Gauge: callers waiting for a connection.
    pub const POOL_WAITING: &str = "postgres_pool_waiting";
    /// Histogram: time to get a connection from the pool, seconds.
    pub const ACQUIRE_DURATION: &str = "postgres_pool_acquire_duration_seconds";
    /// Histogram: statement duration by `operation` and `outcome` (`ok`, `error`), seconds.
    pub const QUERY_DURATION: &str = "postgres_query_duration_seconds";
    /// Counter: errors by `class` (SQLSTATE class or failure kind).
    pub const ERRORS: &str = "postgres_errors_total";
    /// Counter: transaction attempts retried after a serialization failure or deadlock.
    pub const TRANSACTION_RETRIES: &str = "postgres_transaction_retries_total";
}

/// Handles registered once per client, so the hot path does no registry look-up.
#[derive(Clone)]
pub(crate) struct PoolMetrics {
    idle: Gauge,
    in_use: Gauge,
    pub(crate) waiting: Gauge,
    acquire: Histogram,
    pub(crate) retries: Counter,
}

impl PoolMetrics {
    pub(crate) fn new(max: u32) -> Self {
        gauge!(names::POOL_MAX).set(f64::from(max));
        PoolMetrics {
            idle: gauge!(names::POOL_CONNECTIONS, "state" => "idle"),
            in_use: gauge!(names::POOL_CONNECTIONS, "state" => "in_use"),
            waiting: gauge!(names::POOL_WAITING),
            acquire: histogram!(names::ACQUIRE_DURATION),
            retries: counter!(names::TRANSACTION_RETRIES),
        }
    }

    pub(crate) fn pool_state(&self, size: u32, idle: usize) {
        let idle = idle as f64;
        self.idle.set(idle);
        self.in_use.set((f64::from(size) - idle).max(0.0));
    }

    pub(crate) fn acquired(&self, waited: Duration) {
        self.acquire.record(waited.as_secs_f64());
    }
}

/// Statement durations by (operation, outcome) and errors by class.
#[derive(Clone, Debug)]
pub(crate) struct StatementMetrics {
    durations: OutcomeHistograms,
}

impl StatementMetrics {
    pub(crate) fn new() -> Self {
        let operations = &crate::postgres::statement::OPERATIONS;
        // The failure kinds at zero from the start (SQLSTATE classes appear when they happen).
        for class in ["unavailable", "pool_exhausted"] {
            counter!(names::ERRORS, "class" => class).increment(0);
        }
        StatementMetrics { durations: OutcomeHistograms::new(names::QUERY_DURATION, "operation", operations) }
    }

    /// Records one statement's duration and, on failure, its error class.
    pub(crate) fn done(&self, operation: &'static str, elapsed: Duration, error_class: Option<&'static str>) {
        self.durations.record(operation, elapsed, error_class.is_some());
        if let Some(class) = error_class {
            counter!(names::ERRORS, "class" => class).increment(1);
        }
    }
}
