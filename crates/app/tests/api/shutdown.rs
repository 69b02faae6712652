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

/// A plain HTTP/1.1 request on `stream`, and everything the server sent until it closed the connection.
async fn livez_on(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET /livez HTTP/1.1\r\nhost: shutdown-test\r\n\r\n").await.expect("send the request");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    read.expect("the server closed the connection after answering").expect("read the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Waits (bounded) until the server refuses new connections: it has stopped accepting.
async fn until_refused(address: &str) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(address).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{address} still accepted connections 10 s after SIGTERM");
}

/// The answer was whole (the server closed the connection after it: [`livez_on`] read to the end).
fn assert_answered(answer: &str, which: &str) {
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("{\"status\":\"up\"}"), "{which}: {answer:?}");
}

/// hyper-util's graceful shutdown cancelled a connection whose first request head it had not read yet: a client
/// that connected just before SIGTERM got a reset (the fault matrix saw one under load).
#[tokio::test]
async fn a_connection_opened_before_sigterm_has_its_first_request_answered() {
    let mut service = ServeProcess::start(&[]).await;
    let address = service.address.trim_start_matches("http://").to_string();
    let mut early = tokio::net::TcpStream::connect(&address).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    service.terminate();
    until_refused(&address).await;

    let answer = livez_on(&mut early).await;
    assert_answered(&answer, "the connection opened before SIGTERM");
    let status = service.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "logs:\n{}", service.output());
}

/// Connections the kernel completed but the server had not accepted yet — here held back by the connection cap
/// (one accepted and waiting for a slot, one in the listen backlog) — are served at shutdown, not reset.
#[tokio::test]
async fn connections_waiting_for_a_slot_or_in_the_backlog_at_sigterm_are_answered() {
    let hole = BlackHole::start().await;
    let redis = hole.addr.to_string();
    let env = [("REDIS_ADDR", redis.as_str()), ("HEALTH_CHECK_TIMEOUT", "3s"), ("HTTP_MAX_CONNECTIONS", "1")];
    let mut service = ServeProcess::start(&env).await;
    let address = service.address.trim_start_matches("http://").to_string();
    // The one slot: a request that waits 3 s on the black hole.
    let slow_url = format!("{}/health/redis", service.address);
    let slow = tokio::spawn(async move { reqwest::get(slow_url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut waiting_for_a_slot = tokio::net::TcpStream::connect(&address).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut in_the_backlog = tokio::net::TcpStream::connect(&address).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    service.terminate();
    until_refused(&address).await;

    assert_answered(&livez_on(&mut waiting_for_a_slot).await, "the connection waiting for a slot");
    assert_answered(&livez_on(&mut in_the_backlog).await, "the connection in the backlog");
    let slow = slow.await.expect("task").expect("the request in flight got its answer");
    assert_eq!(slow.status(), 503);
    let status = service.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "logs:\n{}", service.output());
}
