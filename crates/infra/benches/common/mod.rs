//! What the benchmarks share: the telemetry both sides run under.

/// Installs the global subscriber chosen by BENCH_TELEMETRY and returns its name: `json` (default: the
/// service's own log layer at INFO, output discarded), `registry` (spans created and tracked, nothing formats
/// them: what an OpenTelemetry layer sees first), `off`.
pub fn install_subscriber() -> String {
    use tracing_subscriber::layer::SubscriberExt;
    let mode = std::env::var("BENCH_TELEMETRY").unwrap_or_else(|_| "json".into());
    let info = || tracing_subscriber::EnvFilter::new("info");
    let log_filter = || infra::telemetry::LogFilter::parse("info").expect("filter");
    let result =
        match mode.as_str() {
            "off" => return mode,
            "registry" => tracing::subscriber::set_global_default(tracing_subscriber::registry().with(info())),
            _ => tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(infra::telemetry::log_layer(None, log_filter(), std::io::sink)),
            ),
        };
    result.expect("subscriber");
    mode
}

/// The paired result of `tasks`, each of which alternated raw and infra operations and returns (time spent in
/// raw operations, time spent in infra operations, pairs done): each side's operations per second, counted as
/// if its `concurrency` tasks had spent their whole time on it.
#[allow(dead_code, reason = "each bench compiles this module; the Kafka bench does not pair operations")]
pub async fn paired_rates(
    tasks: Vec<tokio::task::JoinHandle<(std::time::Duration, std::time::Duration, u64)>>,
    concurrency: usize,
) -> (f64, f64) {
    let (mut raw_time, mut infra_time, mut ops) = (std::time::Duration::ZERO, std::time::Duration::ZERO, 0);
    for task in tasks {
        let (raw, infra, n) = task.await.expect("bench task");
        raw_time += raw;
        infra_time += infra;
        ops += n;
    }
    let per_second = |total: std::time::Duration| ops as f64 * concurrency as f64 / total.as_secs_f64();
    (per_second(raw_time), per_second(infra_time))
}

/// Installs the service's Prometheus recorder (explicit buckets, as `/metrics` serves them) and drains its
/// histogram samples every 5 s, as scrapes do in production, so they do not pile up.
pub fn install_recorder() {
    let prometheus = infra::telemetry::prometheus::install().expect("recorder");
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            prometheus.run_upkeep();
        }
    });
}
