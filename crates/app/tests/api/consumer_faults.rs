//! The event consumer under database faults and handler panics, against the real stack: a read-only database
//! and statement timeouts are waited for (nothing dead-lettered, every event recorded once the database
//! answers), a data error is dead-lettered as before, and a consumer that panics is restarted by its
//! supervisor (counted, shown in /health) and goes on consuming.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use app::events::{Applied, Event, EventProjection, ProjectionError};
use async_trait::async_trait;
use infra::config::Sources;
use infra::kafka::dlq::{DeadLetter, read_dead_letters};
use infra::settings::Config;
use serde_json::{Value, json};
use test_support::eventually;
use test_support::postgres::TestDb;

use crate::helpers::{TestApp, as_admin, spawn_admin_app, spawn_app_with, unique};

/// Bound on waiting for the consumer to record an event: its group join on tansu alone takes a few seconds.
const RECORDED_WITHIN: Duration = Duration::from_secs(60);
/// How long a fault is kept once the consumer is seen failing on it: with one retry of 10 ms, the consumer
/// used to dead-letter the event well within this time.
const FAULT_KEPT: Duration = Duration::from_secs(4);

/// One retry, 10 ms apart: a failure the consumer does not wait for is dead-lettered within a second.
fn overrides<'a>(dsn: &'a str, topic: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("POSTGRES_DSN", dsn), ("KAFKA_TOPIC", topic), ("KAFKA_MAX_RETRIES", "1"), ("KAFKA_RETRY_BACKOFF", "10ms")]
}

async fn publish(app: &TestApp, kind: &str, data: Value) -> String {
    let body = json!({"type": kind, "key": unique("key"), "data": data});
    let response = app.client.post(format!("{}/events", app.address)).json(&body).send().await.expect("sent");
    assert_eq!(response.status(), 202);
    let published: Value = response.json().await.expect("JSON");
    published["id"].as_str().expect("id").to_string()
}

async fn is_recorded(app: &TestApp, id: &str) -> bool {
    app.get(&format!("/events/{id}")).await.status() == 200
}

async fn wait_recorded(app: &TestApp, id: &str) {
    let recorded = eventually(RECORDED_WITHIN, async || is_recorded(app, id).await).await;
    assert!(recorded, "event {id} not recorded within {RECORDED_WITHIN:?}");
}

/// The value of the sample `series` (name and labels exactly as exposed) on /metrics; 0 when absent.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.expect("metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn dead_letters(topic: &str) -> Vec<DeadLetter> {
    let env = [("KAFKA_BROKERS", "127.0.0.1:9092"), ("KAFKA_TOPIC", topic)];
    let kafka = Config::from_sources(&Sources::from_env_pairs(&env)).expect("config").kafka;
    read_dead_letters(&kafka, Duration::from_secs(20)).await.expect("read the dead-letter topic")
}

/// Closes every connection the app holds to `db`, so the next ones pick up the database's new settings (as
/// after a failover).
fn drop_connections(db: &TestDb) {
    db.query(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    ));
}

/// Waits until the consumer has failed on the event at least `attempts` times (so it is not merely idle), or
/// dead-lettered it.
async fn wait_failures(app: &TestApp, topic: &str, attempts: f64) {
    let failures = format!("kafka_handler_failures_total{{topic=\"{topic}\"}}");
    let dead_lettered = format!("kafka_dead_lettered_total{{topic=\"{topic}\"}}");
    let failing = eventually(RECORDED_WITHIN, async || {
        metric(app, &failures).await >= attempts || metric(app, &dead_lettered).await > 0.0
    })
    .await;
    assert!(failing, "the consumer never failed {attempts} times on the event");
}

/// Checks the consumer waited (no dead letter, the event not recorded yet, the health detail set), then that
/// the event is recorded once `heal` ran, and that nothing was dead-lettered.
async fn assert_waits_then_recovers(app: &TestApp, topic: &str, id: &str, heal: impl FnOnce()) {
    wait_failures(app, topic, 3.0).await;
    tokio::time::sleep(FAULT_KEPT).await;
    let dead_lettered = format!("kafka_dead_lettered_total{{topic=\"{topic}\"}}");
    assert_eq!(metric(app, &dead_lettered).await, 0.0, "dead-lettered during the fault");
    let (_, kafka) = app.get_json("/health/kafka").await;
    assert_eq!(kafka["details"]["consumer"]["waiting_for_dependency"], true, "{kafka}");
    let waiting = format!("kafka_consumer_waiting{{topic=\"{topic}\"}}");
    assert_eq!(metric(app, &waiting).await, 1.0, "the waiting gauge is set");
    heal();
    wait_recorded(app, id).await;
    assert_eq!(metric(app, &dead_lettered).await, 0.0);
    let done_waiting = eventually(Duration::from_secs(10), async || {
        let (_, kafka) = app.get_json("/health/kafka").await;
        kafka["details"]["consumer"]["waiting_for_dependency"] == false && metric(app, &waiting).await == 0.0
    })
    .await;
    assert!(done_waiting, "still reported waiting after the event was recorded");
    assert!(dead_letters(topic).await.is_empty(), "nothing in the dead-letter topic");
}

#[tokio::test]
async fn a_read_only_database_is_waited_for_and_nothing_is_dead_lettered() {
    let (db, topic) = (TestDb::create(), unique("read-only"));
    let dsn = db.dsn();
    let app = spawn_admin_app(&overrides(&dsn, &topic)).await;
    let before = publish(&app, "test.before", json!({})).await;
    wait_recorded(&app, &before).await;

    // A failover in progress: new connections land on a read-only server.
    db.query(&format!("ALTER DATABASE {} SET default_transaction_read_only = on", db.name));
    drop_connections(&db);
    let during = publish(&app, "test.during", json!({})).await;
    assert_waits_then_recovers(&app, &topic, &during, || {
        // The session connecting to the database is read-only too, unless it asks otherwise.
        db.query(&format!("BEGIN READ WRITE; ALTER DATABASE {} RESET default_transaction_read_only; COMMIT", db.name));
        drop_connections(&db);
    })
    .await;
    let read_only_errors = metric(&app, "postgres_errors_total{class=\"25\"}").await;
    assert!(read_only_errors >= 1.0, "the consumer met the read-only server (SQLSTATE 25006)");
    app.stop().await;
}

/// `psql` holding an exclusive lock on `table` until dropped.
struct LockHolder(Child);

impl LockHolder {
    fn lock(dsn: &str, table: &str) -> Self {
        let mut child = Command::new("psql")
            .args([dsn, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
        let stdin = child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 'locked';").expect("write");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "locked");
        LockHolder(child)
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        if let Some(stdin) = self.0.stdin.as_mut() {
            let _ = writeln!(stdin, "ROLLBACK;");
        }
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn statements_cut_by_the_statement_timeout_are_waited_for_and_nothing_is_dead_lettered() {
    let (db, topic) = (TestDb::create(), unique("statement-timeout"));
    let dsn = db.dsn();
    let mut env = overrides(&dsn, &topic);
    env.push(("POSTGRES_STATEMENT_TIMEOUT", "1"));
    let app = spawn_admin_app(&env).await;
    let before = publish(&app, "test.before", json!({})).await;
    wait_recorded(&app, &before).await;

    // The event log's insert waits for the lock until the statement timeout cancels it (SQLSTATE 57014).
    let lock = LockHolder::lock(&dsn, "event_log");
    let during = publish(&app, "test.during", json!({})).await;
    assert_waits_then_recovers(&app, &topic, &during, move || drop(lock)).await;
    assert!(metric(&app, "postgres_errors_total{class=\"57\"}").await >= 1.0, "statements timed out");
    app.stop().await;
}

#[tokio::test]
async fn a_data_error_is_still_dead_lettered_after_the_retries() {
    let (db, topic) = (TestDb::create(), unique("data-error"));
    let dsn = db.dsn();
    let app = spawn_admin_app(&overrides(&dsn, &topic)).await;
    // Valid JSON that PostgreSQL's jsonb refuses (SQLSTATE 22P05): no wait makes it storable.
    let id = publish(&app, "test.nul", json!({"text": "before\u{0}after"})).await;
    let dead_lettered = format!("kafka_dead_lettered_total{{topic=\"{topic}\"}}");
    let gone = eventually(RECORDED_WITHIN, async || metric(&app, &dead_lettered).await >= 1.0).await;
    assert!(gone, "the event was not dead-lettered");
    let letters = dead_letters(&topic).await;
    assert_eq!(letters.len(), 1);
    let error = letters[0].error().unwrap_or_default();
    assert!(error.contains("22P05"), "{error}");
    assert_eq!(letters[0].attempts(), Some(2), "the first call and one retry");
    assert!(!is_recorded(&app, &id).await);
    app.stop().await;
}

/// A projection that panics on the first `test.panic` event it sees (a test hook for supervision).
#[derive(Default)]
struct PanicsOnce(AtomicBool);

#[async_trait]
impl EventProjection for PanicsOnce {
    fn name(&self) -> &'static str {
        "panics-once"
    }

    async fn apply(&self, event: &Event) -> Result<Applied, ProjectionError> {
        if event.kind.as_str() == "test.panic" && !self.0.swap(true, Ordering::SeqCst) {
            panic!("test hook: the projection panics once");
        }
        Ok(Applied::Ignored)
    }
}

#[tokio::test]
async fn a_consumer_that_panics_is_restarted_counted_and_shown_in_health_and_goes_on_consuming() {
    let topic = unique("supervised");
    let projection = Arc::new(PanicsOnce::default());
    let app = as_admin(spawn_app_with(&[("KAFKA_TOPIC", &topic)], |app| app.with_projection(projection)).await).await;

    let restarts = "background_task_restarts_total{task=\"event-consumer\"}";
    assert_eq!(metric(&app, restarts).await, 0.0, "registered at zero");
    publish(&app, "test.panic", json!({})).await;
    let restarted = eventually(RECORDED_WITHIN, async || metric(&app, restarts).await >= 1.0).await;
    assert!(restarted, "the consumer was not restarted");

    // Work goes on: a new event is recorded by the restarted consumer.
    let after = publish(&app, "test.after", json!({})).await;
    wait_recorded(&app, &after).await;
    assert_eq!(metric(&app, restarts).await, 1.0, "restarted once");
    let (status, health) = app.get_json("/health").await;
    assert_eq!(status, 200, "{health}");
    let task = &health["components"]["tasks"]["details"]["event-consumer"];
    assert_eq!(task["state"], "running", "{health}");
    assert_eq!(task["restarts"], 1, "{health}");
    let failure = task["last_failure"].as_str().unwrap_or_default();
    assert!(failure.contains("panicked: test hook: the projection panics once"), "{health}");
    for other in ["outbox-relay", "event-log-retention", "metrics-upkeep"] {
        assert_eq!(health["components"]["tasks"]["details"][other]["restarts"], 0, "{health}");
    }
    app.stop().await;
}
