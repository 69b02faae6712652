//! A circuit breaker: stops calling a dependency that keeps failing, so callers fail in microseconds instead of
//! each waiting for a timeout, and the dependency gets room to recover.
//!
//! Written here rather than taken from a crate: the maintained options either lack a half-open probe limit or a
//! failure-rate window, and the state machine is small enough to test exhaustively with a fake clock (the way
//! Resilience4j tests its own).
//!
//! States: **closed** (calls pass; outcomes are counted) → **open** after `consecutive_failures` failures in a
//! row, or when the failure rate over the last `window` calls reaches `failure_rate` (once at least
//! `min_calls` were made) → after `open_for`, **half-open**: up to `half_open_probes` calls pass; if they all
//! succeed the breaker closes, the first failure opens it again.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{Gauge, gauge};
use serde::Serialize;

use super::clock::{Clock, SystemClock};
use crate::config::{Reader, Unit};

/// When the breaker opens and how it recovers.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Open after this many failures in a row (0 disables this rule).
    pub consecutive_failures: u32,
    /// Open when the share of failures over the window reaches this (0.0 disables this rule).
    pub failure_rate: f64,
    /// How many recent calls the failure rate is computed over.
    pub window: u32,
    /// The failure rate applies only once the window holds at least this many calls.
    pub min_calls: u32,
    /// How long the breaker stays open before letting probes through.
    pub open_for: Duration,
    /// Calls let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: 20,
            min_calls: 10,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

/// The variables of one dependency's breaker (`{PREFIX}_BREAKER_FAILURES`...): every dependency with a breaker
/// names them alike, so an operator who tuned one knows the others.
#[derive(Clone, Copy, Debug)]
pub struct BreakerVariables {
    /// Failures in a row that open the breaker.
    pub failures: &'static str,
    /// Percentage of failures over the window that opens it.
    pub failure_rate: &'static str,
    /// Size of the sliding window.
    pub window: &'static str,
    /// Calls the window must hold before the rate applies.
    pub min_calls: &'static str,
    /// How long it stays open.
    pub cooldown: &'static str,
    /// Calls let through while half-open.
    pub probes: &'static str,
}

impl BreakerConfig {
    /// Reads a breaker's settings from `variables`, each defaulting to the value in `defaults`.
    pub fn read(r: &mut Reader<'_>, variables: &BreakerVariables, defaults: &BreakerConfig) -> Self {
        let default_rate = (defaults.failure_rate * 100.0).round() as u32;
        let rate_percent: u32 = r.int(variables.failure_rate, default_rate, 0, 100);
        BreakerConfig {
            consecutive_failures: r.int(variables.failures, defaults.consecutive_failures, 0, 1000),
            failure_rate: f64::from(rate_percent) / 100.0,
            window: r.int(variables.window, defaults.window, 1, 10_000),
            min_calls: r.int(variables.min_calls, defaults.min_calls, 1, 10_000),
            open_for: r.duration(variables.cooldown, defaults.open_for, Unit::Seconds, false),
            half_open_probes: r.int(variables.probes, defaults.half_open_probes, 1, 1000),
        }
    }
}

/// The breaker's state, as shown in health details and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused.
    Open,
    /// A few probe calls pass.
    HalfOpen,
}

impl BreakerState {
    /// Every state, in the order of the metric's series.
    pub const ALL: [BreakerState; 3] = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen];

    /// The `state` label (and health detail): `closed`, `open` or `half_open`.
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Metric names of the breakers (described in `crate::telemetry::catalog`, documented in docs/metrics.md).
pub mod names {
    /// Gauge: one series per breaker `name` and `state`, 1 for the state the breaker is in and 0 for the others.
    pub const BREAKER_STATE: &str = "circuit_breaker_state";
}

/// The breaker's state as one gauge per state (1 for the current one): `max by (name) (circuit_breaker_state{state=
/// "open"})` needs no knowledge of a numeric encoding, and a dashboard can stack them.
struct StateGauges([(BreakerState, Gauge); 3]);

impl StateGauges {
    fn new(name: &'static str) -> Self {
        let gauges = BreakerState::ALL
            .map(|state| (state, gauge!(names::BREAKER_STATE, "name" => name, "state" => state.label())));
        let gauges = StateGauges(gauges);
        gauges.show(BreakerState::Closed);
        gauges
    }

    fn show(&self, current: BreakerState) {
        for (state, gauge) in &self.0 {
            gauge.set(if *state == current { 1.0 } else { 0.0 });
        }
    }
}

/// A call refused because the breaker is open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {name} is open; next attempt in {}ms", retry_in.as_millis())]
pub struct CircuitOpen {
    /// The breaker's name.
    pub name: &'static str,
    /// How long until probes are let through.
    pub retry_in: Duration,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

impl Phase {
    fn state(&self) -> BreakerState {
        match self {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Bumped on every transition: outcomes of calls admitted in an earlier phase are ignored.
    generation: u64,
    consecutive: u32,
    /// Recent outcomes, `true` for a failure.
    window: VecDeque<bool>,
}

/// A circuit breaker. Share it with `Arc`.
pub struct CircuitBreaker {
    name: &'static str,
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    gauges: StateGauges,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker").field("name", &self.name).field("state", &self.state()).finish()
    }
}

/// Admission of one call. Report its outcome with [`Permit::success`] or [`Permit::failure`]; a permit dropped
/// without either (a cancelled call) counts as neither.
#[must_use = "report the call's outcome"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    /// Whether this call is a half-open probe: callers may check the dependency cheaply first.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded.
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.record(self.generation, Outcome::Success);
    }

    /// The call failed in a way that says the dependency is unhealthy.
    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.record(self.generation, Outcome::Failure);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.record(self.generation, Outcome::Cancelled);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Cancelled,
}

impl CircuitBreaker {
    /// A breaker on the system clock.
    pub fn new(name: &'static str, config: BreakerConfig) -> Self {
        Self::with_clock(name, config, Arc::new(SystemClock))
    }

    /// A breaker on the given clock (tests pass a [`super::FakeClock`]).
    pub fn with_clock(name: &'static str, config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let inner = Inner { phase: Phase::Closed, generation: 0, consecutive: 0, window: VecDeque::new() };
        CircuitBreaker { name, config, clock, inner: Mutex::new(inner), gauges: StateGauges::new(name) }
    }

    /// The breaker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Admits a call, or refuses it at once when open.
    pub fn acquire(&self) -> Result<Permit<'_>, CircuitOpen> {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.expire_open(&mut inner, now);
        let mut probe = false;
        match &mut inner.phase {
            Phase::Closed => {}
            Phase::Open { until } => {
                return Err(CircuitOpen { name: self.name, retry_in: until.saturating_duration_since(now) });
            }
            Phase::HalfOpen { admitted, .. } => {
                if *admitted >= self.config.half_open_probes.max(1) {
                    return Err(CircuitOpen { name: self.name, retry_in: Duration::ZERO });
                }
                *admitted += 1;
                probe = true;
            }
        }
        Ok(Permit { breaker: self, generation: inner.generation, probe, reported: false })
    }

    /// The current state (an open breaker whose cool-down has passed reports half-open).
    pub fn state(&self) -> BreakerState {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.expire_open(&mut inner, now);
        inner.phase.state()
    }

    fn record(&self, generation: u64, outcome: Outcome) {
        let now = self.clock.now();
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        match (&mut inner.phase, outcome) {
            (Phase::Closed, Outcome::Cancelled) | (Phase::Open { .. }, _) => {}
            (Phase::Closed, outcome) => {
                let failed = outcome == Outcome::Failure;
                inner.consecutive = if failed { inner.consecutive + 1 } else { 0 };
                inner.window.push_back(failed);
                while inner.window.len() > self.config.window.max(1) as usize {
                    inner.window.pop_front();
                }
                if failed && self.should_open(&inner) {
                    self.transition(&mut inner, Phase::Open { until: now + self.config.open_for });
                }
            }
            (Phase::HalfOpen { admitted, .. }, Outcome::Cancelled) => *admitted = admitted.saturating_sub(1),
            (Phase::HalfOpen { .. }, Outcome::Failure) => {
                self.transition(&mut inner, Phase::Open { until: now + self.config.open_for });
            }
            (Phase::HalfOpen { succeeded, .. }, Outcome::Success) => {
                *succeeded += 1;
                if *succeeded >= self.config.half_open_probes.max(1) {
                    self.transition(&mut inner, Phase::Closed);
                }
            }
        }
    }

    fn should_open(&self, inner: &Inner) -> bool {
        let by_streak = self.config.consecutive_failures > 0 && inner.consecutive >= self.config.consecutive_failures;
        let calls = inner.window.len();
        let failures = inner.window.iter().filter(|failed| **failed).count();
        let by_rate = self.config.failure_rate > 0.0
            && calls >= self.config.min_calls.max(1) as usize
            && failures as f64 / calls as f64 >= self.config.failure_rate;
        by_streak || by_rate
    }

    fn expire_open(&self, inner: &mut Inner, now: Instant) {
        if let Phase::Open { until } = inner.phase
            && now >= until
        {
            self.transition(inner, Phase::HalfOpen { admitted: 0, succeeded: 0 });
        }
    }

    fn transition(&self, inner: &mut Inner, to: Phase) {
        // An outage logs one WARN (opened) and one INFO (closed); the probes in between, each failed one
        // re-opening the breaker, are at DEBUG (the state gauge shows them).
        match (&inner.phase, &to) {
            (Phase::Closed, Phase::Open { .. }) => tracing::warn!(breaker = self.name, "circuit breaker opened"),
            (_, Phase::Open { .. }) => tracing::debug!(breaker = self.name, "circuit breaker re-opened: probe failed"),
            (_, Phase::HalfOpen { .. }) => tracing::debug!(breaker = self.name, "circuit breaker half-open: probing"),
            (_, Phase::Closed) => tracing::info!(breaker = self.name, "circuit breaker closed"),
        }
        self.gauges.show(to.state());
        inner.phase = to;
        inner.generation += 1;
        inner.consecutive = 0;
        inner.window.clear();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent at every await-free step, so a panic elsewhere cannot corrupt it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::clock::FakeClock;

    fn breaker(config: BreakerConfig) -> (CircuitBreaker, Arc<FakeClock>) {
        let clock = Arc::new(FakeClock::default());
        (CircuitBreaker::with_clock("test", config, clock.clone()), clock)
    }

    fn streak_only(n: u32) -> BreakerConfig {
        BreakerConfig { consecutive_failures: n, failure_rate: 0.0, ..BreakerConfig::default() }
    }

    fn fail(b: &CircuitBreaker, times: usize) {
        for _ in 0..times {
            b.acquire().expect("admitted").failure();
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses_at_once() {
        let (b, _) = breaker(streak_only(3));
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        let refused = b.acquire().err().expect("refused");
        assert_eq!(refused.retry_in, Duration::from_secs(5));
    }

    #[test]
    fn a_success_resets_the_streak() {
        let (b, _) = breaker(streak_only(3));
        assert!(!b.acquire().expect("admitted").is_probe(), "closed: not a probe");
        fail(&b, 2);
        b.acquire().expect("admitted").success();
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn opens_on_failure_rate_once_the_window_has_enough_calls() {
        let config = BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 0.5,
            window: 10,
            min_calls: 6,
            ..BreakerConfig::default()
        };
        let (b, _) = breaker(config);
        // Alternate: 50 % failures, but never two in a row.
        for i in 0..5 {
            let permit = b.acquire().expect("admitted");
            if i % 2 == 0 { permit.failure() } else { permit.success() }
        }
        assert_eq!(b.state(), BreakerState::Closed, "5 calls < min_calls");
        b.acquire().expect("admitted").success();
        assert_eq!(b.state(), BreakerState::Closed, "3 of 6 failed, but the last call succeeded");
        b.acquire().expect("admitted").failure();
        assert_eq!(b.state(), BreakerState::Open, "4 of 7 failed");
    }

    #[test]
    fn old_outcomes_slide_out_of_the_window() {
        let config = BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 0.5,
            window: 4,
            min_calls: 4,
            ..BreakerConfig::default()
        };
        let (b, _) = breaker(config);
        fail(&b, 1);
        for _ in 0..4 {
            b.acquire().expect("admitted").success();
        }
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Closed, "window is [ok, ok, ok, fail]: 25 %");
    }

    #[test]
    fn half_opens_after_the_cool_down_and_closes_when_probes_succeed() {
        let config = BreakerConfig { half_open_probes: 2, ..streak_only(1) };
        let (b, clock) = breaker(config);
        fail(&b, 1);
        clock.advance(Duration::from_millis(4999));
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let first = b.acquire().expect("probe 1");
        assert!(first.is_probe());
        let second = b.acquire().expect("probe 2");
        assert!(b.acquire().is_err(), "only two probes at a time");
        first.success();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        second.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_again_for_a_full_cool_down() {
        let (b, clock) = breaker(streak_only(1));
        fail(&b, 1);
        clock.advance(Duration::from_secs(5));
        b.acquire().expect("probe").failure();
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(4));
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn a_cancelled_probe_frees_its_slot() {
        let (b, clock) = breaker(streak_only(1));
        fail(&b, 1);
        clock.advance(Duration::from_secs(5));
        drop(b.acquire().expect("probe"));
        b.acquire().expect("slot freed").success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn outcomes_from_before_a_transition_are_ignored() {
        let (b, clock) = breaker(streak_only(1));
        let slow = b.acquire().expect("admitted while closed");
        fail(&b, 1);
        clock.advance(Duration::from_secs(5));
        let probe = b.acquire().expect("probe");
        slow.success(); // a stale success must not close the breaker
        assert_eq!(b.state(), BreakerState::HalfOpen);
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn its_state_is_one_gauge_per_state_set_to_one_for_the_current_state() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let (b, clock) = metrics::with_local_recorder(&recorder, || breaker(streak_only(2)));
        let current = || {
            let mut ones: Vec<String> = snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .filter(|(key, _, _, value)| {
                    key.key().name() == names::BREAKER_STATE && *value == DebugValue::Gauge(1.0.into())
                })
                .filter_map(|(key, _, _, _)| {
                    key.key().labels().find(|l| l.key() == "state").map(|l| l.value().to_string())
                })
                .collect();
            ones.sort();
            ones
        };
        assert_eq!(current(), ["closed"]);
        fail(&b, 2);
        assert_eq!(current(), ["open"]);
        clock.advance(BreakerConfig::default().open_for);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(current(), ["half_open"]);
        b.acquire().expect("probe").success();
        assert_eq!(current(), ["closed"]);
        assert_eq!(snapshotter.snapshot().into_vec().len(), 3, "one series per state");
    }
}
