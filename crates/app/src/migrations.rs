//! The database schema, as migrations embedded in the binary (`crates/app/migrations`).

use infra::postgres::{PostgresClient, PostgresError};
use sqlx::migrate::Migrator;

/// Every migration, compiled in: the binary carries its schema, no files needed at run time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Applies pending migrations; returns the versions applied now. Safe to run from several instances at once.
pub async fn apply(client: &PostgresClient) -> Result<Vec<i64>, PostgresError> {
    client.migrate(&MIGRATOR).await
}
