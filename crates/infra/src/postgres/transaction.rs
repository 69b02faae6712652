//! Transactions: begin → statements → commit; dropping one without commit rolls it back (sqlx queues the
//! ROLLBACK on the connection before it is reused).

use std::time::Instant;

use futures::future::BoxFuture;
use sqlx::Postgres;
use sqlx::postgres::PgConnection;
use tracing::{Instrument, Span};

use super::error::PostgresError;
use super::query::{self, QueryMeta};
use super::statement::{Row, Statement};

/// An open transaction. Its statements are spans inside the transaction's span.
pub struct Transaction {
    /// `None` only once finished (commit/rollback consume the transaction, so never observable).
    tx: Option<sqlx::Transaction<'static, Postgres>>,
    meta: QueryMeta,
    span: Span,
    started: Instant,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("database", &self.meta.database).finish_non_exhaustive()
    }
}

impl Transaction {
    pub(crate) fn new(tx: sqlx::Transaction<'static, Postgres>, meta: QueryMeta, span: Span) -> Self {
        Transaction { tx: Some(tx), meta, span, started: Instant::now() }
    }

    /// Runs a statement that returns no rows; returns the number of rows affected.
    #[doc(alias = "exec_with_tracing")]
    pub async fn exec(&mut self, statement: Statement) -> Result<u64, PostgresError> {
        self.run(statement, |conn, st| Box::pin(query::exec(conn, st)), |n| *n).await
    }

    /// Runs a query and decodes every row.
    #[doc(alias = "query_with_tracing")]
    pub async fn query<T>(&mut self, statement: Statement) -> Result<Vec<T>, PostgresError>
    where
        T: Row,
    {
        self.run(statement, |conn, st| Box::pin(query::fetch_all(conn, st)), |rows: &Vec<T>| rows.len() as u64).await
    }

    /// Runs a query that must return exactly one row.
    pub async fn query_one<T>(&mut self, statement: Statement) -> Result<T, PostgresError>
    where
        T: Row,
    {
        self.run(statement, |conn, st| Box::pin(query::fetch_one(conn, st)), |_| 1).await
    }

    /// Runs a query that returns at most one row.
    pub async fn query_optional<T>(&mut self, statement: Statement) -> Result<Option<T>, PostgresError>
    where
        T: Row,
    {
        self.run(
            statement,
            |conn, st| Box::pin(query::fetch_optional(conn, st)),
            |row: &Option<T>| u64::from(row.is_some()),
        )
        .await
    }

    /// Makes the transaction's changes permanent.
    pub async fn commit(self) -> Result<(), PostgresError> {
        self.finish(true).await
    }

    /// Discards the transaction's changes (dropping the transaction does the same).
    pub async fn rollback(self) -> Result<(), PostgresError> {
        self.finish(false).await
    }

    async fn finish(mut self, commit: bool) -> Result<(), PostgresError> {
        let (span, started) = (self.span.clone(), self.started);
        let tx = self.tx.take().ok_or_else(|| PostgresError::Other("transaction already finished".into()))?;
        let result = if commit {
            tx.commit().instrument(span.clone()).await
        } else {
            tx.rollback().instrument(span.clone()).await
        };
        let outcome = match (&result, commit) {
            (Ok(()), true) => "committed",
            (Ok(()), false) => "rolled_back",
            (Err(_), _) => "failed",
        };
        span.record(query::TRANSACTION_OUTCOME, outcome);
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        tracing::debug!(parent: &span, outcome, duration_ms = started.elapsed().as_millis() as u64, "transaction ended");
        result.map_err(PostgresError::from_sqlx)
    }

    async fn run<T, R>(
        &mut self,
        statement: Statement,
        fetch: impl for<'c> FnOnce(&'c mut PgConnection, Statement) -> BoxFuture<'c, Result<T, PostgresError>>,
        rows: R,
    ) -> Result<T, PostgresError>
    where
        R: Fn(&T) -> u64,
    {
        let span = self.span.in_scope(|| self.meta.span(&statement));
        let (sql, operation) = (statement.sql, statement.operation());
        let tx = self.tx.as_mut().ok_or_else(|| PostgresError::Other("transaction already finished".into()))?;
        query::observe(&self.meta, sql, operation, span, fetch(tx, statement), rows).await
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        // sqlx rolls back an unfinished transaction when it is dropped; say so in the trace.
        if self.tx.is_some() {
            self.span.record(query::TRANSACTION_OUTCOME, "rolled_back_on_drop");
        }
    }
}
