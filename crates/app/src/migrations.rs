//! The database schema, as migrations embedded in the binary (`crates/app/migrations`).

use infra::postgres::{PostgresClient, PostgresError, sql};
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

/// The description of the embedded migration `version` (its file name after the version, as sqlx reads it).
pub fn description(version: i64) -> Option<&'static str> {
    MIGRATOR.iter().find(|m| m.version == version).map(|m| &*m.description)
}

/// A migration and whether the database has it, for `rust-app migrate status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationStatus {
    /// The version (the file name's numeric prefix).
    pub version: i64,
    /// What it does (from the file name, or from the database for a version this binary does not know).
    pub description: String,
    /// Recorded as successfully applied.
    pub applied: bool,
    /// Embedded in this binary (false: applied by a newer release).
    pub known: bool,
}

impl MigrationStatus {
    /// `applied`, `pending`, or `newer` (applied by a release this binary does not know).
    pub fn state(&self) -> &'static str {
        match (self.applied, self.known) {
            (true, true) => "applied",
            (false, _) => "pending",
            (true, false) => "newer",
        }
    }
}

/// Every embedded migration, applied or pending, and the applied versions this binary does not embed, in
/// version order. Reads only; a database never migrated has everything pending.
pub async fn status(client: &PostgresClient) -> Result<Vec<MigrationStatus>, PostgresError> {
    let (table,) = client.query_one::<(Option<String>,)>(sql("SELECT to_regclass('_sqlx_migrations')::text")).await?;
    let recorded = match table {
        Some(_) => {
            let statement = sql("SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version");
            client.query::<(i64, String)>(statement).await?
        }
        None => Vec::new(),
    };
    let mut status: Vec<MigrationStatus> = MIGRATOR
        .iter()
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: recorded.iter().any(|(version, _)| *version == m.version),
            known: true,
        })
        .collect();
    for (version, description) in recorded {
        if self::description(version).is_none() {
            status.push(MigrationStatus { version, description, applied: true, known: false });
        }
    }
    status.sort_by_key(|m| m.version);
    Ok(status)
}
