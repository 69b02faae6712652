//! Metrics of the Redis layer (names documented in docs/metrics.md).

use std::time::Duration;

use metrics::{Gauge, counter, gauge};

use crate::outcome_histograms::OutcomeHistograms;

use crate::resilience::BreakerState;

/// Metric names.
pub mod names {
    /// Histogram: command duration (retries included) by `command` and `outcome`, seconds.
    pub const COMMAND_DURATION: &str = "redis_command_duration_seconds";
    /// Counter: failed commands by `kind` (`unavailable`, `circuit_open`, `command`, `conversion`).
    pub const ERRORS: &str = "redis_errors_total";
    /// Counter: retries of idempotent commands by `command`.
    pub const RETRIES: &str = "redis_retries_total";
    /// Gauge: circuit breaker state (0 closed, 1 half-open, 2 open).
    pub const BREAKER_STATE: &str = "redis_breaker_state";
}

/// The commands this client sends: the `command` label's whole range.
pub(crate) const COMMANDS: [&str; 8] = ["GET", "SET", "DEL", "MGET", "INCRBY", "PEXPIRE", "PING", "EVAL gcra"];

/// The `kind` label's whole range.
const ERROR_KINDS: [&str; 4] = ["unavailable", "circuit_open", "command", "conversion"];

#[derive(Clone)]
pub(crate) struct RedisMetrics {
    breaker: Gauge,
    durations: OutcomeHistograms,
}

impl RedisMetrics {
    pub(crate) fn new() -> Self {
        let durations = OutcomeHistograms::new(names::COMMAND_DURATION, "command", &COMMANDS);
        // Every series at zero from the start: alerts and dashboards see "no errors", not "no data".
        for kind in ERROR_KINDS {
            counter!(names::ERRORS, "kind" => kind).increment(0);
        }
        for command in COMMANDS {
            counter!(names::RETRIES, "command" => command).increment(0);
        }
        RedisMetrics { breaker: gauge!(names::BREAKER_STATE), durations }
    }

    pub(crate) fn done(&self, command: &'static str, elapsed: Duration, error: Option<&'static str>) {
        self.durations.record(command, elapsed, error.is_some());
        if let Some(kind) = error {
            counter!(names::ERRORS, "kind" => kind).increment(1);
        }
    }

    pub(crate) fn retried(&self, command: &'static str) {
        counter!(names::RETRIES, "command" => command).increment(1);
    }

    pub(crate) fn breaker(&self, state: BreakerState) {
        self.breaker.set(state.as_gauge());
    }
}
