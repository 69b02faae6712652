//! Running statements on a connection, with a span per statement (OpenTelemetry database conventions),
//! duration and error metrics, and a warning for slow queries.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_semantic_conventions::attribute::{
    DB_NAMESPACE, DB_OPERATION_NAME, DB_QUERY_TEXT, DB_RESPONSE_RETURNED_ROWS, DB_RESPONSE_STATUS_CODE, DB_SYSTEM_NAME,
    ERROR_TYPE, SERVER_ADDRESS, SERVER_PORT,
};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tracing::Span;
use tracing::field::Empty;

use super::config::PostgresConfig;
use super::error::PostgresError;
use super::isolation::Isolation;
use super::metrics::StatementMetrics;
use super::statement::{Row, Statement};

/// `db.system.name` of every span of this module (the conventions' well-known value).
pub(crate) const POSTGRESQL: &str = "postgresql";
/// A transaction span's isolation level: this service's own attribute, the conventions have none.
pub(crate) const ISOLATION_LEVEL: &str = "rust_app.db.transaction.isolation_level";
/// How a transaction span ended (`committed`, `rolled_back`, …): this service's own attribute.
pub(crate) const TRANSACTION_OUTCOME: &str = "rust_app.db.transaction.outcome";

/// What every span of a client carries, computed once.
#[derive(Clone, Debug)]
pub(crate) struct QueryMeta {
    pub(crate) database: Arc<str>,
    pub(crate) host: Arc<str>,
    pub(crate) port: u16,
    pub(crate) address: Arc<str>,
    pub(crate) slow_query_threshold: Duration,
    pub(crate) metrics: StatementMetrics,
}

impl QueryMeta {
    pub(crate) fn new(config: &PostgresConfig, options: &PgConnectOptions) -> Self {
        let database = options.get_database().unwrap_or(options.get_username()).to_string();
        QueryMeta {
            host: options.get_host().into(),
            port: options.get_port(),
            address: config.address().into(),
            database: database.into(),
            slow_query_threshold: config.slow_query_threshold,
            metrics: StatementMetrics::new(),
        }
    }

    /// A client span named `{operation} {database}` on OpenTelemetry's stable database conventions: the SQL text
    /// (parameterised: `$1`, never the bound values), the operation, the database and the server.
    pub(crate) fn span(&self, statement: &Statement) -> Span {
        let operation = statement.operation();
        tracing::info_span!(
            target: "infra::postgres",
            "postgresql",
            otel.name = %format_args!("{operation} {}", self.database),
            otel.kind = "client",
            otel.status_code = Empty,
            { DB_SYSTEM_NAME } = POSTGRESQL,
            { DB_OPERATION_NAME } = operation,
            { DB_QUERY_TEXT } = statement.sql,
            { DB_NAMESPACE } = %self.database,
            { SERVER_ADDRESS } = %self.host,
            { SERVER_PORT } = self.port,
            { DB_RESPONSE_RETURNED_ROWS } = Empty,
            { DB_RESPONSE_STATUS_CODE } = Empty,
            { ERROR_TYPE } = Empty,
        )
    }

    /// The span of a whole transaction: its isolation level and how it ended are this service's own
    /// attributes (`rust_app.` prefix), the conventions have none.
    pub(crate) fn transaction_span(&self, isolation: Isolation) -> Span {
        tracing::info_span!(
            target: "infra::postgres",
            "postgresql transaction",
            otel.name = %format_args!("TRANSACTION {}", self.database),
            otel.kind = "client",
            otel.status_code = Empty,
            { DB_SYSTEM_NAME } = POSTGRESQL,
            { DB_OPERATION_NAME } = "TRANSACTION",
            { DB_NAMESPACE } = %self.database,
            { ISOLATION_LEVEL } = isolation.name(),
            { SERVER_ADDRESS } = %self.host,
            { SERVER_PORT } = self.port,
            { TRANSACTION_OUTCOME } = Empty,
        )
    }
}

/// Awaits `work`, then records its outcome on `span`, in metrics and, when slow, in a warning.
///
/// The span is created before `work` starts and closed when this returns, which is all a trace needs for
/// the statement's timing and parentage. It is deliberately not entered around every poll of `work`:
/// nothing inside creates spans or events that need it as their parent, and entering it costs about 1 % of
/// a point SELECT (measured in `benches/postgres.rs`).
pub(crate) async fn observe<T, R>(
    meta: &QueryMeta,
    sql: &'static str,
    operation: &'static str,
    span: Span,
    work: impl Future<Output = Result<T, PostgresError>>,
    rows: R,
) -> Result<T, PostgresError>
where
    R: Fn(&T) -> u64,
{
    let started = Instant::now();
    let result = work.await;
    let elapsed = started.elapsed();
    match &result {
        Ok(value) => {
            span.record(DB_RESPONSE_RETURNED_ROWS, rows(value));
        }
        Err(err) => {
            span.record("otel.status_code", "ERROR");
            span.record(ERROR_TYPE, err.metric_class());
            if let Some(sqlstate) = err.sqlstate() {
                span.record(DB_RESPONSE_STATUS_CODE, sqlstate);
            }
        }
    }
    if elapsed >= meta.slow_query_threshold {
        tracing::warn!(
            parent: &span,
            // A named field first: `{` right after `parent:` would be read as a block of fields.
            duration_ms = elapsed.as_millis() as u64,
            { DB_QUERY_TEXT } = sql,
            threshold_ms = meta.slow_query_threshold.as_millis() as u64,
            "slow query"
        );
    }
    meta.metrics.done(operation, elapsed, result.as_ref().err().map(PostgresError::metric_class));
    result
}

fn bound(statement: &mut Statement) -> Result<(), PostgresError> {
    match statement.bind_error.take() {
        Some(err) => Err(PostgresError::Conversion(err)),
        None => Ok(()),
    }
}

fn query_of(statement: Statement) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query_with(statement.sql, statement.args)
}

pub(crate) async fn exec(conn: &mut PgConnection, mut statement: Statement) -> Result<u64, PostgresError> {
    bound(&mut statement)?;
    let done = query_of(statement).execute(conn).await.map_err(PostgresError::from_sqlx)?;
    Ok(done.rows_affected())
}

pub(crate) async fn fetch_all<T>(conn: &mut PgConnection, mut statement: Statement) -> Result<Vec<T>, PostgresError>
where
    T: Row,
{
    bound(&mut statement)?;
    sqlx::query_as_with(statement.sql, statement.args).fetch_all(conn).await.map_err(PostgresError::from_sqlx)
}

pub(crate) async fn fetch_one<T>(conn: &mut PgConnection, mut statement: Statement) -> Result<T, PostgresError>
where
    T: Row,
{
    bound(&mut statement)?;
    sqlx::query_as_with(statement.sql, statement.args).fetch_one(conn).await.map_err(PostgresError::from_sqlx)
}

pub(crate) async fn fetch_optional<T>(
    conn: &mut PgConnection,
    mut statement: Statement,
) -> Result<Option<T>, PostgresError>
where
    T: Row,
{
    bound(&mut statement)?;
    sqlx::query_as_with(statement.sql, statement.args).fetch_optional(conn).await.map_err(PostgresError::from_sqlx)
}
