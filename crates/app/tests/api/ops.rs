//! `/ops` in a real browser: Debian's chromium, headless (installed by scripts/check-observability, which
//! scripts/test runs). The page is rendered with `--dump-dom` and its text checked, healthy and with Redis
//! stopped; screenshots of both land in target/artifacts/ (ops-healthy.png, ops-degraded.png) for CI to keep.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use infra::config::Sources;
use infra::kafka::{KafkaClient, KafkaProducer};
use infra::settings::Config;
use serde_json::Value;
use test_support::fakes::{RedisServer, TempDir};
use test_support::unique;

use crate::helpers::{TestApp, spawn_app};

/// The longest one chromium run may take (a cold start on a loaded 2-core machine takes a few seconds).
const BROWSER_LIMIT: Duration = Duration::from_secs(90);

/// Runs headless chromium on `url` with `extra` arguments and returns what it printed on stdout.
async fn chromium(extra: &[String], url: &str) -> String {
    let profile = TempDir::new();
    let child = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run chromium ({err}): scripts/check-observability installs it"));
    let output = tokio::time::timeout(BROWSER_LIMIT, child.wait_with_output())
        .await
        .expect("chromium finished in time")
        .expect("chromium's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed ({}): {stderr}", output.status);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The text a reader sees in `dom`: tags dropped, the few entities the page uses decoded, whitespace folded.
fn visible_text(dom: &str) -> String {
    let body = dom.split_once("<body").map_or(dom, |(_, body)| body);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'");
    text.replace("&amp;", "&").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Renders `/ops` in chromium: its visible text.
async fn rendered_text(app: &TestApp) -> String {
    let dom = chromium(&["--dump-dom".to_string()], &format!("{}/ops", app.address)).await;
    assert!(dom.contains("http-equiv=\"refresh\""), "the page refreshes itself: {dom}");
    visible_text(&dom)
}

/// Screenshots `/ops` into target/artifacts/`name` and checks a PNG was written.
async fn screenshot(app: &TestApp, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts");
    std::fs::create_dir_all(&dir).expect("target/artifacts");
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let args = [format!("--screenshot={}", path.display()), "--window-size=1280,1600".to_string()];
    chromium(&args, &format!("{}/ops", app.address)).await;
    let png = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{} is a screenshot", path.display());
    path
}

/// The app's own event and dead-letter topics (spawn_app gives it its own event topic; the dead-letter topic is
/// shared by default).
fn own_topics() -> [(&'static str, String); 2] {
    [("KAFKA_DLQ_TOPIC", unique("ops-dlq")), ("KAFKA_TOPIC", unique("ops-events"))]
}

/// Waits until the app's consumer owns its partitions.
async fn consumer_assigned(app: &TestApp) {
    // Assigned, and the lag of each partition measured (librdkafka's statistics come every second).
    let assigned = |_: u16, b: &Value| {
        let consumer = &b["details"]["consumer"];
        consumer["assigned_partitions"].as_array().is_some_and(|p| p.len() == 3)
            && consumer["lag"].as_object().is_some_and(|lag| lag.len() == 3)
    };
    let (_, body) = app.eventually("/health/kafka", Duration::from_secs(40), assigned).await;
    assert!(assigned(200, &body), "the consumer joined: {body:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_page_renders_every_section_in_a_headless_browser() {
    let topics = own_topics();
    let env: Vec<(&str, &str)> = topics.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = spawn_app(&env).await;
    consumer_assigned(&app).await;
    // One dead letter, written straight to the app's dead-letter topic.
    let config = Config::from_sources(&Sources::from_env_pairs(&env)).expect("configuration").kafka;
    let admin = KafkaClient::connect_lazy(&config).expect("admin");
    admin.ensure_topic(&config.dlq_topic, 1, Duration::from_secs(10)).await.expect("dead-letter topic");
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    producer.produce(&config.dlq_topic, Some("k".as_bytes()), b"{}", &[]).await.expect("dead letter");

    let text = rendered_text(&app).await;
    for expected in [
        "rust-app up",
        "Version",
        "Uptime",
        "Dependencies",
        "kafka up",
        "postgres up",
        "redis up",
        "Circuit breakers",
        "postgres closed",
        "redis closed",
        "Connection pools",
        "Kafka consumer",
        "member",
        "Assigned partition Lag (records) 0 0 1 0 2 0",
        "Outbox",
        "Pending events",
        "Dead-letter topic",
        "Records held 1",
    ] {
        assert!(text.contains(expected), "{expected:?} in the rendered page:\n{text}");
    }
    assert!(text.contains(&topics[1].1), "the consumed topic: {text}");
    assert!(text.contains(&topics[0].1), "the dead-letter topic: {text}");
    assert!(!text.contains("rust_app_password"), "no secret: {text}");
    screenshot(&app, "ops-healthy.png").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_the_ops_page_still_renders_and_shows_redis_down() {
    let mut redis = RedisServer::start();
    let redis_addr = redis.addr();
    let topics = own_topics();
    let mut env: Vec<(&str, &str)> = topics.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([("REDIS_ADDR", redis_addr.as_str()), ("REDIS_DIAL_TIMEOUT", "1"), ("REDIS_READ_TIMEOUT", "1")]);
    let app = spawn_app(&env).await;
    consumer_assigned(&app).await;
    redis.kill();
    let redis_down = |_: u16, b: &Value| b["components"]["redis"]["status"] == "down";
    let (_, health) = app.eventually("/health", Duration::from_secs(20), redis_down).await;
    assert!(redis_down(0, &health), "{health:#}");

    let text = rendered_text(&app).await;
    for expected in ["rust-app degraded", "redis down", "postgres up", "kafka up", "Circuit breakers", "Kafka consumer"]
    {
        assert!(text.contains(expected), "{expected:?} in the rendered page:\n{text}");
    }
    assert!(text.contains(&redis_addr), "Redis's error names its address: {text}");
    screenshot(&app, "ops-degraded.png").await;
    app.stop().await;
}

#[tokio::test]
async fn ops_page_is_self_contained_html_without_scripts() {
    let app = spawn_app(&[]).await;
    let response = app.get("/ops").await;
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-store");
    let policy = header("content-security-policy");
    assert!(policy.starts_with("default-src 'none'"), "nothing loads from elsewhere, no script runs: {policy}");
    let html = response.text().await.expect("body");
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
    for absent in ["<script", "<link", "src=", "http://", "https://", "@import", "url("] {
        assert!(!html.contains(absent), "{absent} in {html}");
    }
    app.stop().await;
}
