//! What the benchmarks share: the telemetry both sides run under.

/// Installs the global subscriber chosen by BENCH_TELEMETRY and returns its name: `json` (default: the
/// service's own log layer at INFO, output discarded), `registry` (spans created and tracked, nothing formats
/// them: what an OpenTelemetry layer sees first), `off`.
pub fn install_subscriber() -> String {
    use tracing_subscriber::layer::SubscriberExt;
    let mode = std::env::var("BENCH_TELEMETRY").unwrap_or_else(|_| "json".into());
    let info = || tracing_subscriber::EnvFilter::new("info");
    let result =
        match mode.as_str() {
            "off" => return mode,
            "registry" => tracing::subscriber::set_global_default(tracing_subscriber::registry().with(info())),
            _ => tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(infra::telemetry::log_layer(None, info(), std::io::sink)),
            ),
        };
    result.expect("subscriber");
    mode
}
