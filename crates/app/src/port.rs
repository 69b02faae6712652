//! What every port (a trait the domain defines, an adapter implements) reports when it fails, and the one
//! place where infra's errors become that report.

use infra::postgres::PostgresError;

/// A port failed; the message is for logs (it names the dependency, never credentials).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    /// What went wrong.
    pub message: String,
    /// The dependency behind the port is down or cannot serve right now (unreachable, breaker open, pool
    /// exhausted, read-only during a failover, out of resources, a statement timeout or lock timeout): worth
    /// waiting for, not the input's fault. HTTP answers 503 with Retry-After; the event consumer waits for the
    /// dependency instead of dead-lettering. `false`: waiting will not help (bad data, a violated constraint).
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

/// A PostgreSQL failure: one waiting can fix ([`PostgresError::is_transient`]: an unreachable database, an open
/// breaker, an exhausted pool, a read-only or overloaded server, a statement or lock timeout) is "unavailable",
/// anything else a failure of the operation.
impl From<PostgresError> for PortError {
    fn from(err: PostgresError) -> Self {
        if err.is_transient() { PortError::unavailable(err.to_string()) } else { PortError::failed(err.to_string()) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn database(sqlstate: &str) -> PostgresError {
        PostgresError::Database { sqlstate: sqlstate.into(), message: "m".into(), constraint: None }
    }

    #[test]
    fn failures_waiting_can_fix_are_unavailable_and_data_errors_are_not() {
        let down = PostgresError::Unavailable { cause: "connection refused".into(), retry_in: None };
        assert!(PortError::from(down).unavailable);
        assert!(PortError::from(PostgresError::PoolExhausted { waited: Duration::from_secs(5) }).unavailable);
        assert!(PortError::from(PostgresError::StatementTimeout).unavailable);
        for outage_like in ["25006", "53100", "55P03", "57P01", "40001"] {
            assert!(PortError::from(database(outage_like)).unavailable, "{outage_like}");
        }
        for data_error in ["22P05", "23505", "42P01"] {
            assert!(!PortError::from(database(data_error)).unavailable, "{data_error}");
        }
        assert!(!PortError::from(PostgresError::Conversion("not a uuid".into())).unavailable);
    }

    #[test]
    fn a_step_prefixes_the_message_and_keeps_the_kind() {
        let err = PortError::unavailable("database down").during("committing");
        assert_eq!(err.message, "committing: database down");
        assert!(err.unavailable);
    }
}
