//! `rust-app dlq list | replay` against the shared broker, with a topic and dead-letter topic of the test's own.

use std::time::Duration;

use infra::config::Sources;
use infra::kafka::dlq;
use infra::kafka::{KafkaClient, KafkaConfig, KafkaProducer};
use infra::settings::Config;
use test_support::unique;

use crate::helpers::{TempDir, binary};

fn kafka_config(env: &[(&str, &str)]) -> KafkaConfig {
    Config::from_sources(&Sources::from_env_pairs(env)).expect("valid configuration").kafka
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let workdir = TempDir::new();
    let output = binary(env, &workdir.0).args(args).output().expect("run rust-app");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// Everything currently in `topic`, read with the same reader the CLI uses.
async fn read_topic(topic: &str) -> Vec<infra::kafka::dlq::DeadLetter> {
    let config = kafka_config(&[("KAFKA_BROKERS", "127.0.0.1:9092"), ("KAFKA_DLQ_TOPIC", topic)]);
    infra::kafka::dlq::read_dead_letters(&config, Duration::from_secs(30)).await.expect("read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_the_dead_letters_and_replay_republishes_the_selected_ones() {
    let topic = unique("orders");
    let env = [("KAFKA_BROKERS", "127.0.0.1:9092"), ("KAFKA_TOPIC", topic.as_str())];
    let config = kafka_config(&env);
    let admin = KafkaClient::connect_lazy(&config).expect("admin");
    for name in [&config.topic, &config.dlq_topic] {
        admin.ensure_topic(name, 1, Duration::from_secs(10)).await.expect("topic");
    }
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    for (key, offset, error) in [("k1", "4", "database unavailable"), ("k2", "9", "malformed event")] {
        let headers: [(&str, &[u8]); 6] = [
            ("tenant", b"acme"),
            (dlq::ORIGINAL_TOPIC, topic.as_bytes()),
            (dlq::ORIGINAL_PARTITION, b"0"),
            (dlq::ORIGINAL_OFFSET, offset.as_bytes()),
            (dlq::ERROR, error.as_bytes()),
            (dlq::ATTEMPTS, b"4"),
        ];
        let value = format!("value of {key}");
        producer
            .produce(&config.dlq_topic, Some(key.as_bytes()), value.as_bytes(), &headers)
            .await
            .expect("dead letter");
    }

    let (code, out, err) = run(&["dlq", "list"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{}: 2 dead-lettered record(s)", config.dlq_topic)), "{out}");
    assert!(out.contains(&format!("from {topic}/0@4")) && out.contains("error: database unavailable"), "{out}");
    assert!(out.contains("key \"k2\"") && out.contains("attempts 4  error: malformed event"), "{out}");

    let (code, out, err) = run(&["dlq", "replay", "--key", "k1", "--dry-run"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dry run: 1 record(s) would be replayed"), "{out}");
    assert!(read_topic(&topic).await.is_empty(), "a dry run publishes nothing");

    let (code, out, err) = run(&["dlq", "replay", "--key", "k1"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 1 record(s)"), "{out}");
    let replayed = read_topic(&topic).await;
    assert_eq!(replayed.len(), 1);
    let record = &replayed[0].record;
    assert_eq!(record.key.as_deref(), Some(b"k1".as_slice()));
    assert_eq!(record.value.as_deref(), Some(b"value of k1".as_slice()));
    assert_eq!(record.headers, [("tenant".to_string(), b"acme".to_vec())], "original headers only");

    let (code, out, _) = run(&["dlq", "replay", "--from-offset", "1", "--to-offset", "1", "--dry-run"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("1 record(s) would be replayed") && out.contains("key \"k2\""), "{out}");
}

#[test]
fn an_unreachable_broker_fails_the_command_with_a_clear_error() {
    let closed = format!("127.0.0.1:{}", test_support::free_port());
    let (code, _, err) = run(&["dlq", "list"], &[("KAFKA_BROKERS", closed.as_str()), ("KAFKA_DIAL_TIMEOUT", "2")]);
    assert_eq!(code, 1);
    assert!(err.starts_with("rust-app: dlq: "), "{err}");
    assert!(err.contains("metadata request failed"), "{err}");
}
