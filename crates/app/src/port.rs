//! What every port (a trait the domain defines, an adapter implements) reports when it fails, and the one
//! place where infra's errors become that report.

use infra::postgres::PostgresError;

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

    /// The same failure, its message prefixed with the `step` that failed (`committing: ...`).
    pub fn during(self, step: &str) -> Self {
        PortError { message: format!("{step}: {}", self.message), ..self }
    }
}

/// A PostgreSQL failure: an unreachable database (or an open breaker, an exhausted pool) is "unavailable",
/// anything else a failure of the operation.
impl From<PostgresError> for PortError {
    fn from(err: PostgresError) -> Self {
        if err.is_unavailable() { PortError::unavailable(err.to_string()) } else { PortError::failed(err.to_string()) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_unreachable_database_is_unavailable_and_other_failures_are_not() {
        let down = PostgresError::Unavailable { cause: "connection refused".into(), retry_in: None };
        assert!(PortError::from(down).unavailable);
        assert!(PortError::from(PostgresError::PoolExhausted { waited: Duration::from_secs(5) }).unavailable);
        assert!(!PortError::from(PostgresError::StatementTimeout).unavailable);
    }

    #[test]
    fn a_step_prefixes_the_message_and_keeps_the_kind() {
        let err = PortError::unavailable("database down").during("committing");
        assert_eq!(err.message, "committing: database down");
        assert!(err.unavailable);
    }
}
