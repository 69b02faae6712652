//! The process-wide metrics recorder, rendering the Prometheus text format for `/metrics`.
//!
//! Every layer records through the `metrics` facade; this recorder is what makes those records visible.
//! Histograms get explicit buckets (without them the exporter renders summaries, which cannot be aggregated
//! across instances).

use std::sync::Mutex;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::error::TelemetryError;

/// Buckets of every `*_duration_seconds` histogram: 0.5 ms to 10 s, roughly ×2.5 apart — fine where cache
/// and query latencies live, coarse where only "slow" matters.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder as the global `metrics` recorder, once per process, describes the infra
/// crate's metrics to it ([`super::catalog::INFRA_METRICS`]) and returns the handle that renders it. Later calls
/// return the same handle (tests start several services in one process).
///
/// Install it before building the clients: they register their metrics when they are built.
pub fn install() -> Result<PrometheusHandle, TelemetryError> {
    let mut installed = HANDLE.lock().map_err(|_| TelemetryError::Metrics("recorder lock poisoned".to_string()))?;
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".to_string()), &DURATION_BUCKETS)
        .map_err(|err| TelemetryError::Metrics(err.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|err| TelemetryError::Metrics(err.to_string()))?;
    super::catalog::describe(super::catalog::INFRA_METRICS);
    *installed = Some(handle.clone());
    Ok(handle)
}

/// The text of `/metrics`: every recorded metric, then the process's own (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, …, read from `/proc` now; absent where there is no `/proc`).
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    text.push_str(&super::process::render());
    text
}
