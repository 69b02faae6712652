//! Logs during an outage, from the real binary's output: a dependency going away is one warning, its return
//! one info line, and the failures in between are counted rather than logged one by one.

use std::time::Duration;

use test_support::kafka::PrivateKafka;
use test_support::postgres::PrivatePostgres;

use crate::helpers::{RedisServer, ServeProcess, free_port};

/// How long a dependency stays down.
const OUTAGE: Duration = Duration::from_secs(10);
/// Bound on librdkafka reconnecting after the outage (its reconnect backoff grows to 10 s).
const RECONNECT_WITHIN: Duration = Duration::from_secs(30);

/// The JSON log lines of `output` at `level`.
fn lines<'a>(output: &'a str, level: &str) -> Vec<&'a str> {
    let level = format!("\"level\":\"{level}\"");
    output.lines().filter(|line| line.contains(&level)).collect()
}

/// A client whose requests give up after 5 s (a hang guard, not a timing assertion).
fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client")
}

/// Requests /health/kafka every 200 ms for `period`: the health check's admin client tries the broker too.
async fn keep_asking(service: &ServeProcess, period: Duration) {
    let deadline = tokio::time::Instant::now() + period;
    let client = client();
    while tokio::time::Instant::now() < deadline {
        let _ = client.get(format!("{}/health/kafka", service.address)).send().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn consumer_is_member(service: &ServeProcess) -> bool {
    let Ok(response) = reqwest::get(format!("{}/health/kafka", service.address)).await else { return false };
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["details"]["consumer"]["member"] == true
}

async fn connection_errors(service: &ServeProcess) -> f64 {
    let text = reqwest::get(format!("{}/metrics", service.address)).await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|line| line.starts_with("kafka_connection_errors_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_broker_outage_logs_one_warning_and_one_recovery_line_and_counts_the_failures() {
    let port = free_port();
    let broker = PrivateKafka::start(port).await;
    let brokers = broker.brokers();
    let service = ServeProcess::start(&[("KAFKA_BROKERS", brokers.as_str()), ("LOG_LEVEL", "info")]).await;
    let joined = test_support::eventually(Duration::from_secs(60), async || consumer_is_member(&service).await).await;
    assert!(joined, "the consumer never joined its group");

    drop(broker);
    keep_asking(&service, OUTAGE).await;
    let errors_during = connection_errors(&service).await;
    let _broker = PrivateKafka::start(port).await;
    keep_asking(&service, RECONNECT_WITHIN).await;
    let output = service.stop().await;

    summary("broker outage", &output);
    let warnings = lines(&output, "WARN");
    let errors = lines(&output, "ERROR");
    let recovered: Vec<&str> =
        lines(&output, "INFO").into_iter().filter(|line| line.contains("Kafka brokers reachable again")).collect();
    let unreachable: Vec<&&str> = warnings.iter().filter(|line| line.contains("Kafka brokers unreachable")).collect();
    eprintln!(
        "broker outage of {OUTAGE:?}: {} WARN, {} ERROR, {} recovery INFO lines; {errors_during} connection errors counted",
        warnings.len(),
        errors.len(),
        recovered.len()
    );
    assert!(errors_during >= 1.0, "the failures are counted");
    assert_eq!(unreachable.len(), 1, "one warning for the outage:\n{}", warnings.join("\n"));
    assert_eq!(recovered.len(), 1, "one info line for the recovery:\n{output}");
    assert!(errors.is_empty(), "no ERROR line:\n{}", errors.join("\n"));
    assert!(warnings.len() <= 5, "at most a handful of warnings:\n{}", warnings.join("\n"));
}

/// Load during an outage: a user read (cache, then database) and a registration every 50 ms, for `period`.
async fn keep_using(service: &ServeProcess, user: &str, period: Duration) {
    let deadline = tokio::time::Instant::now() + period;
    let client = client();
    while tokio::time::Instant::now() < deadline {
        let _ = client.get(format!("{}/users/{user}", service.address)).send().await;
        let email = format!("{}@example.com", test_support::unique("outage"));
        let body = serde_json::json!({"name": "Outage", "email": email, "password": "correct horse battery"});
        let _ = client.post(format!("{}/users", service.address)).json(&body).send().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register(service: &ServeProcess) -> String {
    let email = format!("{}@example.com", test_support::unique("outage"));
    let body = serde_json::json!({"name": "Outage", "email": email, "password": "correct horse battery"});
    let response = reqwest::Client::new().post(format!("{}/users", service.address)).json(&body).send().await;
    let user: serde_json::Value = response.expect("sent").json().await.expect("JSON");
    user["id"].as_str().expect("id").to_string()
}

/// WARN and ERROR lines of `output`, as a summary for the test's output.
fn summary(what: &str, output: &str) -> (usize, usize) {
    let (warnings, errors) = (lines(output, "WARN"), lines(output, "ERROR"));
    eprintln!("{what}: {} WARN, {} ERROR lines", warnings.len(), errors.len());
    for line in warnings.iter().chain(&errors).take(12) {
        eprintln!("  {}", &line[..line.len().min(300)]);
    }
    (warnings.len(), errors.len())
}

/// Load for a second, `set_up(false)`, load through [`OUTAGE`], `set_up(true)`, load for 5 s more; then the
/// service's WARN and ERROR line count and its output. Measured: Redis 2 lines (150 before the outage was logged
/// once), PostgreSQL 6 (14 before: the outage, the breaker's opening, the consumer's wait, the relay's outage and
/// slow statements during the recovery, each once).
async fn outage_under_load(service: ServeProcess, what: &str, mut set_up: impl FnMut(bool)) -> (usize, String) {
    let user = register(&service).await;
    keep_using(&service, &user, Duration::from_secs(1)).await;
    set_up(false);
    keep_using(&service, &user, OUTAGE).await;
    set_up(true);
    keep_using(&service, &user, Duration::from_secs(5)).await;
    let output = service.stop().await;
    let (warnings, errors) = summary(what, &output);
    (warnings + errors, output)
}

#[tokio::test]
async fn a_redis_outage_under_load_logs_a_handful_of_lines() {
    let mut redis = RedisServer::start();
    let address = redis.addr();
    let service = ServeProcess::start(&[("REDIS_ADDR", address.as_str())]).await;
    let (lines, output) =
        outage_under_load(service, "Redis outage under load", |up| if up { redis.restart() } else { redis.kill() })
            .await;
    assert!(lines <= 8, "a log flood:\n{output}");
}

#[tokio::test]
async fn a_postgres_outage_under_load_logs_a_handful_of_lines() {
    let postgres = PrivatePostgres::start(&[], None);
    let dsn = postgres.dsn("");
    let service = ServeProcess::start(&[("POSTGRES_DSN", dsn.as_str())]).await;
    let (lines, output) = outage_under_load(service, "PostgreSQL outage under load", |up| {
        if up { postgres.start_again() } else { postgres.stop() }
    })
    .await;
    // One line per component that meets the outage (the pool, the breaker, the outage log, the relay, the
    // consumer's wait, a failed statement or request or two) — 6 to 9 measured; a flood was 150.
    assert!(lines <= 12, "a log flood:\n{output}");
}
