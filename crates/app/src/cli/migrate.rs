//! `rust-app migrate`: applies the migrations embedded in the binary, then exits (for a deploy step that runs
//! before the new version starts).

use std::process::ExitCode;

use infra::postgres::PostgresClient;
use infra::settings::Config;
use infra::telemetry::LogOutput;

/// Applies the pending migrations and says which; a failure is printed and exits non-zero.
pub fn run(config: &Config) -> ExitCode {
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let telemetry = super::start_telemetry(&runtime, config, LogOutput::Stderr);
    let result = runtime.block_on(async {
        let client = PostgresClient::connect_lazy(&config.postgres)?;
        let applied = crate::migrations::apply(&client).await;
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
