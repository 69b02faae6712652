//! Passwords in connection strings never come out of the real binary: not in `rust-app config`, not in the
//! exit-78 message, not in `/health`, not in its logs. The property test over every password shape is in
//! `crates/infra/tests/config.rs`; these run the process itself with the shapes that broke redaction before.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{ServeProcess, TempDir, binary};

/// Passwords as a human pastes them, unencoded: each delimiter makes the URL parse differently.
const PASSWORDS: [&str; 7] = [
    "abc#Pw9marker",
    "12#Pw9marker",
    "12/Pw9marker",
    "12?Pw9marker",
    "p@ss&Pw9marker=1",
    "a,redis://Pw9marker",
    "%41:Pw9marker\\x",
];

/// The password of the local stack's PostgreSQL role (see `infra::postgres::DEFAULT_DSN`).
const STACK_PASSWORD: &str = "rust_app_password";

fn dsn_shapes(password: &str) -> [(&'static str, String); 4] {
    [
        ("POSTGRES_DSN", format!("postgres://u:{password}@db/app")),
        ("POSTGRES_DSN", format!("postgres://u@db/app?sslmode=disable&password={password}")),
        ("REDIS_ADDR", format!("redis://:{password}@cache:6379")),
        ("REDIS_ADDR", format!("redis://u:{password}@n1:7000,redis://n2:7000")),
    ]
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let workdir = TempDir::new();
    binary(env, &workdir.0).args(args).output().expect("run rust-app")
}

fn printed(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn config_and_the_exit_78_message_never_print_a_dsn_password() {
    for password in PASSWORDS {
        for (name, value) in dsn_shapes(password) {
            let listing = run(&["config"], &[(name, &value)]);
            let text = printed(&listing);
            assert!(matches!(listing.status.code(), Some(0 | 78)), "{name}={value}: {text}");
            assert!(text.contains(name), "the variable is listed or reported: {text}");
            assert!(!text.contains("Pw9marker"), "{name}={value} leaked: {text}");

            let invalid = run(&[], &[(name, &value), ("REDIS_POOL_SIZE", "0"), ("REDIS_MODE", "cluster")]);
            let text = printed(&invalid);
            assert_eq!(invalid.status.code(), Some(78), "{text}");
            assert!(text.contains("REDIS_POOL_SIZE=\"0\""), "{text}");
            assert!(!text.contains("Pw9marker"), "{name}={value} leaked: {text}");
        }
    }
}

#[test]
fn an_issue_example_is_masked_in_the_listing_and_refused_with_the_password_masked() {
    let listing = run(&["config"], &[("POSTGRES_DSN", "postgres://u@db/app?password=Pw9marker")]);
    let text = printed(&listing);
    assert_eq!(listing.status.code(), Some(0), "{text}");
    assert!(text.contains("postgres://u@db/app?password=***"), "{text}");

    let refused = run(&["config"], &[("POSTGRES_DSN", "postgres://u:abc#Pw9marker@db/app")]);
    let text = printed(&refused);
    assert_eq!(refused.status.code(), Some(78), "{text}");
    assert!(text.contains("POSTGRES_DSN=\"postgres://***\""), "{text}");
}

/// The running service with the stack's real password in a `password` parameter (so PostgreSQL is up only
/// if it was used) and a Redis AUTH password in REDIS_ADDR: neither is in `/health` nor in a trace-level log.
#[tokio::test]
async fn health_and_logs_of_a_running_service_never_show_a_dsn_password() {
    let dsn = format!("postgres://rust_app_user@127.0.0.1:5432/rust_app?sslmode=disable&password={STACK_PASSWORD}");
    let redis = "redis://:Redis-Pw9marker@127.0.0.1:6379";
    let env = [("POSTGRES_DSN", dsn.as_str()), ("REDIS_ADDR", redis), ("LOG_LEVEL", "trace")];
    let service = ServeProcess::start(&env).await;

    let health = postgres_up_health(&service.address).await;
    assert_eq!(health["components"]["postgres"]["status"], "up", "{health:#}");
    assert_eq!(health["components"]["postgres"]["details"]["address"], "127.0.0.1:5432/rust_app", "{health:#}");
    // The stack's Redis has no password: AUTH fails, and the failure names the address, masked.
    let redis_error = health["components"]["redis"]["error"].as_str().unwrap_or_default();
    assert!(redis_error.starts_with("redis://:***@127.0.0.1:6379: "), "{health:#}");
    let shown = health.to_string();
    assert!(!shown.contains(STACK_PASSWORD) && !shown.contains("Pw9marker"), "{health:#}");

    let logs = service.stop().await;
    assert!(logs.contains("rust-app built"), "the logs were captured: {logs}");
    assert!(!logs.contains(STACK_PASSWORD), "PostgreSQL password in the logs");
    assert!(!logs.contains("Pw9marker"), "Redis password in the logs");
}

/// `/health` once PostgreSQL answers (the pool connects lazily), or the last answer after 15 s.
async fn postgres_up_health(address: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body: Value =
            reqwest::get(format!("{address}/health")).await.expect("GET /health").json().await.expect("JSON");
        if body["components"]["postgres"]["status"] == "up" || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
