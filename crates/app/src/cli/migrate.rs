//! `rust-app migrate`: applies the migrations embedded in the binary, then exits (for a deploy step that runs
//! before the new version starts). `rust-app migrate status` lists which are applied and which are pending.

use std::process::ExitCode;

use clap::Subcommand;
use infra::postgres::PostgresClient;
use infra::settings::Config;
use infra::telemetry::LogOutput;

use crate::migrations::{self, MigrationStatus};

/// `rust-app migrate ...`
#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// List every migration embedded in the binary as applied or pending, and versions the database has
    /// from a newer release; changes nothing.
    Status,
}

/// Applies the pending migrations and prints each one applied (or lists the status); a failure is printed and
/// exits non-zero.
pub fn run(config: &Config, action: Option<MigrateAction>) -> ExitCode {
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let telemetry = super::start_telemetry(&runtime, config, LogOutput::Stderr);
    let result = runtime.block_on(async {
        let client = PostgresClient::connect_lazy(&config.postgres)?;
        let outcome = match action {
            None => migrations::apply(&client).await.map(|applied| render_applied(&applied)),
            Some(MigrateAction::Status) => migrations::status(&client).await.map(|status| render_status(&status)),
        };
        client.close().await;
        Ok::<_, anyhow::Error>(outcome?)
    });
    if let Ok(telemetry) = telemetry {
        telemetry.shutdown();
    }
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("rust-app: migration failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One line per migration applied now (`applied <version> <description>`), or that there was nothing to do.
fn render_applied(applied: &[i64]) -> String {
    if applied.is_empty() {
        return "database is up to date\n".to_string();
    }
    let mut out = String::new();
    for version in applied {
        out.push_str(&format!("applied {version} {}\n", migrations::description(*version).unwrap_or("")));
    }
    out.push_str(&format!("{} migration(s) applied\n", applied.len()));
    out
}

/// A line per migration (`applied`/`pending`, version, description), then a summary.
fn render_status(status: &[MigrationStatus]) -> String {
    let mut out = String::new();
    for migration in status {
        out.push_str(&format!("{:<8} {} {}\n", migration.state(), migration.version, migration.description));
    }
    let pending = status.iter().filter(|m| m.state() == "pending").count();
    let applied = status.iter().filter(|m| m.state() == "applied").count();
    out.push_str(&format!("{applied} applied, {pending} pending\n"));
    out
}
