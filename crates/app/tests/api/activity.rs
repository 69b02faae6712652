//! The user activity trail against the real stack: records produced straight onto the app's topic are applied
//! by the service's consumer exactly once, poison user events go to the dead-letter topic without stopping the
//! consumer, and one user's events land in order; events and the trail hold no email or name, deletion scrubs
//! what older rows hold, the trail pages newest first. Every test uses user ids of its own, or a database of
//! its own where it reads whole tables.

use std::sync::Arc;
use std::time::Duration;

use app::events::{Event, EventKey, EventType};
use app::users::activity::postgres::PostgresActivityRecorder;
use app::users::activity::{ActivityKind, ActivityRecorder, UserActivityEvent};
use app::users::postgres::PostgresUsers;
use app::users::{Activity, ActivityCursor, UserRepository};
use infra::config::Sources;
use infra::kafka::KafkaProducer;
use infra::postgres::{PostgresClient, sql};
use infra::settings::Config;
use serde_json::{Value, json};
use test_support::eventually;
use test_support::postgres::TestDb;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::helpers::{PASSWORD, TestApp, free_port, spawn_admin_app, unique};

/// Bound on waiting for the consumer: its group join on tansu alone takes a few seconds.
const APPLIED_WITHIN: Duration = Duration::from_secs(60);

/// The app with a topic and dead-letter topic of its own (its `client` an admin, who may read every user's trail
/// and every event), a producer onto that topic, and the database.
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
        let app = spawn_admin_app(&env).await;
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

    /// The user's trail, oldest first.
    async fn trail(&self, user: Uuid) -> Vec<Activity> {
        let mut trail =
            PostgresUsers::new(self.postgres.clone()).activity(user, None, 100).await.expect("activity readable");
        trail.reverse();
        trail
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
        publisher: None,
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

/// The event log's data of `user`'s events, oldest first, as stored.
async fn logged_data(postgres: &PostgresClient, user: Uuid) -> Vec<Value> {
    let statement = sql("SELECT data::text FROM event_log WHERE key = $1 ORDER BY occurred_at").bind(user.to_string());
    let rows: Vec<(String,)> = postgres.query(statement).await.expect("event_log readable");
    rows.into_iter().map(|(data,)| serde_json::from_str(&data).expect("JSON")).collect()
}

/// Events of the format before events became ids-only (`data.user` with name and email) are still applied —
/// not dead-lettered — and neither the trail nor the event log keeps their personal fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_format_lifecycle_is_applied_in_order_without_its_personal_fields() {
    let stack = Harness::start().await;
    let user = Uuid::now_v7();
    let key = user.to_string();
    let start = OffsetDateTime::now_utc();
    let mut registered = user_json(user, "Cyrilla", "cyrilla@example.com");
    // A secret that must never reach the trail, even if an event carried one.
    registered["password_hash"] = json!("$argon2id$v=19$secret");
    let created = user_event("user_created", &key, json!({"user": registered}), start, 0);
    let renamed = user_json(user, "Cyrillo", "cyrillo@example.com");
    let updated = user_event("user_updated", &key, json!({"user": renamed, "changed": ["name", "email"]}), start, 1);
    let deleted = user_event("user_deleted", &key, json!({}), start, 2);
    for event in [&created, &updated, &deleted] {
        stack.produce(user, &encode(event)).await;
    }

    let trail = stack.trail_once_applied(user, deleted.id).await;
    let got: Vec<(Uuid, &str)> = trail.iter().map(|a| (a.event_id, a.kind.as_str())).collect();
    let expected = [(created.id, "user_created"), (updated.id, "user_updated"), (deleted.id, "user_deleted")];
    assert_eq!(got, expected, "{trail:?}");
    let details: Vec<&Value> = trail.iter().map(|entry| &entry.details).collect();
    assert_eq!(details, [&json!({}), &json!({"changed": ["name", "email"]}), &json!({})], "ids and field names only");
    let drift = (trail[1].occurred_at - updated.occurred_at).abs();
    assert!(drift < time::Duration::milliseconds(1), "the event's time, to the µs: {drift}");

    let logged = logged_data(&stack.postgres, user).await;
    assert_eq!(logged, [json!({}), json!({"changed": ["name", "email"]}), json!({})], "the log keeps no profile");
    let stored = format!("{trail:?} {logged:?}");
    for personal in ["Cyrill", "cyrill", "argon2"] {
        assert!(!stored.contains(personal), "{personal:?} stored: {stored}");
    }
    let letters = infra::kafka::dlq::read_dead_letters(&stack.config.kafka, Duration::from_secs(10)).await;
    assert!(letters.as_ref().is_ok_and(Vec::is_empty), "an old-format event is not poison: {letters:?}");
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
    let trail = PostgresUsers::new(postgres).activity(user, None, 10).await.expect("activity");
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

/// Waits until `GET /users/{id}/activity?limit=100` shows `entries` entries; returns them, newest first.
async fn trail_over_http(app: &TestApp, id: &str, entries: usize) -> Vec<Value> {
    let path = format!("/users/{id}/activity?limit=100");
    let (status, page) = app
        .eventually(&path, APPLIED_WITHIN, |_, page| page["items"].as_array().is_some_and(|i| i.len() >= entries))
        .await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), entries, "{page}");
    items
}

/// Everything the database stores about events and the trail, as text: the outbox's payloads, the event log's
/// data, the trail's details.
fn stored_event_text(db: &TestDb) -> String {
    db.query(
        "SELECT concat_ws(E'\\n', (SELECT string_agg(payload::text, E'\\n') FROM outbox), \
         (SELECT string_agg(data::text, E'\\n') FROM event_log), \
         (SELECT string_agg(details::text, E'\\n') FROM user_activity))",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_s_events_and_trail_hold_ids_and_changed_field_names_never_email_or_name() {
    let db = TestDb::create();
    let app = spawn_admin_app(&[("POSTGRES_DSN", &db.dsn())]).await;
    let (name, email) = (unique("Registered Name"), format!("{}@example.com", unique("registered")));
    let body = json!({"name": name, "email": email, "password": "correct horse battery"});
    let created = app.post_json("/users", &body).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.expect("JSON")["id"].as_str().expect("id").to_string();
    let (new_name, new_email) = (unique("Changed Name"), format!("{}@example.com", unique("changed")));
    // By an admin: changing the email ends the user's sessions, not the caller's.
    let change = json!({"name": new_name, "email": new_email, "current_password": PASSWORD});
    let patched = app.send_json(reqwest::Method::PATCH, &format!("/users/{id}"), &change).await;
    assert_eq!(patched.status(), 200);

    // Both events went through Kafka into the event log and the trail.
    let trail = trail_over_http(&app, &id, 2).await;
    assert_eq!(trail[0]["details"], json!({"changed": ["name", "email"]}), "{trail:?}");
    assert_eq!(trail[1]["details"], json!({}), "{trail:?}");
    let logged = db.query(&format!("SELECT count(*) FROM event_log WHERE key = '{id}'"));
    assert_eq!(logged, "2", "both events logged");

    let stored = stored_event_text(&db);
    assert!(stored.contains(&id) && stored.contains("\"changed\""), "ids and field names are kept: {stored}");
    for personal in [&name, &email, &new_name, &new_email] {
        assert!(!stored.contains(personal.as_str()), "{personal} is stored in an event or the trail: {stored}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_scrubs_the_profile_older_rows_still_hold_and_keeps_the_audit_trail() {
    let db = TestDb::create();
    let app = spawn_admin_app(&[("POSTGRES_DSN", &db.dsn())]).await;
    let user = app.create_user("Scrubbed").await;
    let id = user["id"].as_str().expect("id").to_string();
    let other = app.create_user("Untouched").await["id"].as_str().expect("id").to_string();
    trail_over_http(&app, &id, 1).await;
    // Rows as a version before ids-only events wrote them (during a rolling deploy, or consumed late), for
    // the user and for another user.
    for (user, email) in [(&id, "scrubbed-person@example.com"), (&other, "untouched-person@example.com")] {
        let profile = format!(r#"{{"id": "{user}", "name": "Person", "email": "{email}"}}"#);
        db.query(&format!(
            "INSERT INTO outbox (id, event_type, key, payload, sent_at) VALUES (gen_random_uuid(), 'user_updated', \
             '{user}', jsonb_build_object('data', '{{\"user\": {profile}, \"changed\": [\"email\"]}}'::jsonb), now()); \
             INSERT INTO event_log (id, type, key, data, topic, partition, \"offset\") VALUES (gen_random_uuid(), \
             'user_updated', '{user}', '{{\"user\": {profile}, \"changed\": [\"email\"]}}', 't', 0, 0); \
             INSERT INTO user_activity (event_id, user_id, event_type, occurred_at, details) VALUES \
             (gen_random_uuid(), '{user}', 'user_created', now() - interval '1 day', '{profile}')"
        ));
    }
    let counts = |user: &str| {
        db.query(&format!(
            "SELECT (SELECT count(*) FROM outbox WHERE key = '{user}') || ',' || \
             (SELECT count(*) FROM event_log WHERE key = '{user}') || ',' || \
             (SELECT count(*) FROM user_activity WHERE user_id = '{user}')"
        ))
    };
    // user_created and the injected row in the outbox, the same in the log, the injected and the real entry.
    assert_eq!(counts(&id), "2,2,2");

    let deleted = app.client.delete(format!("{}/users/{id}", app.address)).send().await.expect("sent");
    assert_eq!(deleted.status(), 204);
    // Scrubbed in the deletion's transaction, before the consumer saw user_deleted.
    let stored = stored_event_text(&db);
    assert!(!stored.contains("scrubbed-person@example.com"), "the deleted user's profile is gone: {stored}");
    assert!(stored.contains("untouched-person@example.com"), "another user's rows are not touched: {stored}");
    assert!(counts(&id).starts_with("3,"), "user_deleted joins the outbox in the deletion's transaction");

    // The trail stays readable after the deletion: ids, types, times and changed field names.
    let trail = trail_over_http(&app, &id, 3).await;
    // Counted once the consumers applied user_deleted (they may have before the check above, or not).
    eventually(APPLIED_WITHIN, async || counts(&id) == "3,3,3").await;
    assert_eq!(counts(&id), "3,3,3", "the rows stay, scrubbed; user_deleted joins the log and the trail");
    let types: Vec<&str> = trail.iter().map(|entry| entry["type"].as_str().unwrap_or_default()).collect();
    assert_eq!(types, ["user_deleted", "user_created", "user_created"], "{trail:?}");
    assert!(trail.iter().all(|entry| entry["details"] == json!({})), "{trail:?}");
    let logged = db.query(&format!("SELECT string_agg(data::text, ' ') FROM event_log WHERE key = '{id}'"));
    assert!(logged.contains(r#"{"changed": ["email"]}"#) && !logged.contains("Person"), "{logged}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_pages_newest_first_with_a_cursor() {
    // A database of its own: on the shared one, any other test's app may relay this user's events onto a topic
    // nobody consumes once that app stopped, and the trail would never be complete.
    let db = TestDb::create();
    let app = spawn_admin_app(&[("POSTGRES_DSN", &db.dsn())]).await;
    let id = app.create_user("Paged").await["id"].as_str().expect("id").to_string();
    for n in 0..4 {
        let rename = json!({"name": format!("Paged {n}")});
        assert_eq!(app.send_json(reqwest::Method::PATCH, &format!("/users/{id}"), &rename).await.status(), 200);
    }
    let all = trail_over_http(&app, &id, 5).await;
    let times: Vec<&str> = all.iter().map(|entry| entry["occurred_at"].as_str().expect("time")).collect();
    let parsed: Vec<OffsetDateTime> = times
        .iter()
        .map(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).expect("RFC 3339"))
        .collect();
    assert!(parsed.windows(2).all(|pair| pair[0] >= pair[1]), "newest first: {times:?}");
    assert_eq!(all[4]["type"], "user_created");

    let mut paged = Vec::new();
    let mut path = format!("/users/{id}/activity?limit=2");
    for expected_len in [2, 2, 1] {
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["items"].as_array().map(Vec::len), Some(expected_len), "{page}");
        paged.extend(page["items"].as_array().into_iter().flatten().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/users/{id}/activity?limit=2&cursor={cursor}"),
            None => assert_eq!(expected_len, 1, "only the last page has no cursor"),
        }
    }
    assert_eq!(paged, all, "the pages together are the whole trail, in order");
    let (status, first) = app.get_json(&format!("/users/{id}/activity")).await;
    assert_eq!((status, first["items"].as_array().map(Vec::len)), (200, Some(5)), "default limit 20");

    for bad in ["limit=0&cursor=zz", "limit=101", "limit=many", &format!("cursor={}", id.replace('-', ""))] {
        let (status, problem) = app.get_json(&format!("/users/{id}/activity?{bad}")).await;
        assert_eq!((status, problem["code"].as_str()), (422, Some("validation-failed")), "{bad}: {problem}");
    }
    let (_, problem) = app.get_json(&format!("/users/{id}/activity?limit=0&cursor=zz")).await;
    let mut fields: Vec<&str> =
        problem["errors"].as_array().into_iter().flatten().filter_map(|e| e["field"].as_str()).collect();
    fields.sort();
    assert_eq!(fields, ["cursor", "limit"], "{problem}");

    // A forged cursor of the documented form is a position, never a failure: its time (here the extremes of
    // an i64 of microseconds, far outside what PostgreSQL holds) is taken as the nearest one it can be.
    let (newest, oldest) =
        (format!("7fffffffffffffff{}", "f".repeat(32)), format!("8000000000000000{}", "0".repeat(32)));
    let (status, page) = app.get_json(&format!("/users/{id}/activity?cursor={newest}")).await;
    assert_eq!((status, page["items"].as_array().map(Vec::len)), (200, Some(5)), "before the end of time: all");
    let (status, page) = app.get_json(&format!("/users/{id}/activity?cursor={oldest}")).await;
    assert_eq!((status, page["items"].as_array().map(Vec::len)), (200, Some(0)), "before year 1: none");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_the_same_microsecond_are_split_across_pages_without_loss() {
    let db = TestDb::create();
    let postgres = PostgresClient::connect_lazy(&crate::helpers::postgres_config(&db.dsn(), &[])).expect("client");
    app::migrations::apply(&postgres).await.expect("migrated");
    let recorder = PostgresActivityRecorder::new(postgres.clone());
    let (user, occurred_at) = (Uuid::now_v7(), OffsetDateTime::now_utc().replace_nanosecond(0).expect("time"));
    let mut ids = Vec::new();
    for _ in 0..5 {
        let entry = UserActivityEvent {
            event_id: Uuid::now_v7(),
            user_id: user,
            kind: ActivityKind::Updated,
            occurred_at,
            details: json!({"changed": ["name"]}),
        };
        assert!(recorder.apply(&entry).await.expect("applied"));
        ids.push(entry.event_id);
    }
    ids.reverse();
    let users = PostgresUsers::new(postgres);
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = users.activity(user, before, 2).await.expect("a page");
        paged.extend(page.iter().map(|entry| entry.event_id));
        let Some(last) = page.last().filter(|_| page.len() == 2) else { break };
        before = Some(ActivityCursor { occurred_at: last.occurred_at, event_id: last.event_id });
    }
    assert_eq!(paged, ids, "every entry once, newest (highest id) first");
}

#[tokio::test]
async fn the_personal_data_migration_scrubs_rows_written_before_it() {
    let db = TestDb::create();
    let postgres = PostgresClient::connect_lazy(&crate::helpers::postgres_config(&db.dsn(), &[])).expect("client");
    app::migrations::apply(&postgres).await.expect("migrated");
    let user = Uuid::now_v7();
    let profile = format!(r#"{{"id": "{user}", "name": "Early Bird", "email": "early@example.com"}}"#);
    db.query(&format!(
        "INSERT INTO outbox (id, event_type, key, payload) VALUES (gen_random_uuid(), 'user_created', '{user}', \
         jsonb_build_object('id', gen_random_uuid(), 'data', '{{\"user\": {profile}}}'::jsonb)); \
         INSERT INTO event_log (id, type, key, data, topic, partition, \"offset\") VALUES \
         (gen_random_uuid(), 'user_updated', '{user}', '{{\"user\": {profile}, \"changed\": [\"name\"]}}', 't', 0, 0), \
         (gen_random_uuid(), 'order.placed', 'order-1', '{{\"user\": \"kept: not a user event\"}}', 't', 0, 1), \
         (gen_random_uuid(), 'user_deleted', '{user}', '\"scalar\"', 't', 0, 2); \
         INSERT INTO user_activity (event_id, user_id, event_type, occurred_at, details) VALUES \
         (gen_random_uuid(), '{user}', 'user_created', now(), '{profile}')"
    ));
    // Applied again as it ran at start on a database holding such rows (it is idempotent).
    db.query(include_str!("../../migrations/20261127000004_personal_data.sql"));

    let outbox = db.query("SELECT payload::text FROM outbox");
    assert!(outbox.contains(r#""data": {}"#) && outbox.contains(r#""id""#), "the rest of the payload stays: {outbox}");
    let logged = db.query("SELECT string_agg(data::text, ' ' ORDER BY \"offset\") FROM event_log");
    assert_eq!(logged, r#"{"changed": ["name"]} {"user": "kept: not a user event"} {}"#);
    assert_eq!(db.query("SELECT details::text FROM user_activity"), "{}");
}
