//! Metrics of the Redis layer (names documented in docs/metrics.md).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, counter, histogram};

use crate::outcome_histograms::OutcomeHistograms;

/// Metric names of the whole Redis layer: commands, cache and rate limiter.
pub mod names {
    /// Histogram: command duration (retries included) by `command` and `outcome`, seconds.
    pub const COMMAND_DURATION: &str = "redis_command_duration_seconds";
    /// Counter: failed commands by `kind` (`unavailable`, `circuit_open`, `command`, `conversion`).
    pub const ERRORS: &str = "redis_errors_total";
    /// Counter: retries of idempotent commands by `command`.
    pub const RETRIES: &str = "redis_retries_total";
    /// Counter: cache lookups by `result` = `hit` | `miss` | `error` | `bypass`.
    pub const CACHE_LOOKUPS: &str = "redis_cache_lookups_total";
    /// Histogram: `get_or_load` duration by `result`, seconds (a miss includes the loader).
    pub const CACHE_DURATION: &str = "redis_cache_duration_seconds";
    /// Counter: rate-limit decisions by `decision` = `allowed` | `limited` | `fail_open` | `fail_closed`.
    pub const RATE_LIMIT_DECISIONS: &str = "redis_rate_limit_decisions_total";
    /// Counter: client-side cache lookups (process memory) by `result` = `hit` | `miss`.
    pub const CLIENT_CACHE_LOOKUPS: &str = "redis_client_cache_lookups_total";
    /// Counter: keys dropped from the client-side cache because Redis said they changed.
    pub const CLIENT_CACHE_INVALIDATIONS: &str = "redis_client_cache_invalidations_total";
    /// Counter: times the whole client-side cache was emptied (tracking lost or restarted, FLUSHDB).
    pub const CLIENT_CACHE_FLUSHES: &str = "redis_client_cache_flushes_total";
    /// Gauge: 1 while Redis tracks the client-side cache's keys (values served from memory), else 0.
    pub const CLIENT_CACHE_TRACKING: &str = "redis_client_cache_tracking";
    /// Gauge: entries in the client-side cache.
    pub const CLIENT_CACHE_ENTRIES: &str = "redis_client_cache_entries";
}

/// The commands this client sends: the `command` label's whole range.
pub(crate) const COMMANDS: [&str; 11] = [
    "GET",
    "SET",
    "DEL",
    "MGET",
    "INCRBY",
    "PEXPIRE",
    "PING",
    "EVAL gcra",
    "EVAL cache_ticket",
    "EVAL cache_fill",
    "EVAL session_load",
];

/// The `kind` label's whole range.
const ERROR_KINDS: [&str; 4] = ["unavailable", "circuit_open", "command", "conversion"];

#[derive(Clone)]
pub(crate) struct RedisMetrics {
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
        RedisMetrics { durations }
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
}

/// A counter with one label of a fixed range of values, every series registered at zero so alerts and
/// dashboards see "none yet", not "no data".
/// The handles are taken once: an increment is an atomic add, not a registry look-up.
#[derive(Clone)]
pub(crate) struct LabelledCounter {
    name: &'static str,
    label: &'static str,
    series: Arc<[(&'static str, Counter)]>,
}

impl std::fmt::Debug for LabelledCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelledCounter").field("name", &self.name).finish_non_exhaustive()
    }
}

impl LabelledCounter {
    pub(crate) fn new(name: &'static str, label: &'static str, values: &[&'static str]) -> Self {
        let series: Arc<[(&'static str, Counter)]> = values
            .iter()
            .map(|value| {
                let counter = counter!(name, label => *value);
                counter.increment(0);
                (*value, counter)
            })
            .collect();
        LabelledCounter { name, label, series }
    }

    pub(crate) fn increment(&self, value: &'static str) {
        match self.series.iter().find(|(known, _)| *known == value) {
            Some((_, counter)) => counter.increment(1),
            None => counter!(self.name, self.label => value).increment(1),
        }
    }
}

/// The cache's lookups and durations by `result`, handles taken once.
#[derive(Clone, Debug)]
pub(crate) struct CacheMetrics {
    lookups: LabelledCounter,
    durations: Arc<[(&'static str, metrics::Histogram)]>,
}

impl CacheMetrics {
    const RESULTS: [&'static str; 4] = ["hit", "miss", "error", "bypass"];

    pub(crate) fn new() -> Self {
        let durations = Self::RESULTS
            .iter()
            .map(|result| (*result, histogram!(names::CACHE_DURATION, "result" => *result)))
            .collect();
        CacheMetrics { lookups: LabelledCounter::new(names::CACHE_LOOKUPS, "result", &Self::RESULTS), durations }
    }

    /// A hit served from process memory: counted, not timed (timing it would cost about as much as the hit).
    pub(crate) fn hit_in_memory(&self) {
        self.lookups.increment("hit");
    }

    pub(crate) fn looked_up(&self, result: &'static str, elapsed: Duration) {
        self.lookups.increment(result);
        match self.durations.iter().find(|(known, _)| *known == result) {
            Some((_, histogram)) => histogram.record(elapsed.as_secs_f64()),
            None => histogram!(names::CACHE_DURATION, "result" => result).record(elapsed.as_secs_f64()),
        }
    }
}

/// The rate limiter's decisions by `decision`, one handle per value registered once: counting a decision is
/// an atomic add, no look-up in the recorder's registry per request.
#[derive(Clone)]
pub(crate) struct DecisionCounters {
    allowed: Counter,
    limited: Counter,
    fail_open: Counter,
    fail_closed: Counter,
}

impl DecisionCounters {
    pub(crate) fn new() -> Self {
        let series = |decision: &'static str| {
            let counter = counter!(names::RATE_LIMIT_DECISIONS, "decision" => decision);
            // At zero from the start: alerts and dashboards see "none yet", not "no data".
            counter.increment(0);
            counter
        };
        DecisionCounters {
            allowed: series("allowed"),
            limited: series("limited"),
            fail_open: series("fail_open"),
            fail_closed: series("fail_closed"),
        }
    }

    /// A decision Redis made (or a lease of its answered locally).
    pub(crate) fn decided(&self, allowed: bool) {
        if allowed { &self.allowed } else { &self.limited }.increment(1);
    }

    /// A decision the `WhenUnavailable` policy made.
    pub(crate) fn unavailable(&self, allowed: bool) {
        if allowed { &self.fail_open } else { &self.fail_closed }.increment(1);
    }
}

impl fmt::Debug for DecisionCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DecisionCounters")
    }
}
