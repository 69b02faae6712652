//! The database schema, as migrations embedded in the binary (`crates/app/migrations`).

use infra::postgres::{PostgresClient, PostgresError};
use std::sync::LazyLock;

use sqlx::migrate::Migrator;

/// Every migration, compiled in: the binary carries its schema, no files needed at run time.
///
/// Versions the database has but this binary does not know are accepted: during a rolling deploy the new
/// version migrates first, and an old instance restarting next to it must still start (so every migration is
/// written to be compatible with the previous release: add columns with defaults, drop them a release later).
/// The checksums of the versions both know are still verified.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
});

/// Applies pending migrations; returns the versions applied now. Safe to run from several instances at once.
pub async fn apply(client: &PostgresClient) -> Result<Vec<i64>, PostgresError> {
    client.migrate(&MIGRATOR).await
}
