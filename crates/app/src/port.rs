//! What every port (a trait the domain defines, an adapter implements) reports when it fails.

/// A port failed; the message is for logs (it names the dependency, never credentials).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    /// What went wrong.
    pub message: String,
    /// The dependency behind the port is down (unreachable, breaker open, pool exhausted): worth waiting for,
    /// not the input's fault.
    pub unavailable: bool,
}

impl PortError {
    /// A failure of this operation.
    pub fn failed(message: impl Into<String>) -> Self {
        PortError { message: message.into(), unavailable: false }
    }

    /// The dependency is down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        PortError { message: message.into(), unavailable: true }
    }
}
