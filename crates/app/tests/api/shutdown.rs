//! Graceful shutdown of the real binary on SIGTERM.

use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{BlackHole, TempDir, binary, free_port, unique};

/// The running binary; killed if the test ends before it exited, so a failing test leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the binary with `env` and waits until it answers /livez.
async fn start(env: &[(&str, &str)], workdir: &TempDir) -> (Running, String) {
    let port = free_port().to_string();
    let topic = unique("shutdown-test");
    let group = unique("shutdown-group");
    let mut all = vec![
        ("APP_HOST", "127.0.0.1"),
        ("APP_PORT", port.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        ("KAFKA_SESSION_TIMEOUT", "6"),
    ];
    all.extend_from_slice(env);
    let child = Running(
        binary(&all, &workdir.0).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn rust-app"),
    );
    let address = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if reqwest::get(format!("{address}/livez")).await.is_ok_and(|r| r.status() == 200) {
            return (child, address);
        }
        assert!(Instant::now() < deadline, "rust-app did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn terminate(Running(child): &Running) {
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

/// Waits for the process to exit, bounded: a shutdown that hangs fails the test instead of hanging it.
async fn wait_exit(Running(child): &mut Running, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            panic!("rust-app did not exit within {limit:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn output(Running(child): &mut Running) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

#[tokio::test]
async fn sigterm_lets_the_slow_request_in_flight_finish_then_exits_zero() {
    let hole = BlackHole::start().await;
    let workdir = TempDir::new();
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
    let (mut child, address) = start(&env, &workdir).await;

    // /health/redis hangs on the black hole until the 2 s health timeout: a slow request.
    let slow = tokio::spawn(async move { reqwest::get(format!("{address}/health/redis")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    terminate(&child);

    let response = slow.await.expect("task").expect("the in-flight request got its answer");
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"], "check timed out after 2s");

    let status = wait_exit(&mut child, Duration::from_secs(15)).await;
    let logs = output(&mut child);
    assert_eq!(status.code(), Some(0), "exit status; logs:\n{logs}");
    assert!(logs.contains("draining in-flight requests") && logs.contains("\"stopped\""), "{logs}");
    assert!(!logs.contains(secret), "a secret reached the logs:\n{logs}");
}

#[tokio::test]
async fn sigterm_never_waits_longer_than_the_shutdown_timeout() {
    let hole = BlackHole::start().await;
    let workdir = TempDir::new();
    let redis = hole.addr.to_string();
    let env = [("REDIS_ADDR", redis.as_str()), ("HEALTH_CHECK_TIMEOUT", "60s"), ("SHUTDOWN_TIMEOUT", "1s")];
    let (mut child, address) = start(&env, &workdir).await;
    let stuck = tokio::spawn(async move { reqwest::get(format!("{address}/health/redis")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate(&child);
    let status = wait_exit(&mut child, Duration::from_secs(10)).await;
    let logs = output(&mut child);
    assert_eq!(status.code(), Some(0), "logs:\n{logs}");
    assert!(logs.contains("abandoning them"), "{logs}");
    assert!(stuck.await.expect("task").is_err(), "the abandoned request's connection was closed");
}
