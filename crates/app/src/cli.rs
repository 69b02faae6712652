//! Command-line interface.

use std::fmt::Write;

use clap::{Parser, Subcommand};
use infra::config::Config;

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
