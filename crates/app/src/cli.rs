//! Command-line interface.

use std::fmt::Write;

use clap::{Parser, Subcommand};
use infra::settings::Config;

/// rust-app: a production-ready service on PostgreSQL, Redis and Kafka.
///
/// Configuration comes from environment variables and an optional ./.env file (the environment wins);
/// see docs/configuration.md.
#[derive(Debug, Parser)]
#[command(name = "rust-app", version)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service until SIGTERM or SIGINT.
    Serve,
    /// Print the effective configuration: every variable, its value (secrets masked) and its source.
    Config,
    /// Apply the database migrations embedded in the binary, then exit.
    Migrate,
    /// Inspect or replay the dead-letter topic (KAFKA_DLQ_TOPIC).
    Dlq {
        /// list or replay.
        #[command(subcommand)]
        action: DlqAction,
    },
}

/// `rust-app dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Count the dead-lettered records and show a sample with their error headers.
    List {
        /// How many records to show.
        #[arg(long, default_value_t = 10)]
        sample: usize,
    },
    /// Publish dead-lettered records again to the topic they came from (key, value and original headers).
    Replay {
        /// Only records with this key.
        #[arg(long)]
        key: Option<String>,
        /// Only records at or after this offset of the dead-letter topic.
        #[arg(long)]
        from_offset: Option<i64>,
        /// Only records at or before this offset of the dead-letter topic.
        #[arg(long)]
        to_offset: Option<i64>,
        /// Show what would be replayed; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The effective configuration as an aligned table: variable, value, source.
pub fn render_effective_config(config: &Config) -> String {
    let entries = config.effective();
    let name_width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0).max("VARIABLE".len());
    let value_width = entries.iter().map(|e| e.value.len()).max().unwrap_or(0).max("VALUE".len());
    let mut out = String::new();
    let mut line = |name: &str, value: &str, source: &str| {
        let _ = writeln!(out, "{name:<name_width$}  {value:<value_width$}  {source}");
    };
    line("VARIABLE", "VALUE", "SOURCE");
    for entry in entries {
        line(entry.name, &entry.value, &entry.origin.to_string());
    }
    out
}

/// The async runtime for a subcommand; on failure the error is printed and the exit code returned.
pub fn runtime() -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tokio::runtime::Runtime::new().map_err(|err| {
        eprintln!("rust-app: cannot start the async runtime: {err}");
        std::process::ExitCode::FAILURE
    })
}
