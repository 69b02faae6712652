//! Duration histograms labelled by one bounded label (an SQL operation, a Redis command) and the outcome,
//! registered up front so recording one is an atomic operation rather than a recorder look-up on a hot path.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Histogram, histogram};

/// One histogram per (label value, outcome `ok` | `error`).
#[derive(Clone)]
pub(crate) struct OutcomeHistograms {
    name: &'static str,
    label: &'static str,
    by_value: Arc<[(&'static str, Histogram, Histogram)]>,
}

impl std::fmt::Debug for OutcomeHistograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutcomeHistograms").field("name", &self.name).finish_non_exhaustive()
    }
}

impl OutcomeHistograms {
    /// Registers `name{label=value, outcome=ok|error}` for every value in `values`.
    pub(crate) fn new(name: &'static str, label: &'static str, values: &[&'static str]) -> Self {
        let by_value = values
            .iter()
            .map(|&value| {
                let ok = histogram!(name, label => value, "outcome" => "ok");
                let error = histogram!(name, label => value, "outcome" => "error");
                (value, ok, error)
            })
            .collect();
        OutcomeHistograms { name, label, by_value }
    }

    /// Records `elapsed` under `value` (registered on the fly if it was not listed up front).
    pub(crate) fn record(&self, value: &'static str, elapsed: Duration, failed: bool) {
        let seconds = elapsed.as_secs_f64();
        match self.by_value.iter().find(|(v, _, _)| *v == value) {
            Some((_, ok, error)) => if failed { error } else { ok }.record(seconds),
            None => {
                let outcome = if failed { "error" } else { "ok" };
                histogram!(self.name, self.label => value, "outcome" => outcome).record(seconds);
            }
        }
    }
}
