//! `rust-app`: the command-line entry point.

use std::process::ExitCode;

use app::cli::{Cli, Command};
use app::settings::Settings;
use app::{shutdown, startup::Application};
use clap::Parser;
use infra::settings::{Config, EXIT_CONFIG};
use infra::telemetry::{LogOutput, TelemetryError, TelemetryGuard};
use tokio::runtime::Runtime;

/// How long the exiting process waits for tasks still running on the runtime's blocking pool.
const RUNTIME_EXIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("rust-app: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", app::cli::render_effective_config(&settings.config));
            ExitCode::SUCCESS
        }
        Command::Serve => serve(settings),
        Command::Migrate => migrate(settings.config),
        Command::Dlq { action } => app::dlq::run(&settings.config, action),
    }
}

fn migrate(config: Config) -> ExitCode {
    let runtime = match app::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let telemetry = start_telemetry(&runtime, &config, LogOutput::Stderr);
    let result = runtime.block_on(async {
        let client = infra::postgres::PostgresClient::connect_lazy(&config.postgres)?;
        let applied = app::migrations::apply(&client).await;
        client.close().await;
        Ok::<_, anyhow::Error>(applied?)
    });
    if let Ok(telemetry) = telemetry {
        telemetry.shutdown();
    }
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

fn serve(settings: Settings) -> ExitCode {
    let runtime = match app::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let telemetry = match start_telemetry(&runtime, &settings.config, LogOutput::Stdout) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("rust-app: cannot initialise telemetry: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown::signal()).await
    });
    telemetry.shutdown();
    // Dropping the runtime would wait for every blocking task, including a librdkafka close that was abandoned
    // because it hung (rust-rdkafka #453): leave such tasks behind instead, the process is exiting.
    runtime.shutdown_timeout(RUNTIME_EXIT_TIMEOUT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "rust-app stopped with an error");
            eprintln!("rust-app: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs logs and traces inside `runtime`: the OTLP exporter's connection task is spawned on it.
fn start_telemetry(runtime: &Runtime, config: &Config, output: LogOutput) -> Result<TelemetryGuard, TelemetryError> {
    let _inside = runtime.enter();
    infra::telemetry::init(&config.service, output)
}
