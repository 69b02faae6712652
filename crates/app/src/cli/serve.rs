//! `rust-app serve` (the default): runs the service until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::time::Duration;

use infra::telemetry::LogOutput;

use crate::settings::Settings;
use crate::shutdown;
use crate::startup::Application;

/// How long the exiting process waits for tasks still running on the runtime's blocking pool.
const RUNTIME_EXIT_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds and runs the service, then stops it in order; an error is logged, printed and exits non-zero.
pub fn run(settings: Settings) -> ExitCode {
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let telemetry = match super::start_telemetry(&runtime, &settings.config, LogOutput::Stdout) {
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
