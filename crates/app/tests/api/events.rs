//! The events API against the real stack: publish, read back once the consumer recorded it, bad input, Kafka
//! unreachable, per-key order, and the per-client publish limit.
//! Each test publishes and reads as an admin, who may read every event: who may is the access rules' subject.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::postgres::TestDb;

use crate::helpers::{BlackHole, RedisServer, TestApp, free_port, spawn_admin_app, unique};

/// Bound on waiting for the consumer to record an event: its group join on tansu alone takes a few seconds.
const RECORDED_WITHIN: Duration = Duration::from_secs(60);
/// Hang guard on single requests, not a timing assertion.
const REQUEST_GUARD: Duration = Duration::from_secs(30);

async fn post_event(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client.post(format!("{}/events", app.address)).json(body).send().await.expect("request sent")
}

/// Posts a valid event and returns the 202's body.
async fn publish(app: &TestApp, kind: &str, key: &str, data: Value) -> Value {
    let response = post_event(app, &json!({"type": kind, "key": key, "data": data})).await;
    let status = response.status();
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(status, 202, "{body}");
    body
}

/// Asserts `response` is an `application/problem+json` with this status and code; returns the body.
async fn assert_problem(response: reqwest::Response, status: u16, code: &str, case: &str) -> Value {
    assert_eq!(response.status(), status, "{case}");
    assert_eq!(response.headers()["content-type"], "application/problem+json", "{case}");
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["status"], status, "{case}: {body}");
    assert_eq!(body["code"], code, "{case}: {body}");
    assert!(body["title"].is_string(), "{case}: {body}");
    body
}

/// Waits until the event with `id` is recorded and returns it.
async fn recorded(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.eventually(&format!("/events/{id}"), RECORDED_WITHIN, |status, _| status == 200).await;
    assert_eq!(status, 200, "event {id} not recorded within {RECORDED_WITHIN:?}: {body}");
    body
}

#[tokio::test]
async fn a_published_event_is_recorded_and_readable_by_id() {
    let topic = unique("events-test");
    let app = spawn_admin_app(&[("KAFKA_TOPIC", &topic)]).await;

    let response = app
        .client
        .post(format!("{}/events", app.address))
        .header("x-request-id", "events-test-publish-1")
        .json(&json!({"type": "user.created", "key": "user-1", "data": {"name": "Ada"}}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "events-test-publish-1", "the caller's request id is echoed");
    let published: Value = response.json().await.expect("JSON body");
    let id = published["id"].as_str().expect("an id");
    id.parse::<uuid::Uuid>().expect("the id is a UUID");
    let partition = published["partition"].as_i64().expect("a partition");
    let offset = published["offset"].as_i64().expect("an offset");
    assert!((0..3).contains(&partition), "the event topic has 3 partitions: {published}");
    assert!(offset >= 0, "{published}");

    let logged = recorded(&app, id).await;
    assert_eq!(logged["id"], id);
    assert_eq!(logged["type"], "user.created");
    assert_eq!(logged["key"], "user-1");
    assert_eq!(logged["data"], json!({"name": "Ada"}));
    assert_eq!(logged["origin"], json!({"topic": topic, "partition": partition, "offset": offset}), "{logged}");

    let response = app.get(&format!("/events/{id}")).await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers().get("x-request-id").expect("x-request-id on the GET").to_str().expect("text");
    assert!(!request_id.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn the_largest_and_smallest_doubles_in_data_are_recorded_and_read_back() {
    let app = spawn_admin_app(&[("KAFKA_TOPIC", &unique("events-edges"))]).await;
    // PostgreSQL's jsonb gives the largest doubles back as 309-digit integers; they must read back (found by the
    // contract's fuzzing: GET /events/{id} answered 503).
    let data = json!({"max": f64::MAX, "min": f64::MIN, "tiny": 5e-324, "big": 1.5e300});
    let published = publish(&app, "edge.numbers", "k", data.clone()).await;
    let logged = recorded(&app, published["id"].as_str().expect("an id")).await;
    assert_eq!(logged["data"], data);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_problem_json_4xx_never_a_500() {
    let app = spawn_admin_app(&[]).await;
    let url = format!("{}/events", app.address);

    let response = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"type": "user.created", "key": "#)
        .send()
        .await
        .expect("sent");
    assert_problem(response, 400, "invalid-body", "malformed JSON").await;

    let valid = r#"{"type": "user.created", "key": "user-1"}"#;
    let response = app.client.post(&url).body(valid).send().await.expect("sent");
    assert_problem(response, 415, "invalid-body", "no content-type").await;
    let response = app.client.post(&url).header("content-type", "text/plain").body(valid).send().await.expect("sent");
    assert_problem(response, 415, "invalid-body", "text/plain").await;

    let unprocessable = [
        ("type not a string", json!({"type": 1, "key": "user-1"})),
        ("key not a string", json!({"type": "user.created", "key": ["user-1"]})),
        ("unknown field", json!({"type": "user.created", "key": "user-1", "extra": true})),
        ("bad type string", json!({"type": "User Created", "key": "user-1"})),
        ("empty type", json!({"type": "", "key": "user-1"})),
        ("empty key", json!({"type": "user.created", "key": ""})),
        ("key with a space", json!({"type": "user.created", "key": "user 1"})),
        ("key too long", json!({"type": "user.created", "key": "k".repeat(129)})),
        ("missing key", json!({"type": "user.created"})),
        ("not an object", json!(["user.created", "user-1"])),
        ("a reserved type", json!({"type": "user_created", "key": uuid::Uuid::now_v7().to_string()})),
    ];
    for (case, body) in unprocessable {
        assert_problem(post_event(&app, &body).await, 422, "invalid-body", case).await;
    }

    let big = json!({"type": "user.created", "key": "user-1", "data": {"blob": "x".repeat(70 * 1024)}});
    assert_problem(post_event(&app, &big).await, 413, "event-too-large", "data over 64 KiB").await;

    let huge = format!(r#"{{"type": "user.created", "key": "user-1", "data": "{}"}}"#, "x".repeat(3 * 1024 * 1024));
    let response =
        app.client.post(&url).header("content-type", "application/json").body(huge).send().await.expect("sent");
    assert_problem(response, 413, "body-too-large", "body over the 1 MiB limit").await;

    let body = assert_problem(app.get("/events/not-a-uuid").await, 400, "invalid-id", "id not a UUID").await;
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("UUID")), "{body}");
    let unknown = uuid::Uuid::new_v4();
    assert_problem(app.get(&format!("/events/{unknown}")).await, 404, "event-not-found", "unknown id").await;
    app.stop().await;
}

#[tokio::test]
async fn kafka_unreachable_is_a_503_with_retry_after_not_a_hang() {
    let hole = BlackHole::start().await;
    let closed = format!("127.0.0.1:{}", free_port());
    for (case, brokers) in [("hanging broker", hole.addr.to_string()), ("closed port", closed)] {
        let app = spawn_admin_app(&[
            ("KAFKA_BROKERS", &brokers),
            ("KAFKA_DELIVERY_TIMEOUT", "2"),
            ("KAFKA_DIAL_TIMEOUT", "2"),
            ("SHUTDOWN_TIMEOUT", "3s"),
        ])
        .await;
        let event = json!({"type": "user.created", "key": "user-1", "data": {"name": "Ada"}});
        let response = tokio::time::timeout(REQUEST_GUARD, post_event(&app, &event))
            .await
            .unwrap_or_else(|_| panic!("{case}: POST /events still unanswered after {REQUEST_GUARD:?}"));
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().expect("text").to_string());
        let body = assert_problem(response, 503, "dependency-unavailable", case).await;
        let retry_after: u64 = retry_after.expect("Retry-After").parse().expect("Retry-After in seconds");
        assert!(retry_after >= 1, "{case}: {retry_after}");
        assert!(!body.to_string().contains(&brokers), "{case}: the broker address stays in the logs: {body}");
        tokio::time::timeout(REQUEST_GUARD, app.stop()).await.expect("the app stops");
    }
}

#[tokio::test]
async fn events_with_one_key_are_recorded_in_publish_order() {
    let db = TestDb::create();
    let app = spawn_admin_app(&[("POSTGRES_DSN", &db.dsn())]).await;

    let mut published = Vec::new();
    for n in 0..5 {
        published.push(publish(&app, "order.step", "k", json!({"n": n})).await);
    }
    let partition = &published[0]["partition"];
    assert!(published.iter().all(|p| p["partition"] == *partition), "one key, one partition: {published:?}");
    let offsets: Vec<i64> = published.iter().map(|p| p["offset"].as_i64().expect("offset")).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets increase in publish order: {offsets:?}");

    for (n, p) in published.iter().enumerate() {
        let logged = recorded(&app, p["id"].as_str().expect("id")).await;
        assert_eq!(logged["data"], json!({"n": n}));
        assert_eq!(logged["origin"]["partition"], *partition);
        assert_eq!(logged["origin"]["offset"], p["offset"]);
    }

    // The order the consumer recorded them in: recorded_at is each insert's transaction time. (The admin's
    // user_created is in the log too, under another key.)
    let rows =
        db.query("SELECT id, extract(epoch FROM recorded_at) FROM event_log WHERE key = 'k' ORDER BY recorded_at");
    let rows: Vec<(&str, f64)> = rows
        .lines()
        .map(|line| {
            let (id, at) = line.split_once('|').expect("id|time");
            (id, at.parse().expect("epoch seconds"))
        })
        .collect();
    let ids: Vec<&str> = rows.iter().map(|(id, _)| *id).collect();
    let expected: Vec<&str> = published.iter().map(|p| p["id"].as_str().expect("id")).collect();
    assert_eq!(ids, expected, "recorded in publish order");
    assert!(rows.windows(2).all(|w| w[0].1 < w[1].1), "one after the other: {rows:?}");
    app.stop().await;
}

#[tokio::test]
async fn publishing_past_the_burst_is_limited_with_retry_after() {
    // A Redis of this test's own: the shared one holds the limit every other test's requests count against.
    let redis = RedisServer::start();
    let app = spawn_admin_app(&[("REDIS_ADDR", &redis.addr())]).await;

    // Burst 100, refilled at 50/s: 300 requests at once exceed it unless they take over 4 s to arrive.
    let started = Instant::now();
    let event = json!({"type": "user.created", "key": "user-1"});
    let responses = futures::future::join_all((0..300).map(|_| post_event(&app, &event))).await;
    let took = started.elapsed();
    let mut accepted = 0;
    let mut limited = Vec::new();
    for response in responses {
        match response.status().as_u16() {
            202 => accepted += 1,
            429 => limited.push(response),
            other => panic!("unexpected status {other}: {:?}", response.text().await),
        }
    }
    assert!(accepted >= 100, "the whole burst is admitted: {accepted} accepted");
    let response = limited.pop().unwrap_or_else(|| panic!("no 429 among 300 requests sent within {took:?}"));
    let headers = response.headers().clone();
    assert_eq!(headers["ratelimit-limit"], "100");
    let retry_after: u64 = headers["retry-after"].to_str().expect("text").parse().expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "one request's wait at 50/s rounds up to 1 s: {retry_after}");
    assert_problem(response, 429, "rate-limited", "over the limit").await;
    let stored: i64 = redis.command(redis::cmd("EXISTS").arg("rate:events:127.0.0.1")).expect("EXISTS");
    assert_eq!(stored, 1, "the limit is kept per client address under rate:events");
    app.stop().await;
}

#[tokio::test]
async fn events_recorded_longer_ago_than_the_retention_are_pruned_and_the_rest_stay() {
    let db = TestDb::create();
    let client = infra::postgres::PostgresClient::connect_lazy(&crate::helpers::postgres_config(&db.dsn(), &[]))
        .expect("PostgreSQL client");
    app::migrations::apply(&client).await.expect("migrations");
    // More expired rows than one pruning statement deletes, and recent ones.
    db.query(
        "INSERT INTO event_log (id, type, key, data, topic, partition, \"offset\", recorded_at) \
         SELECT gen_random_uuid(), 'test.expired', 'k', '{}', 't', 0, n, now() - interval '2 hours' \
         FROM generate_series(1, 12000) AS n",
    );
    db.query(
        "INSERT INTO event_log (id, type, key, data, topic, partition, \"offset\", recorded_at) \
         SELECT gen_random_uuid(), 'test.recent', 'k', '{}', 't', 0, n, now() - interval '1 minute' \
         FROM generate_series(1, 5) AS n",
    );
    let expired = db.query("SELECT id FROM event_log WHERE type = 'test.expired' LIMIT 1");
    let app = spawn_admin_app(&[("POSTGRES_DSN", &db.dsn()), ("EVENT_LOG_RETENTION", "1h")]).await;

    let left = || db.query("SELECT type || '=' || count(*) FROM event_log GROUP BY type ORDER BY type");
    let pruned = test_support::eventually(Duration::from_secs(30), async || !left().contains("test.expired")).await;
    assert!(pruned, "expired rows left: {}", left());
    assert_eq!(left(), "test.recent=5");
    let (status, _) = app.get_json(&format!("/events/{expired}")).await;
    assert_eq!(status, 404, "a pruned event is no longer readable");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let counted: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("event_log_pruned_total ")?.parse().ok())
        .expect("event_log_pruned_total exported");
    assert!(counted >= 12_000.0, "event_log_pruned_total = {counted}");
    app.stop().await;
}
