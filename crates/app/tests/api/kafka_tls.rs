//! The service against a broker reached over TLS (`KAFKA_SECURITY_PROTOCOL=SSL`, `KAFKA_SSL_CA_LOCATION`): a
//! private broker behind a TLS terminator whose certificate a test CA signed (test_support::tls explains why
//! the broker does not end TLS itself).

use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::kafka::PrivateKafka;
use test_support::tls::{TestPki, TlsTerminator};

use crate::helpers::{free_port, spawn_app};

/// A private broker reachable only through a TLS terminator, with the test CA that signed its certificate.
struct TlsBroker {
    pki: TestPki,
    /// `KAFKA_BROKERS`: the terminator's address.
    brokers: String,
    _terminator: TlsTerminator,
    _broker: PrivateKafka,
}

async fn tls_broker() -> TlsBroker {
    let pki = TestPki::generate();
    let (broker_port, tls_port) = (free_port(), free_port());
    let broker = PrivateKafka::start_advertising(broker_port, tls_port).await;
    let terminator = TlsTerminator::start(tls_port, broker_port, &pki).await;
    TlsBroker { pki, brokers: format!("127.0.0.1:{tls_port}"), _terminator: terminator, _broker: broker }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_health_is_up_over_tls_with_the_right_ca_and_the_consumer_joins() {
    let tls = tls_broker().await;
    let ca = tls.pki.ca_file.to_str().expect("utf-8 path");
    let app = spawn_app(&[
        ("KAFKA_BROKERS", &tls.brokers),
        ("KAFKA_SECURITY_PROTOCOL", "SSL"),
        ("KAFKA_SSL_CA_LOCATION", ca),
        ("HEALTH_CACHE_TTL", "0"),
    ])
    .await;
    // The topics are created in the background at start (over TLS too); the consumer then joins.
    let joined = |status: u16, b: &Value| {
        status == 200 && b["details"]["consumer"]["assigned_partitions"].as_array().is_some_and(|p| p.len() == 3)
    };
    let (status, body) = app.eventually("/health/kafka", Duration::from_secs(40), joined).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("up")), "{body:#}");
    assert_eq!(body["details"]["address"], tls.brokers.as_str(), "{body:#}");
    assert_eq!(body["details"]["partitions"], 3, "{body:#}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_reports_kafka_down_with_the_certificate_error_quickly_and_no_secret() {
    let tls = tls_broker().await;
    let wrong_ca = tls.pki.unrelated_ca_file.to_str().expect("utf-8 path");
    let password = "Kafka-Secret-7f3a";
    let app = spawn_app(&[
        ("KAFKA_BROKERS", &tls.brokers),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ("KAFKA_SASL_USERNAME", "rust-app"),
        ("KAFKA_SASL_PASSWORD", password),
        ("KAFKA_SSL_CA_LOCATION", wrong_ca),
        ("HEALTH_CACHE_TTL", "0"),
    ])
    .await;
    let started = Instant::now();
    let (status, body) = app.get_json("/health/kafka").await;
    let took = started.elapsed();
    assert_eq!((status, body["status"].as_str()), (503, Some("down")), "{body:#}");
    // Not a performance figure: a bound far above HEALTH_CHECK_TIMEOUT (2 s) that only a hang would exceed.
    assert!(took < Duration::from_secs(10), "answered, not hanging: {took:?}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("certificate verify failed"), "says the certificate could not be verified: {error}");
    assert!(error.starts_with(&tls.brokers), "names the broker: {error}");
    let (_, everything) = app.get_json("/health").await;
    assert!(!everything.to_string().contains(password), "no secret in health: {everything}");
    assert!(!body.to_string().contains(password));
    app.stop().await;
}
