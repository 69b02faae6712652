//! The outbox relay against the real stack, each test on a database of its own: events written with the
//! users they describe reach the topic exactly once and in order per key — across a broker outage, and with
//! two relays on one database — and sent events are pruned after the retention while pending ones stay.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::users::postgres::PostgresUsers;
use app::users::{Email, Name, NewUser, PasswordHash, Role, StoredChanges, UserRepository};
use async_trait::async_trait;
use infra::config::Sources;
use infra::kafka::{Handler, HandlerError, KafkaClient, KafkaConfig, KafkaConsumer, KafkaProducer, Record};
use infra::postgres::{PostgresClient, sql};
use infra::settings::Config;
use test_support::eventually;
use test_support::kafka::PrivateKafka;
use test_support::postgres::TestDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{TestApp, free_port, spawn_app, unique};

mod recovery;

const SHARED_BROKER: &str = "127.0.0.1:9092";
/// Longest wait for the events to arrive: a group join (3 s with the tests' session timeout), the relay's
/// backoff after an outage and librdkafka's reconnection backoff (up to 10 s) fit in it many times.
const DELIVERED_WITHIN: Duration = Duration::from_secs(90);
/// After the expected count arrived, how long to keep listening for a duplicate.
const DUPLICATES_WITHIN: Duration = Duration::from_secs(3);

/// A row of the outbox as the tests check it.
#[derive(Clone, Debug)]
struct OutboxRow {
    seq: i64,
    id: Uuid,
    key: String,
    event_type: String,
    sent: bool,
    attempts: i32,
}

async fn outbox_rows(client: &PostgresClient) -> Vec<OutboxRow> {
    let rows: Vec<(i64, Uuid, String, String, bool, i32)> = client
        .query(sql("SELECT seq, id, key, event_type, sent_at IS NOT NULL, attempts FROM outbox ORDER BY seq"))
        .await
        .expect("outbox rows");
    rows.into_iter()
        .map(|(seq, id, key, event_type, sent, attempts)| OutboxRow { seq, id, key, event_type, sent, attempts })
        .collect()
}

/// A client of the test's database, with the migrations applied (as the app would at start).
async fn database(db: &TestDb) -> PostgresClient {
    let client =
        PostgresClient::connect_lazy(&crate::helpers::postgres_config(&db.dsn(), &[])).expect("PostgreSQL client");
    app::migrations::apply(&client).await.expect("migrations");
    client
}

/// `users` users, written through the repository POST /users uses: all created, then all renamed `renames`
/// times, then all deleted — `users × (renames + 2)` events, the keys interleaved in the outbox.
async fn write_users(client: &PostgresClient, users: usize, renames: usize) {
    let repository = PostgresUsers::new(client.clone());
    let tag = unique("outbox");
    let mut ids = Vec::new();
    for n in 0..users {
        let user = NewUser {
            id: Uuid::now_v7(),
            name: Name::try_from(format!("User {n}")).expect("name"),
            email: Email::try_from(format!("{tag}-{n}@example.com")).expect("email"),
            password_hash: PasswordHash::from_stored("x".into()),
            role: Role::User,
        };
        ids.push(repository.create(&user).await.expect("user created").id);
    }
    for round in 0..renames {
        for (n, id) in ids.iter().enumerate() {
            let changes = StoredChanges {
                name: Some(Name::try_from(format!("User {n} v{round}")).expect("name")),
                ..Default::default()
            };
            assert!(repository.update(*id, &changes).await.expect("user updated").is_some());
        }
    }
    for id in &ids {
        assert!(repository.delete(*id).await.expect("user deleted"));
    }
}

fn kafka_config(brokers: &str, topic: &str) -> KafkaConfig {
    let group = unique("outbox-reader");
    let env = [
        ("KAFKA_BROKERS", brokers),
        ("KAFKA_TOPIC", topic),
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        // tansu makes a group join wait half the session timeout.
        ("KAFKA_SESSION_TIMEOUT", "6"),
    ];
    Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid Kafka configuration").kafka
}

/// Keeps every record it is handed.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<Record>>>);

#[async_trait]
impl Handler for Collected {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        self.0.lock().expect("records").push(record.clone());
        Ok(())
    }
}

impl Collected {
    fn count(&self) -> usize {
        self.0.lock().expect("records").len()
    }

    fn records(&self) -> Vec<Record> {
        self.0.lock().expect("records").clone()
    }
}

/// A consumer of its own group reading the topic from the start.
struct TopicReader {
    collected: Collected,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TopicReader {
    fn start(brokers: &str, topic: &str) -> Self {
        let config = kafka_config(brokers, topic);
        let producer = KafkaProducer::connect_lazy(&config).expect("producer");
        let consumer = KafkaConsumer::connect_lazy(&config, producer).expect("consumer");
        let collected = Collected::default();
        let stop = CancellationToken::new();
        let (handler, token) = (collected.clone(), stop.clone());
        let task = tokio::spawn(async move { consumer.consume(&handler, token, Duration::from_secs(10)).await });
        TopicReader { collected, stop, task }
    }

    /// Waits for `expected` records, then listens a little longer for duplicates; returns all it got.
    async fn read(&self, expected: usize) -> Vec<Record> {
        let arrived = eventually(DELIVERED_WITHIN, async || self.collected.count() >= expected).await;
        assert!(arrived, "{} of {expected} events arrived within {DELIVERED_WITHIN:?}", self.collected.count());
        tokio::time::sleep(DUPLICATES_WITHIN).await;
        self.collected.records()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the reader stopped in time")
            .expect("reader task");
    }
}

/// Every row arrived exactly once, with its key and event type, and each key's events in `seq` order.
fn assert_published_once_in_order(rows: &[OutboxRow], records: &[Record]) {
    let by_id: HashMap<Uuid, &OutboxRow> = rows.iter().map(|row| (row.id, row)).collect();
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let mut records: Vec<&Record> = records.iter().collect();
    records.sort_by_key(|record| (record.partition, record.offset));
    let mut seqs_by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for record in &records {
        let value: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().expect("a value")).expect("the value is the event's JSON");
        let id: Uuid = value["id"].as_str().and_then(|id| id.parse().ok()).expect("an event id");
        let row = by_id.get(&id).unwrap_or_else(|| panic!("{id} is not an outbox event"));
        *seen.entry(id).or_default() += 1;
        assert_eq!(record.key.as_deref(), Some(row.key.as_bytes()), "the key of {id}");
        assert_eq!(record.header("event-type"), Some(row.event_type.as_bytes()), "the event-type of {id}");
        assert_eq!(value["type"], row.event_type.as_str(), "the payload of {id}");
        seqs_by_key.entry(row.key.clone()).or_default().push(row.seq);
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(duplicated.is_empty(), "published more than once: {duplicated:?}");
    let missing: Vec<_> = rows.iter().filter(|row| !seen.contains_key(&row.id)).map(|row| row.seq).collect();
    assert!(missing.is_empty(), "never published (seq): {missing:?}");
    assert_eq!(records.len(), rows.len());
    for (key, seqs) in &seqs_by_key {
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "events of {key} out of order: {seqs:?}");
    }
}

/// The value of an unlabelled sample in the app's /metrics.
async fn sample(app: &TestApp, name: &str) -> Option<f64> {
    let text = app.get("/metrics").await.text().await.expect("metrics body");
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_kafka_is_down_are_published_once_in_key_order_when_it_returns() {
    let db = TestDb::create();
    let client = database(&db).await;
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let (dsn, topic) = (db.dsn(), unique("outbox-outage"));
    // The relay starts with nothing listening at its broker address.
    let app = spawn_app(&[
        ("POSTGRES_DSN", dsn.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("KAFKA_DELIVERY_TIMEOUT", "2s"),
        ("OUTBOX_POLL_INTERVAL", "100ms"),
        ("OUTBOX_BATCH_SIZE", "30"),
        ("HEALTH_CHECK_TIMEOUT", "1s"),
        ("HEALTH_CACHE_TTL", "0"),
    ])
    .await;

    // 20 users × (created, renamed 3 times, deleted) = 100 events, 5 per key.
    write_users(&client, 20, 3).await;
    let (status, body) = app
        .eventually("/health/kafka", Duration::from_secs(30), |status, body| {
            status == 503 && body["error"].as_str().is_some_and(|error| error.contains("outbox_pending=100,"))
        })
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().is_some_and(|error| error.contains("outbox_pending=100,")), "{body}");
    // The gauge is process-wide: other tests' relays set it too, so it is enough to see ours once.
    let gauge =
        eventually(Duration::from_secs(30), async || sample(&app, "outbox_pending_events").await == Some(100.0)).await;
    assert!(gauge, "outbox_pending_events never showed the 100 pending events");
    let pending = outbox_rows(&client).await;
    assert_eq!(pending.len(), 100);
    assert!(pending.iter().all(|row| !row.sent), "nothing is sent while the broker is down");
    // The outage lasts a few rounds (each waits KAFKA_DELIVERY_TIMEOUT), so the relay is well into its backoff.
    let retried = async || outbox_rows(&client).await.iter().any(|row| row.attempts >= 3);
    assert!(eventually(Duration::from_secs(60), retried).await, "the failed sends are counted");

    // The broker comes back on the same address (empty: it keeps nothing in memory across runs).
    let kafka = PrivateKafka::start(port).await;
    let admin = KafkaClient::connect_lazy(&kafka_config(&kafka.brokers(), &topic)).expect("admin client");
    admin.ensure_topic(&topic, 3, Duration::from_secs(10)).await.expect("topic");
    let reader = TopicReader::start(&kafka.brokers(), &topic);
    let records = reader.read(100).await;
    let rows = outbox_rows(&client).await;
    assert!(rows.iter().all(|row| row.sent), "every acknowledged event is marked sent");
    assert_published_once_in_order(&rows, &records);

    let (status, body) = app
        .eventually("/health/kafka", Duration::from_secs(30), |status, body| {
            status == 200 && body["details"]["outbox_pending"] == 0
        })
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["details"]["outbox_pending"], 0, "{body}");
    assert_eq!(body["details"]["outbox_oldest_pending_age_seconds"], 0, "{body}");

    reader.stop().await;
    app.stop().await;
    drop(kafka);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_database_publish_each_event_once_with_its_trace_context() {
    let db = TestDb::create();
    let client = database(&db).await;
    let (dsn, topic) = (db.dsn(), unique("outbox-two-relays"));
    let admin = KafkaClient::connect_lazy(&kafka_config(SHARED_BROKER, &topic)).expect("admin client");
    admin.ensure_topic(&topic, 3, Duration::from_secs(10)).await.expect("topic");

    // An event stored with the trace context of the request that wrote it.
    let (traceparent, tracestate) = ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=value");
    let traced = Uuid::now_v7();
    let payload = serde_json::json!({
        "id": traced, "type": "test.traced", "key": "traced-key", "data": {}, "occurred_at": "2026-11-27T12:00:00Z"
    });
    db.query(&format!(
        "INSERT INTO outbox (id, event_type, key, payload, traceparent, tracestate) \
         VALUES ('{traced}', 'test.traced', 'traced-key', '{payload}'::jsonb, '{traceparent}', '{tracestate}')"
    ));
    // A backlog both relays find at once when they start: 30 users × 5 events.
    write_users(&client, 30, 3).await;

    let overrides = [
        ("POSTGRES_DSN", dsn.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("OUTBOX_POLL_INTERVAL", "20ms"),
        ("OUTBOX_BATCH_SIZE", "7"),
    ];
    // Each app has a consumer group of its own (spawn_app), the same database and topic.
    let (first, second) = tokio::join!(spawn_app(&overrides), spawn_app(&overrides));
    let reader = TopicReader::start(SHARED_BROKER, &topic);
    // More written while both relays poll, in small batches: 10 users × 5 events, and two registrations over
    // HTTP.
    write_users(&client, 10, 3).await;
    first.create_user("Over HTTP").await;
    second.create_user("Over HTTP too").await;

    let records = reader.read(203).await;
    let rows = outbox_rows(&client).await;
    assert_eq!(rows.len(), 203);
    assert!(rows.iter().all(|row| row.sent), "every event is marked sent");
    assert_published_once_in_order(&rows, &records);
    let record = records
        .iter()
        .find(|record| record.key.as_deref() == Some(b"traced-key".as_slice()))
        .expect("the traced event");
    assert_eq!(record.header("traceparent"), Some(traceparent.as_bytes()), "the writer's trace continues");
    assert_eq!(record.header("tracestate"), Some(tracestate.as_bytes()));

    reader.stop().await;
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn pruning_removes_sent_events_older_than_the_retention_and_keeps_the_rest() {
    let db = TestDb::create();
    let client = database(&db).await;
    // More expired rows than one pruning statement deletes; recent sent rows; old rows never sent.
    db.query(
        "INSERT INTO outbox (id, event_type, key, payload, occurred_at, sent_at) \
         SELECT gen_random_uuid(), 'test.expired', 'k', '{}'::jsonb, now() - interval '3 hours', \
         now() - interval '2 hours' FROM generate_series(1, 12000)",
    );
    db.query(
        "INSERT INTO outbox (id, event_type, key, payload, occurred_at, sent_at) \
         SELECT gen_random_uuid(), 'test.recent', 'k', '{}'::jsonb, now() - interval '2 minutes', \
         now() - interval '1 minute' FROM generate_series(1, 5)",
    );
    db.query(
        "INSERT INTO outbox (id, event_type, key, payload, occurred_at) \
         SELECT gen_random_uuid(), 'test.pending', 'k', '{}'::jsonb, now() - interval '3 hours' \
         FROM generate_series(1, 3)",
    );
    // Nothing listens at the broker address: the pending rows stay pending.
    let (dsn, brokers) = (db.dsn(), format!("127.0.0.1:{}", free_port()));
    let app = spawn_app(&[
        ("POSTGRES_DSN", dsn.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_DELIVERY_TIMEOUT", "1s"),
        ("OUTBOX_RETENTION", "1h"),
    ])
    .await;

    let left = async || {
        let rows = outbox_rows(&client).await;
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for row in rows {
            *kinds.entry(row.event_type).or_default() += 1;
        }
        kinds
    };
    let pruned = eventually(Duration::from_secs(30), async || !left().await.contains_key("test.expired")).await;
    let kinds = left().await;
    assert!(pruned, "expired rows left: {kinds:?}");
    assert_eq!(kinds, BTreeMap::from([("test.pending".to_string(), 3), ("test.recent".to_string(), 5)]));
    let counted = sample(&app, "outbox_pruned_total").await.expect("outbox_pruned_total exported");
    assert!(counted >= 12_000.0, "outbox_pruned_total = {counted}");
    let (_, body) = app
        .eventually("/health/kafka", Duration::from_secs(10), |_, body| {
            body["error"].as_str().is_some_and(|error| error.contains("outbox_pending=3,"))
        })
        .await;
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("outbox_pending=3,"), "{body}");
    let age: u64 = error
        .rsplit("outbox_oldest_pending_age_seconds=")
        .next()
        .and_then(|rest| rest.split(',').next())
        .and_then(|age| age.trim().parse().ok())
        .expect("the oldest pending event's age");
    assert!((3 * 3600 - 60..3 * 3600 + 600).contains(&age), "three hours old: {error}");
    app.stop().await;
}
