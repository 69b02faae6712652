//! The command line: configuration errors exit 78 listing every problem; `config` shows sources and masks
//! secrets.

use std::process::Output;

use crate::helpers::{TempDir, binary};

fn run(args: &[&str], env: &[(&str, &str)], workdir: &TempDir) -> Output {
    binary(env, &workdir.0).args(args).output().expect("run rust-app")
}

#[test]
fn bad_configuration_lists_every_problem_and_exits_78() {
    let workdir = TempDir::new();
    let env = [("POSTGRES_MAX_OPEN_CONNS", "abc"), ("REDIS_POOL_SIZE", "0"), ("KAFKA_SECURITY_PROTOCOL", "bogus")];
    let output = run(&[], &env, &workdir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        "rust-app: invalid configuration (3 problems):\n  \
         POSTGRES_MAX_OPEN_CONNS=\"abc\" (environment): must be a positive integer\n  \
         REDIS_POOL_SIZE=\"0\" (environment): must be a positive integer\n  \
         KAFKA_SECURITY_PROTOCOL=\"bogus\" (environment): must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
    );
    assert!(output.stdout.is_empty());
    // `config` validates the same way.
    assert_eq!(run(&["config"], &env, &workdir).status.code(), Some(78));
}

#[test]
fn a_bad_dsn_is_reported_with_its_password_masked() {
    let workdir = TempDir::new();
    let env = [("POSTGRES_DSN", "postgres://app:Hunter2-Secret@db:0/app")];
    let output = run(&[], &env, &workdir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78));
    assert!(stderr.contains("POSTGRES_DSN=\"postgres://app:***@db:0/app\""), "{stderr}");
    assert!(!stderr.contains("Hunter2-Secret"), "{stderr}");
}

#[test]
fn config_shows_each_value_with_its_source_and_masks_secrets() {
    let workdir = TempDir::new();
    std::fs::write(workdir.0.join(".env"), "REDIS_DB=3\nAPP_PORT=9100\nREDIS_PASSWORD=Dotenv-Secret\n").expect(".env");
    let env = [("APP_PORT", "9000"), ("POSTGRES_DSN", "postgres://app:Env-Secret@db:5432/app")];
    let output = run(&["config"], &env, &workdir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let row = |name: &str| -> Vec<String> {
        let line = stdout.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default();
        line.split_whitespace().map(String::from).collect()
    };
    assert_eq!(row("APP_PORT"), ["APP_PORT", "9000", "environment"]);
    assert_eq!(row("REDIS_DB"), ["REDIS_DB", "3", ".env"]);
    assert_eq!(row("REDIS_PASSWORD"), ["REDIS_PASSWORD", "***", ".env"]);
    assert_eq!(row("POSTGRES_DSN"), ["POSTGRES_DSN", "postgres://app:***@db:5432/app", "environment"]);
    assert_eq!(row("KAFKA_TOPIC"), ["KAFKA_TOPIC", "rust-app-events", "default"]);
    assert!(!stdout.contains("Secret"), "{stdout}");
}
