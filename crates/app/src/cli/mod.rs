//! The command line: every subcommand and its runner. `main` parses the arguments and hands them to [`run`].

mod completions;
mod config;
mod dlq;
mod migrate;
mod outbox;
mod serve;
mod users;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use infra::settings::{Config, EXIT_CONFIG};
use infra::telemetry::{LogOutput, TelemetryError, TelemetryGuard};
use tokio::runtime::Runtime;

pub use config::render_effective_config;
pub use dlq::DlqAction;
pub use migrate::MigrateAction;
pub use outbox::OutboxAction;
pub use users::UsersAction;

use crate::settings::Settings;

/// rust-app: a production-ready service on PostgreSQL, Redis and Kafka.
///
/// Configuration comes from environment variables and an optional ./.env file (the environment wins);
/// see docs/configuration.md.
#[derive(Debug, Parser)]
#[command(name = "rust-app", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The exit codes, shown at the end of `--help` (scripts and orchestrators act on them).
pub const EXIT_CODES: &str = "\
Exit codes:
  0   success (serve: stopped by SIGTERM or SIGINT after a graceful shutdown)
  1   failure: the service stopped with an error, a migration, a dead-letter replay or a command's database or
      Kafka work failed (the reason is on stderr)
  2   invalid arguments or subcommand (the usage is on stderr)
  78  invalid configuration: every problem is listed on stderr, secrets masked (EX_CONFIG)";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service until SIGTERM or SIGINT.
    Serve,
    /// Print the effective configuration: every variable, its value (secrets masked) and its source.
    Config,
    /// Apply the database migrations embedded in the binary, printing each one applied, then exit.
    Migrate {
        /// status: list the applied and pending migrations instead.
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Inspect or replay the dead-letter topic (KAFKA_DLQ_TOPIC).
    Dlq {
        /// list or replay.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Inspect or un-park the outbox events parked after OUTBOX_MAX_ATTEMPTS rejections by Kafka.
    Outbox {
        /// parked or unpark.
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Manage users from the command line (the first administrator).
    Users {
        /// create-admin.
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Print a shell completion script for bash, zsh or fish to stdout.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// Runs the command `cli` names (`serve` when none) with the configuration of the environment and ./.env; an
/// invalid configuration is printed and exits with EXIT_CONFIG. Completions need no configuration.
pub fn run(cli: Cli) -> ExitCode {
    if let Some(Command::Completions { shell }) = cli.command {
        completions::print(shell);
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("rust-app: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", render_effective_config(&settings.config));
            ExitCode::SUCCESS
        }
        Command::Serve => serve::run(settings),
        Command::Migrate { action } => migrate::run(&settings.config, action),
        Command::Dlq { action } => dlq::run(&settings.config, action),
        Command::Outbox { action } => outbox::run(&settings.config, action),
        Command::Users { action } => users::run(&settings, action),
        Command::Completions { shell } => {
            completions::print(shell);
            ExitCode::SUCCESS
        }
    }
}

/// The async runtime for a subcommand; on failure the error is printed and the exit code returned.
fn runtime() -> Result<Runtime, ExitCode> {
    Runtime::new().map_err(|err| {
        eprintln!("rust-app: cannot start the async runtime: {err}");
        ExitCode::FAILURE
    })
}

/// Installs logs and traces inside `runtime`: the OTLP exporter's connection task is spawned on it.
fn start_telemetry(runtime: &Runtime, config: &Config, output: LogOutput) -> Result<TelemetryGuard, TelemetryError> {
    let _inside = runtime.enter();
    infra::telemetry::init(&config.service, output)
}
