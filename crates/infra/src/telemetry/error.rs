//! Why telemetry could not be set up.

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter: {0}")]
    Filter(String),
    /// The OTLP exporter could not be built.
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(String),
    /// The metrics recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    /// A global subscriber is already installed.
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
}
