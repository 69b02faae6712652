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

    /// Whether waiting can fix the failure: the same statement may succeed later, unchanged. True for outages
    /// and for a server that cannot serve right now — unreachable or refusing (an open breaker, connection
    /// errors, SQLSTATE class 08, a shutdown 57P01–57P03), out of resources (class 53), read-only during a
    /// failover (25006), a statement cancelled by its timeout (57014), a lock not obtained (55P03, 55006), a
    /// serialization failure or deadlock (40001, 40P01), the pool exhausted. False for failures that repeat
    /// however long one waits: bad data (class 22), a violated constraint (class 23), a value that cannot be
    /// converted, invalid SQL, anything unrecognised. Event consumers wait on transient failures instead of
    /// dead-lettering; services answer 503 with Retry-After.
    pub fn is_transient(&self) -> bool {
        match self {
            PostgresError::Unavailable { .. }
            | PostgresError::PoolExhausted { .. }
            | PostgresError::StatementTimeout => true,
            PostgresError::Database { sqlstate, .. } => is_transient_sqlstate(sqlstate),
            PostgresError::RetriesExhausted { last, .. } => last.is_transient(),
            PostgresError::Conversion(_)
            | PostgresError::NotFound
            | PostgresError::Migration(_)
            | PostgresError::Config(_)
            | PostgresError::Other(_) => false,
        }
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

/// SQLSTATEs after which the same statement may succeed later: connection exceptions (08), insufficient
/// resources (53), operator intervention other than a dropped database (57P01–57P03, 57P05; 57014, a
/// cancelled statement), read-only transaction (25006: a standby, or a primary being failed over), lock not
/// available / object in use (55P03, 55006), serialization failure and deadlock (40001, 40P01), system I/O
/// errors (58000, 58030), invalid authorization (28: credentials being rotated are waited for, not lost).
fn is_transient_sqlstate(sqlstate: &str) -> bool {
    const CLASSES: [&str; 3] = ["08", "53", "28"];
    const STATES: [&str; 12] =
        ["57P01", "57P02", "57P03", "57P05", "57014", "25006", "55P03", "55006", "40001", "40P01", "58000", "58030"];
    CLASSES.iter().any(|class| sqlstate.starts_with(class)) || STATES.contains(&sqlstate)
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

    fn database(sqlstate: &str) -> PostgresError {
        PostgresError::Database { sqlstate: sqlstate.into(), message: "m".into(), constraint: None }
    }

    #[test]
    fn failures_waiting_can_fix_are_transient() {
        let outage_like = [
            "08006", "08001", "08P01", "53000", "53100", "53200", "53300", "53400", "57P01", "57P02", "57P03", "57014",
            "25006", "55P03", "55006", "40001", "40P01", "28P01", "58030",
        ];
        for state in outage_like {
            assert!(database(state).is_transient(), "{state}");
        }
        let waiting_is_pointless = [
            "22001", "22P02", "22P05", "22003", "23505", "23503", "23502", "23514", "42P01", "42601", "42703", "0A000",
            "XX000", "57P04", "25P02", "21000", "P0001",
        ];
        for state in waiting_is_pointless {
            assert!(!database(state).is_transient(), "{state}");
        }
        let unavailable = PostgresError::Unavailable { cause: "connection refused".into(), retry_in: None };
        let breaker_open =
            PostgresError::Unavailable { cause: "circuit open".into(), retry_in: Some(Duration::from_secs(1)) };
        for err in [
            unavailable,
            breaker_open,
            PostgresError::PoolExhausted { waited: Duration::from_secs(5) },
            PostgresError::StatementTimeout,
        ] {
            assert!(err.is_transient(), "{err}");
        }
        for err in [
            PostgresError::Conversion("not an int".into()),
            PostgresError::NotFound,
            PostgresError::Migration("m".into()),
            PostgresError::Config("c".into()),
            PostgresError::Other("o".into()),
        ] {
            assert!(!err.is_transient(), "{err}");
        }
        let exhausted = |last| PostgresError::RetriesExhausted { attempts: 3, last: Box::new(last) };
        assert!(exhausted(database("40P01")).is_transient(), "a conflict that outlasted the retries");
        assert!(!exhausted(database("23505")).is_transient());
    }

    #[test]
    fn io_errors_and_a_closed_pool_are_transient_and_decode_errors_are_not() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        assert!(PostgresError::from_sqlx(sqlx::Error::Io(io)).is_transient());
        assert!(PostgresError::from_sqlx(sqlx::Error::PoolClosed).is_transient());
        assert!(!PostgresError::from_sqlx(sqlx::Error::ColumnNotFound("x".into())).is_transient());
        assert!(!PostgresError::from_sqlx(sqlx::Error::RowNotFound).is_transient());
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
