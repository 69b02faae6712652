//! Logging setup: JSON lines on stdout, level from `RUST_LOG` or `OTEL_LOG_VERBOSITY`.

use tracing_subscriber::EnvFilter;

use crate::config::ServiceConfig;

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

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the verbosity mapping.
/// Returns an error when a subscriber is already installed (e.g. a second call in tests).
pub fn init(service: &ServiceConfig, output: LogOutput) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter_for_verbosity(service.log_verbosity)))
        .map_err(|err| err.to_string())?;
    let builder = tracing_subscriber::fmt().json().with_env_filter(filter).with_current_span(true).flatten_event(true);
    match output {
        LogOutput::Stdout => builder.with_writer(std::io::stdout).try_init(),
        LogOutput::Stderr => builder.with_writer(std::io::stderr).try_init(),
    }
    .map_err(|err| err.to_string())
}
