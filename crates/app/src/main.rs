//! `rust-app`: the command-line entry point.

use std::process::ExitCode;

use app::cli::{Cli, Command};
use app::{shutdown, startup::Application};
use clap::Parser;
use infra::config::{Config, EXIT_CONFIG};
use infra::telemetry::LogOutput;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("rust-app: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", app::cli::render_effective_config(&config));
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
        Command::Migrate => migrate(config),
        Command::Dlq { action } => app::dlq::run(&config, action),
    }
}

fn migrate(config: Config) -> ExitCode {
    let _ = infra::telemetry::init(&config.service, LogOutput::Stderr);
    let result = tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|runtime| {
        runtime.block_on(async {
            let client = infra::postgres::PostgresClient::connect_lazy(&config.postgres)?;
            let applied = app::migrations::apply(&client).await;
            client.close().await;
            Ok::<_, anyhow::Error>(applied?)
        })
    });
    match result {
        Ok(applied) if applied.is_empty() => {
            println!("database is up to date");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            println!("applied {} migration(s): {applied:?}", applied.len());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("rust-app: migration failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> ExitCode {
    if let Err(err) = infra::telemetry::init(&config.service, LogOutput::Stdout) {
        eprintln!("rust-app: cannot initialise logging: {err}");
        return ExitCode::FAILURE;
    }
    let runtime = match app::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let app = Application::build(config).await?;
        app.run_until_stopped(shutdown::signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "rust-app stopped with an error");
            eprintln!("rust-app: {err:#}");
            ExitCode::FAILURE
        }
    }
}
