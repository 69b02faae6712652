//! A SQL statement with its bound parameters. Parameters are sent separately from the SQL text (the extended
//! protocol), so values can never change the statement: this is what makes injection impossible, and why the
//! SQL text — never the values — is what spans and logs record.

use sqlx::Arguments;
use sqlx::postgres::{PgArguments, Postgres};

/// A statement ready to run: `sql("SELECT ... WHERE id = $1").bind(id)`.
pub struct Statement {
    pub(crate) sql: &'static str,
    pub(crate) args: PgArguments,
    pub(crate) bind_error: Option<String>,
}

impl std::fmt::Debug for Statement {
    // Bound values may be personal data or secrets: only the SQL text is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statement").field("sql", &self.sql).finish_non_exhaustive()
    }
}

/// Starts a statement. The SQL is `'static`: statements are written in code, never assembled from input.
pub fn sql(sql: &'static str) -> Statement {
    Statement { sql, args: PgArguments::default(), bind_error: None }
}

impl Statement {
    /// Binds the next `$n` parameter.
    pub fn bind<'q, T>(mut self, value: T) -> Self
    where
        T: sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + 'q,
    {
        if self.bind_error.is_none()
            && let Err(err) = self.args.add(value)
        {
            self.bind_error = Some(err.to_string());
        }
        self
    }

    /// The SQL text.
    pub fn text(&self) -> &'static str {
        self.sql
    }

    /// The statement's operation (`SELECT`, `INSERT`...), from a fixed list so it can label metrics.
    pub fn operation(&self) -> &'static str {
        operation_of(self.sql)
    }
}

/// The first keyword of `sql`, upper-cased, if it is a known one; `OTHER` otherwise.
pub fn operation_of(sql: &str) -> &'static str {
    let first = sql.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("");
    OPERATIONS.iter().copied().find(|k| k.eq_ignore_ascii_case(first)).unwrap_or("OTHER")
}

/// Every value [`operation_of`] returns: the `operation` label's whole range.
pub(crate) const OPERATIONS: [&str; 17] = [
    "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "MERGE", "COPY", "BEGIN", "COMMIT", "ROLLBACK", "CREATE",
    "ALTER", "DROP", "TRUNCATE", "SET", "OTHER",
];

/// A type a result row decodes into (a tuple, or a struct deriving `sqlx::FromRow`).
pub trait Row: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static {}

impl<T> Row for T where T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_is_the_first_keyword() {
        assert_eq!(operation_of("  select 1"), "SELECT");
        assert_eq!(operation_of("INSERT INTO t VALUES ($1)"), "INSERT");
        assert_eq!(operation_of("with x as (select 1) select * from x"), "WITH");
        assert_eq!(operation_of("VACUUM"), "OTHER");
        assert_eq!(operation_of(""), "OTHER");
    }

    #[test]
    fn debug_never_shows_bound_values() {
        let statement = sql("SELECT $1").bind("secret-value");
        assert!(!format!("{statement:?}").contains("secret-value"));
    }
}
