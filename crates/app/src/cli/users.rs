//! `rust-app users create-admin`: makes an administrator. There is no default admin account and no HTTP route
//! that grants the role: whoever runs this command has the database credentials already.

use std::io::BufRead;
use std::process::ExitCode;

use clap::Subcommand;
use infra::postgres::PostgresClient;
use infra::redis::RedisClient;
use infra::telemetry::LogOutput;

use crate::settings::Settings;
use crate::users::{Credentials, UserError};

/// What to do with users.
#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Register an administrator, reading the password from the first line of standard input (never from an
    /// argument: arguments show in `ps` and shell history). With `--promote`, make the already registered user
    /// with this email an administrator instead (no password needed).
    CreateAdmin {
        /// The administrator's email.
        #[arg(long)]
        email: String,
        /// The display name (registration only).
        #[arg(long, default_value = "Administrator")]
        name: String,
        /// Promote the registered user with this email instead of registering one.
        #[arg(long)]
        promote: bool,
    },
}

/// Runs `action`; prints the admin's id, or why not, and exits non-zero on failure.
pub fn run(settings: &Settings, action: UsersAction) -> ExitCode {
    let UsersAction::CreateAdmin { email, name, promote } = action;
    let password = if promote {
        None
    } else {
        match read_password() {
            Ok(password) => Some(password),
            Err(message) => {
                eprintln!("rust-app: {message}");
                return ExitCode::FAILURE;
            }
        }
    };
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let telemetry = super::start_telemetry(&runtime, &settings.config, LogOutput::Stderr);
    let result = runtime.block_on(create_admin(settings, email, name, password));
    if let Ok(telemetry) = telemetry {
        telemetry.shutdown();
    }
    match result {
        Ok(id) => {
            println!("admin {id}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("rust-app: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn create_admin(
    settings: &Settings,
    email: String,
    name: String,
    password: Option<String>,
) -> Result<uuid::Uuid, String> {
    let postgres = PostgresClient::connect_lazy(&settings.config.postgres).map_err(|err| err.to_string())?;
    let redis = RedisClient::connect_lazy(&settings.config.redis).map_err(|err| err.to_string())?;
    crate::migrations::apply(&postgres).await.map_err(|err| format!("migrations: {err}"))?;
    let users = crate::startup::users(settings, &postgres, &redis, &infra::redis::ClientCache::disabled());
    let created = match password {
        None => users.promote(&email).await,
        Some(password) => {
            users.register_admin(Credentials { name: Some(name), email: Some(email), password: Some(password) }).await
        }
    };
    postgres.close().await;
    created.map(|user| user.id).map_err(describe)
}

/// The password from the first line of standard input (a pipe or a terminal).
fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|err| format!("cannot read the password: {err}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err("give the password on standard input, e.g. `rust-app users create-admin --email E < file`".into());
    }
    Ok(password)
}

fn describe(err: UserError) -> String {
    match err {
        UserError::Invalid(fields) => {
            let problems: Vec<String> = fields.iter().map(|f| format!("{} {}", f.field, f.message)).collect();
            format!("invalid: {}", problems.join("; "))
        }
        UserError::EmailTaken => "this email is registered already: use --promote to make that user an admin".into(),
        UserError::NotFound => "no user has this email".into(),
        other => other.to_string(),
    }
}
