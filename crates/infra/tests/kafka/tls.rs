//! Kafka over TLS end to end: a private broker behind a TLS terminator presenting a certificate from a test CA.
//! `KAFKA_SECURITY_PROTOCOL=SSL` with `KAFKA_SSL_CA_LOCATION` naming that CA produces and consumes; naming an
//! unrelated CA fails the health check quickly, saying the certificate could not be verified.

use std::time::{Duration, Instant};

use infra::config::Sources;
use infra::health::HealthCheck;
use infra::kafka::{KafkaClient, KafkaConfig, KafkaHealth, KafkaProducer};
use infra::settings::Config;
use test_support::kafka::PrivateKafka;
use test_support::tls::{TestPki, TlsTerminator};
use test_support::{eventually, free_port, unique};

use super::{Recorder, produce, spawn_consumer};

/// A private broker reachable only through TLS: the broker on a port of its own advertising the terminator's.
struct TlsBroker {
    pki: TestPki,
    terminator: TlsTerminator,
    _broker: PrivateKafka,
}

impl TlsBroker {
    async fn start() -> Self {
        let (broker_port, tls_port) = (free_port(), free_port());
        let pki = TestPki::generate();
        let broker = PrivateKafka::start_advertising(broker_port, tls_port).await;
        let terminator = TlsTerminator::start(tls_port, broker_port, &pki).await;
        TlsBroker { pki, terminator, _broker: broker }
    }

    /// Settings for a client of this broker over TLS trusting `ca_file`, with a fresh topic and group.
    fn config(&self, ca_file: &std::path::Path) -> KafkaConfig {
        let brokers = format!("127.0.0.1:{}", self.terminator.port);
        let ca = ca_file.to_str().expect("utf-8 path");
        let (topic, group) = (unique("tls-events"), unique("tls-group"));
        let env = [
            ("KAFKA_BROKERS", brokers.as_str()),
            ("KAFKA_SECURITY_PROTOCOL", "SSL"),
            ("KAFKA_SSL_CA_LOCATION", ca),
            ("KAFKA_TOPIC", topic.as_str()),
            ("KAFKA_CONSUMER_GROUP", group.as_str()),
            ("KAFKA_SESSION_TIMEOUT", "6"),
            ("KAFKA_DELIVERY_TIMEOUT", "5"),
            ("KAFKA_DIAL_TIMEOUT", "5"),
        ];
        Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid configuration").kafka
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_with_the_test_ca_produces_consumes_and_is_healthy() {
    let broker = TlsBroker::start().await;
    let config = broker.config(&broker.pki.ca_file);
    let admin = KafkaClient::connect_lazy(&config).expect("admin client");
    admin.ensure_topic(&config.topic, 2, Duration::from_secs(10)).await.expect("topic created over TLS");
    admin.ensure_topic(&config.dlq_topic, 1, Duration::from_secs(10)).await.expect("dead-letter topic");

    let health = KafkaHealth::new(admin.clone(), config.topic.clone(), Duration::from_secs(5));
    let details = health.check().await.expect("healthy over TLS");
    assert_eq!(details["partitions"], 2, "{details:?}");

    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    for n in 0..10 {
        produce(&producer, &config.topic, &format!("user-{}", n % 3), &format!("tls-{n}")).await;
    }
    let recorder = Recorder::default();
    let (stop, task, _) = spawn_consumer(&config, recorder.clone());
    let all = eventually(Duration::from_secs(30), async || recorder.count() >= 10).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task).await.expect("closed in time").expect("task");
    assert!(all, "consumed {} of 10 over TLS", recorder.count());
    let mut values = recorder.values();
    values.sort();
    let mut expected: Vec<String> = (0..10).map(|n| format!("tls-{n}")).collect();
    expected.sort();
    assert_eq!(values, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_with_an_unrelated_ca_fails_quickly_with_a_certificate_error() {
    let broker = TlsBroker::start().await;
    let config = broker.config(&broker.pki.unrelated_ca_file);
    let admin = KafkaClient::connect_lazy(&config).expect("the client is created; it connects lazily");
    let health = KafkaHealth::new(admin, config.topic.clone(), Duration::from_secs(3));
    let started = Instant::now();
    let failure = health.check().await.expect_err("a broker whose certificate cannot be verified is down");
    let message = failure.to_string();
    // Bounds far above the timeouts (3 s check, 5 s delivery) that only a hang would exceed.
    assert!(started.elapsed() < Duration::from_secs(10), "not hanging: {:?}", started.elapsed());
    assert!(message.contains("certificate verify failed"), "says why: {message}");
    assert!(message.starts_with(&config.bootstrap_servers()), "names the broker: {message}");

    // Producing fails too, within the delivery timeout, rather than waiting for ever.
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    let started = Instant::now();
    let sent = producer.produce(&config.topic, Some(b"k"), b"v", &[]).await;
    assert!(sent.is_err(), "nothing is delivered to an unverified broker");
    assert!(started.elapsed() < Duration::from_secs(15), "not hanging: {:?}", started.elapsed());
}
