//! The user activity trail against the real stack: records produced straight onto the app's topic are applied
//! by the service's consumer exactly once, poison user events go to the dead-letter topic without stopping the
//! consumer, and one user's events land in order. Every test uses user ids of its own (the database is shared).

use std::sync::Arc;
use std::time::Duration;

use app::events::{Event, EventKey, EventType};
use app::users::activity::postgres::PostgresActivityRecorder;
use app::users::activity::{ActivityKind, ActivityRecorder, UserActivityEvent};
use app::users::postgres::PostgresUsers;
use app::users::{Activity, UserRepository};
use infra::config::Sources;
use infra::kafka::KafkaProducer;
use infra::postgres::{PostgresClient, sql};
use infra::settings::Config;
use serde_json::{Value, json};
use test_support::eventually;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::helpers::{TestApp, free_port, spawn_app, unique};

/// Bound on waiting for the consumer: its group join on tansu alone takes a few seconds.
const APPLIED_WITHIN: Duration = Duration::from_secs(60);

/// The app with a topic and dead-letter topic of its own, a producer onto that topic, and the database.
struct Harness {
    app: TestApp,
    config: Config,
    producer: KafkaProducer,
    postgres: PostgresClient,
}

impl Harness {
    async fn start() -> Self {
        let (topic, dlq) = (unique("activity-test"), unique("activity-test-dlq"));
        let env = [("KAFKA_TOPIC", topic.as_str()), ("KAFKA_DLQ_TOPIC", dlq.as_str())];
        let app = spawn_app(&env).await;
        let config = Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid configuration");
        let producer = KafkaProducer::connect_lazy(&config.kafka).expect("producer");
        let postgres = PostgresClient::connect_lazy(&config.postgres).expect("PostgreSQL client");
        Harness { app, config, producer, postgres }
    }

    /// Produces `value` keyed by `user` (one user's records share a partition, so they are consumed in order).
    async fn produce(&self, user: Uuid, value: &[u8]) {
        let key = user.to_string();
        self.producer
            .produce(&self.config.kafka.topic, Some(key.as_bytes()), value, &[])
            .await
            .expect("record produced");
    }

    async fn trail(&self, user: Uuid) -> Vec<Activity> {
        PostgresUsers::new(self.postgres.clone()).activity(user, 100).await.expect("activity readable")
    }

    /// Waits until `user`'s trail holds the entry of `event_id`, then returns the trail.
    async fn trail_once_applied(&self, user: Uuid, event_id: Uuid) -> Vec<Activity> {
        let applied = eventually(APPLIED_WITHIN, async || {
            self.trail(user).await.iter().any(|activity| activity.event_id == event_id)
        })
        .await;
        let trail = self.trail(user).await;
        assert!(applied, "event {event_id} not applied within {APPLIED_WITHIN:?}; trail: {trail:?}");
        trail
    }

    async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(30), self.app.stop()).await.expect("the app stops");
    }
}

/// A user event as the outbox publishes it, `n` milliseconds after `start` (the trail's order).
fn user_event(kind: &str, key: &str, data: Value, start: OffsetDateTime, n: i64) -> Event {
    Event {
        id: Uuid::now_v7(),
        kind: EventType::try_from(kind.to_string()).expect("type"),
        key: EventKey::try_from(key.to_string()).expect("key"),
        data,
        occurred_at: start + time::Duration::milliseconds(n),
    }
}

fn user_json(user: Uuid, name: &str, email: &str) -> Value {
    json!({"id": user, "name": name, "email": email,
           "created_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T10:00:00Z"})
}

fn encode(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("encodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_three_times_is_applied_once() {
    let stack = Harness::start().await;
    let user = Uuid::now_v7();
    let start = OffsetDateTime::now_utc();
    let created = user_event(
        "user_created",
        &user.to_string(),
        json!({"user": user_json(user, "Ada", "ada@example.com")}),
        start,
        0,
    );
    for _ in 0..3 {
        stack.produce(user, &encode(&created)).await;
    }
    // Same partition, after the three copies: once it is applied, so are they.
    let deleted = user_event("user_deleted", &user.to_string(), json!({}), start, 1);
    stack.produce(user, &encode(&deleted)).await;

    let trail = stack.trail_once_applied(user, deleted.id).await;
    let ids: Vec<Uuid> = trail.iter().map(|a| a.event_id).collect();
    assert_eq!(ids, [created.id, deleted.id], "one entry per event: {trail:?}");
    let statement = sql("SELECT count(*) FROM processed_events WHERE consumer = 'user-activity' AND event_id = $1")
        .bind(created.id);
    let (marks,): (i64,) = stack.postgres.query_one(statement).await.expect("count");
    assert_eq!(marks, 1);
    let (status, logged) = stack.app.get_json(&format!("/events/{}", created.id)).await;
    assert_eq!(status, 200, "the event is still recorded in the event log: {logged}");
    // The copies were handled as redeliveries, not failures retried into the dead-letter topic.
    let letters = infra::kafka::dlq::read_dead_letters(&stack.config.kafka, Duration::from_secs(10))
        .await
        .map(|letters| letters.iter().map(|letter| letter.error()).collect::<Vec<_>>());
    assert!(letters.as_ref().is_ok_and(Vec::is_empty), "no dead letters, got these errors: {letters:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_user_event_is_dead_lettered_and_the_next_one_applied() {
    let stack = Harness::start().await;
    let user = Uuid::now_v7();
    let start = OffsetDateTime::now_utc();
    // Both poison records carry the user's id as record key: same partition as the valid event after them.
    stack.produce(user, b"{not json").await;
    let bad_key = user_event("user_deleted", "not-a-uuid", json!({}), start, 0);
    stack.produce(user, &encode(&bad_key)).await;
    let created = user_event(
        "user_created",
        &user.to_string(),
        json!({"user": user_json(user, "Bo", "bo@example.com")}),
        start,
        1,
    );
    stack.produce(user, &encode(&created)).await;

    let trail = stack.trail_once_applied(user, created.id).await;
    assert_eq!(trail.len(), 1, "{trail:?}");

    let mut letters = Vec::new();
    let found = eventually(APPLIED_WITHIN, async || {
        letters = infra::kafka::dlq::read_dead_letters(&stack.config.kafka, Duration::from_secs(10))
            .await
            .unwrap_or_default();
        letters.len() >= 2
    })
    .await;
    assert!(found, "two dead letters expected in {}, found {}", stack.config.kafka.dlq_topic, letters.len());
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].record.value.as_deref(), Some(b"{not json".as_slice()));
    let error = letters[0].error().unwrap_or_default();
    assert!(error.contains("not an event"), "{error}");
    assert_eq!(letters[1].record.value.as_deref(), Some(encode(&bad_key).as_slice()));
    let error = letters[1].error().unwrap_or_default();
    assert!(error.contains("user-activity") && error.contains("not a user id"), "{error}");
    assert_eq!(letters[1].attempts(), Some(1), "a poison event is not retried");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_s_lifecycle_becomes_three_entries_in_order() {
    let stack = Harness::start().await;
    let user = Uuid::now_v7();
    let key = user.to_string();
    let start = OffsetDateTime::now_utc();
    let mut registered = user_json(user, "Cy", "cy@example.com");
    let public = registered.clone();
    // A secret that must never reach the trail, even if an event carried one.
    registered["password_hash"] = json!("$argon2id$v=19$secret");
    let created = user_event("user_created", &key, json!({"user": registered}), start, 0);
    let renamed = user_json(user, "Cyd", "cyd@example.com");
    let updated = user_event("user_updated", &key, json!({"user": renamed, "changed": ["name", "email"]}), start, 1);
    let deleted = user_event("user_deleted", &key, json!({}), start, 2);
    for event in [&created, &updated, &deleted] {
        stack.produce(user, &encode(event)).await;
    }

    let trail = stack.trail_once_applied(user, deleted.id).await;
    let got: Vec<(Uuid, &str)> = trail.iter().map(|a| (a.event_id, a.kind.as_str())).collect();
    let expected = [(created.id, "user_created"), (updated.id, "user_updated"), (deleted.id, "user_deleted")];
    assert_eq!(got, expected, "{trail:?}");
    assert_eq!(trail[0].details, public, "the public fields only");
    assert_eq!(trail[1].details, json!({"changed": ["name", "email"]}));
    assert_eq!(trail[2].details, json!({}));
    let drift = (trail[1].occurred_at - updated.occurred_at).abs();
    assert!(drift < time::Duration::milliseconds(1), "the event's time, to the µs: {drift}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_of_one_event_apply_it_once() {
    let config = Config::from_sources(&Sources::from_env_pairs(&[])).expect("valid configuration");
    let postgres = PostgresClient::connect_lazy(&config.postgres).expect("PostgreSQL client");
    app::migrations::apply(&postgres).await.expect("migrated");
    let recorder = Arc::new(PostgresActivityRecorder::new(postgres.clone()));
    let user = Uuid::now_v7();
    let entry = UserActivityEvent {
        event_id: Uuid::now_v7(),
        user_id: user,
        kind: ActivityKind::Deleted,
        occurred_at: OffsetDateTime::now_utc(),
        details: json!({}),
    };

    let tasks = (0..8).map(|_| {
        let (recorder, entry) = (recorder.clone(), entry.clone());
        tokio::spawn(async move { recorder.apply(&entry).await })
    });
    let results =
        tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(tasks)).await.expect("bounded");
    let applied: Vec<bool> = results.into_iter().map(|r| r.expect("task").expect("applied")).collect();
    assert_eq!(applied.iter().filter(|new| **new).count(), 1, "exactly one delivery applies it: {applied:?}");
    let trail = PostgresUsers::new(postgres).activity(user, 10).await.expect("activity");
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert!(!recorder.apply(&entry).await.expect("redelivery"), "a later redelivery changes nothing");
}

#[tokio::test]
async fn an_unreachable_database_is_reported_as_unavailable_not_as_a_bad_event() {
    let dsn = format!("postgres://rust_app_user:rust_app_password@127.0.0.1:{}/rust_app?sslmode=disable", free_port());
    let config = crate::helpers::postgres_config(&dsn, &[("POSTGRES_CONNECT_TIMEOUT", "2s")]);
    let recorder = PostgresActivityRecorder::new(PostgresClient::connect_lazy(&config).expect("lazy client"));
    let entry = UserActivityEvent {
        event_id: Uuid::now_v7(),
        user_id: Uuid::now_v7(),
        kind: ActivityKind::Deleted,
        occurred_at: OffsetDateTime::now_utc(),
        details: json!({}),
    };
    let err = tokio::time::timeout(Duration::from_secs(30), recorder.apply(&entry))
        .await
        .expect("bounded")
        .expect_err("nothing listens there");
    assert!(err.unavailable, "the consumer waits for the database instead of dead-lettering: {err}");
}
