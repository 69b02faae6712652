//! The relay recovering by itself: from a broker that restarted empty (its topics and producer ids gone), from
//! a topic nobody may create (KAFKA_CREATE_TOPICS=false), and from an event Kafka always rejects (parked after
//! OUTBOX_MAX_ATTEMPTS, without breaking the order of its key).

use std::time::Duration;

use infra::kafka::KafkaClient;
use infra::postgres::{PostgresClient, sql};
use test_support::eventually;
use test_support::kafka::PrivateKafka;
use test_support::postgres::TestDb;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    SHARED_BROKER, TopicReader, assert_published_once_in_order, database, kafka_config, outbox_rows, sample,
    write_users,
};
use crate::helpers::{free_port, spawn_app, unique};

/// Rows whose `sent_at IS NULL`.
async fn pending(client: &PostgresClient) -> usize {
    outbox_rows(client).await.iter().filter(|row| !row.sent).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_are_published_after_the_broker_restarted_empty() {
    let db = TestDb::create();
    let client = database(&db).await;
    let port = free_port();
    let mut kafka = PrivateKafka::start(port).await;
    let (dsn, brokers, topic) = (db.dsn(), kafka.brokers(), unique("outbox-restart"));
    let app = spawn_app(&[
        ("POSTGRES_DSN", dsn.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("KAFKA_DELIVERY_TIMEOUT", "3s"),
        ("OUTBOX_POLL_INTERVAL", "100ms"),
    ])
    .await;
    write_users(&client, 10, 1).await;
    assert!(eventually(Duration::from_secs(60), async || pending(&client).await == 0).await, "published at first");

    // The broker restarts empty: no topic, no producer id. Events are written while it is down and after.
    drop(kafka);
    write_users(&client, 5, 0).await;
    kafka = PrivateKafka::start(port).await;
    let restarted = std::time::Instant::now();
    write_users(&client, 5, 0).await;
    let published = eventually(Duration::from_secs(90), async || pending(&client).await == 0).await;
    let recovered_after = restarted.elapsed();
    let rows = outbox_rows(&client).await;
    assert!(published, "every event is published after the restart: {rows:?}");
    let reader = TopicReader::start(&kafka.brokers(), &topic);
    let records = reader.read(20).await;
    let after_restart: Vec<_> = rows.into_iter().skip(30).collect();
    assert_published_once_in_order(&after_restart, &records);
    // The service re-created its topic with its own partition count: the broker's default (tansu: 4) would
    // mean a send re-created it as a side effect.
    let admin = KafkaClient::connect_lazy(&kafka_config(&kafka.brokers(), &topic)).expect("admin client");
    let metadata = admin.topic_metadata(&topic, Duration::from_secs(5)).await.expect("the topic exists again");
    assert_eq!(metadata.partitions, 3);
    eprintln!("pending events published {recovered_after:?} after the broker came back");
    reader.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kafka_create_topics_a_missing_topic_is_reported_not_created_and_waited_for() {
    let db = TestDb::create();
    let client = database(&db).await;
    let kafka = PrivateKafka::start(free_port()).await;
    let (dsn, brokers, topic) = (db.dsn(), kafka.brokers(), unique("outbox-provisioned"));
    let app = spawn_app(&[
        ("POSTGRES_DSN", dsn.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("KAFKA_CREATE_TOPICS", "false"),
        ("KAFKA_DELIVERY_TIMEOUT", "2s"),
        ("OUTBOX_POLL_INTERVAL", "100ms"),
        ("HEALTH_CHECK_TIMEOUT", "2s"),
        ("HEALTH_CACHE_TTL", "0"),
    ])
    .await;
    write_users(&client, 2, 0).await;

    let (status, body) = app
        .eventually("/health/kafka", Duration::from_secs(30), |status, body| {
            status == 503 && body["error"].as_str().is_some_and(|error| error.contains("outbox_pending=4,"))
        })
        .await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("Unknown topic or partition") || error.contains("not in metadata"), "{body}");
    // Each key's first event is retried; the second waits behind it (per-key order).
    let retried = async || outbox_rows(&client).await.iter().filter(|row| row.attempts >= 3).count() == 2;
    assert!(eventually(Duration::from_secs(60), retried).await, "the relay keeps retrying");
    let admin = KafkaClient::connect_lazy(&kafka_config(&kafka.brokers(), &topic)).expect("admin client");
    let lookup = admin.topic_metadata(&topic, Duration::from_secs(5)).await;
    assert!(lookup.as_ref().is_err_and(|err| err.is_unknown_topic()), "nobody created it: {lookup:?}");
    assert_eq!(pending(&client).await, 4, "nothing parked or lost: {:?}", outbox_rows(&client).await);

    // Whoever provisions topics creates it: the waiting events go out.
    admin.ensure_topic(&topic, 3, Duration::from_secs(10)).await.expect("topic provisioned");
    let reader = TopicReader::start(&kafka.brokers(), &topic);
    let records = reader.read(4).await;
    assert_published_once_in_order(&outbox_rows(&client).await, &records);
    reader.stop().await;
    app.stop().await;
}

/// When an outbox row was sent and when it was parked.
async fn sent_and_parked(client: &PostgresClient, seq: i64) -> (Option<OffsetDateTime>, Option<OffsetDateTime>) {
    client.query_one(sql("SELECT sent_at, parked_at FROM outbox WHERE seq = $1").bind(seq)).await.expect("outbox row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_kafka_always_rejects_is_parked_and_the_later_events_of_its_key_wait_for_it() {
    let db = TestDb::create();
    let client = database(&db).await;
    let topic = unique("outbox-poison");
    let admin = KafkaClient::connect_lazy(&kafka_config(SHARED_BROKER, &topic)).expect("admin client");
    admin.ensure_topic(&topic, 3, Duration::from_secs(10)).await.expect("topic");
    // Key "poisoned": an event, one over the producer's 1 MB message.max.bytes, two more. Key "healthy": three
    // events in between.
    let event = |kind: &str, key: &str, pad: usize| {
        let id = Uuid::now_v7();
        format!(
            "INSERT INTO outbox (id, event_type, key, payload) VALUES ('{id}', '{kind}', '{key}', \
             jsonb_build_object('id', '{id}', 'type', '{kind}', 'pad', repeat('x', {pad})));"
        )
    };
    let statements = [
        event("test.before", "poisoned", 10),
        event("test.healthy", "healthy", 10),
        event("test.too-large", "poisoned", 1_100_000),
        event("test.healthy", "healthy", 10),
        event("test.after", "poisoned", 10),
        event("test.healthy", "healthy", 10),
        event("test.after", "poisoned", 10),
    ];
    db.query(&statements.concat());
    let dsn = db.dsn();
    let app = spawn_app(&[
        ("POSTGRES_DSN", dsn.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("OUTBOX_POLL_INTERVAL", "100ms"),
        ("OUTBOX_MAX_ATTEMPTS", "3"),
        ("HEALTH_CACHE_TTL", "0"),
    ])
    .await;
    let reader = TopicReader::start(SHARED_BROKER, &topic);
    let records = reader.read(6).await;

    let rows = outbox_rows(&client).await;
    let poison = rows.iter().find(|row| row.event_type == "test.too-large").expect("the large event");
    assert!(!poison.sent, "never published");
    assert_eq!(poison.attempts, 3, "parked after OUTBOX_MAX_ATTEMPTS");
    let (_, parked_at) = sent_and_parked(&client, poison.seq).await;
    let parked_at = parked_at.expect("parked");
    let sent: Vec<_> = rows.iter().filter(|row| row.sent).cloned().collect();
    assert_eq!(sent.len(), 6);
    assert_published_once_in_order(&sent, &records);
    for row in &sent {
        let (sent_at, _) = sent_and_parked(&client, row.seq).await;
        let sent_at = sent_at.expect("sent");
        match row.event_type.as_str() {
            // The later events of its key waited until it was parked: none overtook it.
            "test.after" => assert!(sent_at >= parked_at, "{row:?} overtook the rejected event"),
            // Other keys were not held up by it.
            _ => assert!(sent_at < parked_at, "{row:?} waited for another key's rejected event"),
        }
    }
    let last_error: (Option<String>,) = client
        .query_one(sql("SELECT last_error FROM outbox WHERE seq = $1").bind(poison.seq))
        .await
        .expect("last error");
    assert!(last_error.0.as_deref().is_some_and(|error| error.contains("too large")), "{last_error:?}");

    let (status, body) =
        app.eventually("/health/kafka", Duration::from_secs(10), |_, body| body["details"]["outbox_parked"] == 1).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["details"]["outbox_parked"], 1, "{body}");
    assert_eq!(body["details"]["outbox_pending"], 0, "{body}");
    // The gauge is process-wide (other tests' relays set it too): seeing ours once is enough.
    let gauge = eventually(Duration::from_secs(10), async || sample(&app, "outbox_parked_events").await == Some(1.0));
    assert!(gauge.await, "outbox_parked_events never showed the parked event");
    reader.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn the_command_line_lists_parked_events_and_hands_them_back_to_the_relay() {
    let db = TestDb::create();
    let client = database(&db).await;
    db.query(
        "INSERT INTO outbox (id, event_type, key, payload, attempts, parked_at, last_error) VALUES \
         (gen_random_uuid(), 'test.too-large', 'k1', '{}'::jsonb, 10, now(), 'record too large'), \
         (gen_random_uuid(), 'test.too-large', 'k2', '{}'::jsonb, 10, now(), 'record too large'), \
         (gen_random_uuid(), 'test.pending', 'k3', '{}'::jsonb, 0, NULL, NULL)",
    );
    let seqs: Vec<i64> = outbox_rows(&client).await.iter().map(|row| row.seq).collect();
    let (dsn, workdir) = (db.dsn(), crate::helpers::TempDir::new());
    let run = |args: &[&str]| {
        let output = crate::helpers::binary(&[("POSTGRES_DSN", dsn.as_str())], &workdir.0)
            .args(args)
            .output()
            .expect("run rust-app");
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let listed = run(&["outbox", "parked"]);
    assert!(listed.starts_with("2 parked event(s)"), "{listed}");
    assert!(listed.contains(&format!("seq={} type=test.too-large key=k1", seqs[0])), "{listed}");
    assert!(listed.contains("error=record too large"), "{listed}");
    assert!(!listed.contains("test.pending"), "{listed}");

    let seq = seqs[0].to_string();
    assert_eq!(run(&["outbox", "unpark", &seq]).trim(), "1 event(s) handed back to the relay");
    let unparked: (Option<OffsetDateTime>, i32) = client
        .query_one(sql("SELECT parked_at, attempts FROM outbox WHERE seq = $1").bind(seqs[0]))
        .await
        .expect("row");
    assert_eq!(unparked, (None, 0), "pending again, its attempts from zero");
    assert_eq!(run(&["outbox", "unpark", "--all"]).trim(), "1 event(s) handed back to the relay");
    assert!(run(&["outbox", "parked"]).starts_with("0 parked event(s)"));
}
