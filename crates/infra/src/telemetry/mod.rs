//! Logs, traces and metrics: one `init` at start installs them for the whole process.
//!
//! - Logs: JSON lines by default (`LOG_FORMAT=pretty` for humans), each carrying the trace and span ids of
//!   the span it was written in, the fields of the enclosing spans (an HTTP request's `request_id`), and
//!   `service.name`.
//! - Traces: `tracing` spans become OpenTelemetry spans (tracing-opentelemetry), exported over OTLP gRPC when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - Metrics: the Prometheus recorder ([`prometheus::install`]), rendered by the service's `/metrics`
//!   ([`prometheus::render`], which adds the process metrics); every metric described in [`catalog`].
//!
//! Client spans (one per SQL statement, Redis command or Kafka message) are for the trace pipeline, not for
//! log lines: formatting every statement's attributes into JSON would cost more than the statement's own
//! client-side work (measured: ~18 µs per statement). Events inside such spans are still logged (a
//! slow-query warning carries its statement and duration itself).

pub mod catalog;
pub mod config;
mod error;
mod filter;
mod json_log;
mod process;
pub mod prometheus;
pub mod propagation;
mod traces;

use std::time::Duration;

use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Metadata;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use config::{LogFormat, OtlpConfig, ServiceConfig, filter_for_verbosity};
pub use error::TelemetryError;
pub use filter::LogFilter;

/// Targets of the client spans the log layer leaves to the trace pipeline.
pub const CLIENT_SPAN_TARGETS: [&str; 3] = ["infra::postgres", "infra::redis", "infra::kafka"];

/// What the trace pipeline records: info spans of everything but the exporter's own transport (its spans
/// would be exported by the exporter, forever).
const TRACE_FILTER: &str = "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,opentelemetry=off,\
                            opentelemetry_sdk=off,opentelemetry_otlp=off";

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOutput {
    /// The service: logs are its output (collected by the platform).
    Stdout,
    /// One-shot commands whose stdout is their result (`migrate`).
    Stderr,
}

fn is_client_span(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && CLIENT_SPAN_TARGETS.iter().any(|target| metadata.target().starts_with(target))
}

/// The JSON log layer: one object per line — `timestamp`, `level`, `target`, `message`, the event's fields,
/// `span` (the fields of every enclosing span, innermost winning), `trace_id` / `span_id` when an
/// OpenTelemetry layer is installed, and `service.name` when given. Events at `filter`'s levels; client spans
/// left out.
pub fn log_layer<S, W>(service_name: Option<&str>, filter: LogFilter, writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = json_log::JsonLog::new(writer, service_name);
    layer.with_filter(filter.boxed().and(filter_fn(|metadata| !is_client_span(metadata))))
}

fn pretty_layer<S, W>(filter: LogFilter, writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .pretty()
        .with_writer(writer)
        .with_filter(filter.boxed().and(filter_fn(|metadata| !is_client_span(metadata))))
}

/// The layer turning `tracing` spans into OpenTelemetry spans of `provider`'s tracer.
pub fn trace_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("rust-app"))
        .with_tracked_inactivity(false)
        // Targets, not EnvFilter: the directives name no span (see `filter`). They are a constant that parses.
        .with_filter(TRACE_FILTER.parse::<Targets>().unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO)))
}

/// Flushes and stops the trace pipeline when the process ends.
#[must_use = "dropping the guard at once stops trace export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    flush_timeout: Duration,
}

impl TelemetryGuard {
    /// Exports the spans still queued, within `OTEL_EXPORTER_OTLP_TIMEOUT`; an unreachable collector does not
    /// hold up the exit longer than that. Call it outside async code (it blocks), with the runtime still alive.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown_with_timeout(self.flush_timeout) {
            tracing::warn!(error = %err, "traces still queued at exit were not all exported");
        }
    }
}

/// Installs the global subscriber (logs to `output` + traces) and returns the guard that flushes traces.
///
/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set it must be called inside a Tokio runtime (`Runtime::enter`).
pub fn init(service: &ServiceConfig, output: LogOutput) -> Result<TelemetryGuard, TelemetryError> {
    let filter = LogFilter::parse(&service.effective_log_filter()).map_err(TelemetryError::Filter)?;
    let provider = traces::provider(service)?;
    let logs = match (service.log_format, output) {
        (LogFormat::Json, LogOutput::Stdout) => log_layer(Some(&service.name), filter, std::io::stdout).boxed(),
        (LogFormat::Json, LogOutput::Stderr) => log_layer(Some(&service.name), filter, std::io::stderr).boxed(),
        (LogFormat::Pretty, LogOutput::Stdout) => pretty_layer(filter, std::io::stdout).boxed(),
        (LogFormat::Pretty, LogOutput::Stderr) => pretty_layer(filter, std::io::stderr).boxed(),
    };
    Registry::default()
        .with(trace_layer(&provider))
        .with(logs)
        .try_init()
        .map_err(|err| TelemetryError::Subscriber(err.to_string()))?;
    let flush_timeout = service.otlp.as_ref().map_or(Duration::from_secs(1), |otlp| otlp.timeout);
    Ok(TelemetryGuard { provider, flush_timeout })
}
