//! Graceful shutdown of the real binary on SIGTERM.

use std::time::Duration;

use crate::helpers::{BlackHole, ServeProcess};

#[tokio::test]
async fn sigterm_lets_the_slow_request_in_flight_finish_then_exits_zero() {
    let hole = BlackHole::start().await;
    let secret = "Sh0uld-N0t-Leak";
    let dsn = format!("postgres://rust_app_user:{secret}@127.0.0.1:5432/rust_app?sslmode=disable");
    let env = [
        ("REDIS_ADDR", hole.addr.to_string()),
        ("REDIS_PASSWORD", secret.to_string()),
        ("POSTGRES_DSN", dsn),
        ("POSTGRES_MIGRATE_ON_START", "false".to_string()),
        ("HEALTH_CHECK_TIMEOUT", "2s".to_string()),
        ("SHUTDOWN_TIMEOUT", "20s".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut service = ServeProcess::start(&env).await;
    let address = service.address.clone();

    // /health/redis hangs on the black hole until the 2 s health timeout: a slow request.
    let slow = tokio::spawn(async move { reqwest::get(format!("{address}/health/redis")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    service.terminate();

    let response = slow.await.expect("task").expect("the in-flight request got its answer");
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"], "check timed out after 2s");

    let status = service.wait_exit(Duration::from_secs(15)).await;
    let logs = service.output();
    assert_eq!(status.code(), Some(0), "exit status; logs:\n{logs}");
    assert!(logs.contains("draining in-flight requests") && logs.contains("\"stopped\""), "{logs}");
    assert!(!logs.contains(secret), "a secret reached the logs:\n{logs}");
}

#[tokio::test]
async fn sigterm_never_waits_longer_than_the_shutdown_timeout() {
    let hole = BlackHole::start().await;
    let redis = hole.addr.to_string();
    let env = [("REDIS_ADDR", redis.as_str()), ("HEALTH_CHECK_TIMEOUT", "60s"), ("SHUTDOWN_TIMEOUT", "1s")];
    let mut service = ServeProcess::start(&env).await;
    let address = service.address.clone();
    let stuck = tokio::spawn(async move { reqwest::get(format!("{address}/health/redis")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.terminate();
    let status = service.wait_exit(Duration::from_secs(10)).await;
    let logs = service.output();
    assert_eq!(status.code(), Some(0), "logs:\n{logs}");
    assert!(logs.contains("abandoning them"), "{logs}");
    assert!(stuck.await.expect("task").is_err(), "the abandoned request's connection was closed");
}
