//! Logging setup: JSON lines, level from `RUST_LOG` or `OTEL_LOG_VERBOSITY`.
//!
//! The log layer prints events. Client spans (one per SQL statement, Redis command or Kafka message) are for
//! the trace pipeline, not for log lines: formatting every statement's attributes into JSON would cost more
//! than the statement's own client-side work (measured: ~18 µs per statement). Events inside such spans are
//! still logged (a slow-query warning carries its statement and duration itself).

use tracing::Metadata;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::ServiceConfig;

/// Targets of the client spans the log layer leaves to the trace pipeline.
pub const CLIENT_SPAN_TARGETS: [&str; 3] = ["infra::postgres", "infra::redis", "infra::kafka"];

/// The log filter for a verbosity level: 0 warn, 1 info, 2 debug, 3 trace. Dependencies stay at warn below
/// trace so debugging the service does not drown in driver chatter.
pub fn filter_for_verbosity(verbosity: u8) -> String {
    match verbosity {
        0 => "warn".to_string(),
        1 => "info".to_string(),
        2 => "warn,infra=debug,app=debug,rust_app=debug".to_string(),
        _ => "trace".to_string(),
    }
}

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

/// The JSON log layer: one object per line, events at `filter`'s levels, client spans left out.
pub fn log_layer<S, W>(filter: EnvFilter, writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .flatten_event(true)
        .with_writer(writer)
        .with_filter(filter.and(filter_fn(|metadata| !is_client_span(metadata))))
}

/// The level filter: `RUST_LOG` when set, else the mapping of `OTEL_LOG_VERBOSITY`.
pub fn env_filter(service: &ServiceConfig) -> Result<EnvFilter, String> {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter_for_verbosity(service.log_verbosity)))
        .map_err(|err| err.to_string())
}

/// Installs the global subscriber. Returns an error when one is already installed.
pub fn init(service: &ServiceConfig, output: LogOutput) -> Result<(), String> {
    let filter = env_filter(service)?;
    let registry = Registry::default();
    match output {
        LogOutput::Stdout => registry.with(log_layer(filter, std::io::stdout)).try_init(),
        LogOutput::Stderr => registry.with(log_layer(filter, std::io::stderr)).try_init(),
    }
    .map_err(|err| err.to_string())
}
