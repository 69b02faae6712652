//! Trace context through Kafka: the producer's span context travels in the record's headers and the
//! consumer's processing span continues that trace; the correlation id follows. Spans are collected by an
//! in-memory exporter under a subscriber scoped to this test's thread (its own binary: no global state).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use infra::config::Sources;
use infra::kafka::{Handler, HandlerError, KafkaClient, KafkaConsumer, KafkaProducer, Record, headers};
use infra::settings::Config;
use infra::telemetry::propagation;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use test_support::unique;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;

/// What the handler saw while handling the one record: its trace id, the correlation id, the record.
#[derive(Clone)]
struct Handled {
    trace_id: Option<String>,
    correlation_id: Option<String>,
    record: Record,
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Option<Handled>>>);

struct Capture {
    seen: Seen,
    done: CancellationToken,
}

#[async_trait]
impl Handler for Capture {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let trace_id = propagation::trace_id(&tracing::Span::current());
        let correlation = propagation::correlation_id().map(|id| id.to_string());
        *self.seen.0.lock().expect("lock") =
            Some(Handled { trace_id, correlation_id: correlation, record: record.clone() });
        self.done.cancel();
        Ok(())
    }
}

#[tokio::test]
async fn the_consumer_span_continues_the_producers_trace_and_the_correlation_id_follows() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry().with(infra::telemetry::trace_layer(&provider));
    let _scope = tracing::subscriber::set_default(subscriber);

    let topic = unique("traced");
    let env = [("KAFKA_BROKERS", "127.0.0.1:9092"), ("KAFKA_TOPIC", topic.as_str()), ("KAFKA_SESSION_TIMEOUT", "6")];
    let group = unique("group");
    let mut env = env.to_vec();
    env.push(("KAFKA_CONSUMER_GROUP", group.as_str()));
    let config = Config::from_sources(&Sources::from_env_pairs(&env)).expect("config").kafka;
    KafkaClient::connect_lazy(&config)
        .expect("admin")
        .ensure_topic(&topic, 1, Duration::from_secs(10))
        .await
        .expect("topic");
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");

    let request = tracing::info_span!("test request");
    let request_trace = propagation::trace_id(&request).expect("the request span has a trace id");
    let produce = producer.produce(&topic, Some(b"k"), b"v", &[("source", b"test")]);
    propagation::with_correlation_id(Arc::from("req-7"), tracing::Instrument::instrument(produce, request.clone()))
        .await
        .expect("delivered");
    drop(request);

    let seen = Seen::default();
    let done = CancellationToken::new();
    let consumer = KafkaConsumer::connect_lazy(&config, producer.clone()).expect("consumer");
    let handler = Capture { seen: seen.clone(), done: done.clone() };
    let consuming = consumer.consume(&handler, done.clone(), Duration::from_secs(10));
    tokio::time::timeout(Duration::from_secs(60), consuming).await.expect("the record is consumed within a minute");

    let Handled { trace_id: handler_trace, correlation_id: correlation, record } =
        seen.0.lock().expect("lock").clone().expect("handled");
    assert_eq!(handler_trace.as_deref(), Some(request_trace.as_str()), "the handler runs in the producer's trace");
    assert_eq!(correlation.as_deref(), Some("req-7"));
    assert_eq!(record.header(headers::CORRELATION_ID), Some(b"req-7".as_slice()));
    let traceparent = String::from_utf8(record.header(headers::TRACEPARENT).expect("traceparent").to_vec());
    assert!(traceparent.expect("ASCII").contains(&request_trace));
    assert_eq!(record.header("source"), Some(b"test".as_slice()), "the caller's headers are kept");

    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let publish = spans.iter().find(|s| s.span_kind == SpanKind::Producer).expect("a producer span");
    let process = spans.iter().find(|s| s.span_kind == SpanKind::Consumer).expect("a consumer span");
    assert_eq!(publish.span_context.trace_id().to_string(), request_trace);
    assert_eq!(process.span_context.trace_id(), publish.span_context.trace_id());
    assert_eq!(process.parent_span_id, publish.span_context.span_id(), "processing is a child of publishing");
    assert_eq!(process.name, format!("process {topic}"));
    assert_eq!(publish.name, format!("send {topic}"));

    // OpenTelemetry's messaging conventions for Kafka.
    let attribute = |span: &SpanData, key: &str| {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
    };
    let delivered = |key: &str| attribute(publish, key);
    let processed = |key: &str| attribute(process, key);
    for span in [publish, process] {
        assert_eq!(attribute(span, "messaging.system").as_deref(), Some("kafka"));
        assert_eq!(attribute(span, "messaging.destination.name").as_deref(), Some(topic.as_str()));
        assert_eq!(attribute(span, "messaging.destination.partition.id").as_deref(), Some("0"), "one partition");
        assert_eq!(attribute(span, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(attribute(span, "server.port").as_deref(), Some("9092"));
        assert_eq!(attribute(span, "messaging.kafka.message.key"), None, "keys are the caller's data");
    }
    assert_eq!(delivered("messaging.operation.type").as_deref(), Some("send"));
    assert_eq!(delivered("messaging.operation.name").as_deref(), Some("send"));
    assert_eq!(delivered("messaging.kafka.offset"), Some(record.offset.to_string()));
    assert_eq!(delivered("messaging.message.body.size").as_deref(), Some("1"));
    assert_eq!(processed("messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(processed("messaging.operation.name").as_deref(), Some("process"));
    assert_eq!(processed("messaging.kafka.offset"), Some(record.offset.to_string()));
    assert_eq!(processed("messaging.consumer.group.name").as_deref(), Some(group.as_str()));
}
