//! Errors of the PostgreSQL layer, classified so callers can react (503, 409, retry) without parsing messages.

use std::time::Duration;

/// What went wrong talking to PostgreSQL. Messages never contain the DSN's password.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The server cannot be reached (down, refusing, wrong credentials, TLS failure) or the circuit breaker is
    /// open after such failures. Services answer 503.
    #[error("PostgreSQL is unavailable: {cause}")]
    Unavailable {
        /// The last connection error seen.
        cause: String,
        /// When the circuit breaker is open: how long until it lets a probe through.
        retry_in: Option<Duration>,
    },
    /// Every connection stayed busy for the whole acquire timeout while the server was reachable.
    #[error("no PostgreSQL connection became free within {}ms (pool exhausted)", waited.as_millis())]
    PoolExhausted {
        /// How long the caller waited.
        waited: Duration,
    },
    /// The server cancelled the statement after POSTGRES_STATEMENT_TIMEOUT.
    #[error("statement cancelled by statement_timeout (SQLSTATE 57014)")]
    StatementTimeout,
    /// The server rejected the statement.
    #[error("{message} (SQLSTATE {sqlstate})")]
    Database {
        /// The five-character SQLSTATE, e.g. `23505` for a unique violation.
        sqlstate: String,
        /// The server's message (without the row data of the DETAIL field).
        message: String,
        /// The violated constraint, when there is one.
        constraint: Option<String>,
    },
    /// A bound value could not be encoded, or a row could not be decoded into the requested type.
    #[error("cannot convert a value: {0}")]
    Conversion(String),
    /// The query returned no row where one was required.
    #[error("the query returned no row")]
    NotFound,
    /// A retried transaction kept failing.
    #[error("transaction failed after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made, including the first.
        attempts: u32,
        /// The last attempt's error.
        last: Box<PostgresError>,
    },
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The configuration cannot be turned into a client.
    #[error("invalid PostgreSQL configuration: {0}")]
    Config(String),
    /// Anything else sqlx reports.
    #[error("PostgreSQL error: {0}")]
    Other(String),
}

/// SQLSTATE of a serialization failure under SERIALIZABLE or REPEATABLE READ.
pub const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE of a deadlock.
pub const DEADLOCK_DETECTED: &str = "40P01";
/// SQLSTATE of a unique violation.
pub const UNIQUE_VIOLATION: &str = "23505";

impl PostgresError {
    /// The SQLSTATE, for errors the server reported.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PostgresError::Database { sqlstate, .. } => Some(sqlstate),
            PostgresError::StatementTimeout => Some("57014"),
            PostgresError::RetriesExhausted { last, .. } => last.sqlstate(),
            _ => None,
        }
    }

    /// The server cannot serve requests now: answer 503 and retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PostgresError::Unavailable { .. } | PostgresError::PoolExhausted { .. })
    }

    /// A unique constraint was violated (e.g. a duplicate email).
    pub fn is_unique_violation(&self) -> bool {
        self.sqlstate() == Some(UNIQUE_VIOLATION)
    }

    /// A transaction failed in a way that retrying the whole transaction may fix.
    pub fn is_transient_conflict(&self) -> bool {
        matches!(self, PostgresError::Database { sqlstate, .. } if sqlstate == SERIALIZATION_FAILURE || sqlstate == DEADLOCK_DETECTED)
    }

    /// A low-cardinality label for metrics: the SQLSTATE class, or the kind of failure.
    pub fn metric_class(&self) -> &'static str {
        match self {
            PostgresError::Unavailable { .. } => "unavailable",
            PostgresError::PoolExhausted { .. } => "pool_exhausted",
            PostgresError::StatementTimeout => "57",
            PostgresError::Database { sqlstate, .. } => sqlstate_class(sqlstate),
            PostgresError::Conversion(_) => "conversion",
            PostgresError::NotFound => "not_found",
            PostgresError::RetriesExhausted { last, .. } => last.metric_class(),
            PostgresError::Migration(_) => "migration",
            PostgresError::Config(_) => "config",
            PostgresError::Other(_) => "other",
        }
    }

    /// Classifies a sqlx error.
    pub(crate) fn from_sqlx(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Database(db) => {
                let sqlstate = db.code().map(|c| c.into_owned()).unwrap_or_default();
                if sqlstate == "57014" && db.message().contains("statement timeout") {
                    return PostgresError::StatementTimeout;
                }
                if is_connection_sqlstate(&sqlstate) {
                    return PostgresError::Unavailable {
                        cause: format!("{} (SQLSTATE {sqlstate})", db.message()),
                        retry_in: None,
                    };
                }
                PostgresError::Database {
                    message: db.message().to_string(),
                    constraint: db.constraint().map(str::to_string),
                    sqlstate,
                }
            }
            sqlx::Error::Io(io) => PostgresError::Unavailable { cause: io.to_string(), retry_in: None },
            sqlx::Error::Tls(tls) => PostgresError::Unavailable { cause: format!("TLS: {tls}"), retry_in: None },
            sqlx::Error::PoolClosed => {
                PostgresError::Unavailable { cause: "the pool is closed".into(), retry_in: None }
            }
            sqlx::Error::RowNotFound => PostgresError::NotFound,
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::Encode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::TypeNotFound { .. } => PostgresError::Conversion(err.to_string()),
            sqlx::Error::Migrate(migrate) => PostgresError::Migration(migrate.to_string()),
            other => PostgresError::Other(other.to_string()),
        }
    }
}

/// Connection exceptions (08), invalid authorization (28), operator intervention (57P01..57P05: shutdown,
/// crash, cannot connect now) and too many connections (53300): the server is not usable right now.
fn is_connection_sqlstate(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || sqlstate.starts_with("28")
        || (sqlstate.starts_with("57P") && sqlstate != "57P04")
        || sqlstate == "53300"
}

fn sqlstate_class(sqlstate: &str) -> &'static str {
    // A fixed list keeps the label's cardinality bounded whatever the server sends.
    const CLASSES: [&str; 24] = [
        "02", "08", "09", "0A", "21", "22", "23", "24", "25", "26", "28", "2B", "34", "3B", "3D", "3F", "40", "42",
        "53", "54", "55", "57", "58", "XX",
    ];
    CLASSES.iter().copied().find(|class| sqlstate.starts_with(class)).unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes_are_bounded() {
        assert_eq!(sqlstate_class("23505"), "23");
        assert_eq!(sqlstate_class("40001"), "40");
        assert_eq!(sqlstate_class("ZZ999"), "other");
    }

    #[test]
    fn connection_level_states_mean_unavailable() {
        for state in ["08006", "28P01", "57P01", "57P03", "53300"] {
            assert!(is_connection_sqlstate(state), "{state}");
        }
        for state in ["23505", "40001", "57014", "42P01"] {
            assert!(!is_connection_sqlstate(state), "{state}");
        }
    }

    #[test]
    fn conflicts_are_transient_and_exhausted_retries_keep_the_sqlstate() {
        let conflict = PostgresError::Database {
            sqlstate: "40001".into(),
            message: "could not serialize".into(),
            constraint: None,
        };
        assert!(conflict.is_transient_conflict());
        let exhausted = PostgresError::RetriesExhausted { attempts: 5, last: Box::new(conflict) };
        assert_eq!(exhausted.sqlstate(), Some("40001"));
        assert_eq!(exhausted.to_string(), "transaction failed after 5 attempts: could not serialize (SQLSTATE 40001)");
    }
}
