//! The producer: idempotent, acks=all, batched and compressed as configured; every send is a span and waits
//! for the broker's delivery report, so `Ok` means the record is stored.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tracing::field::Empty;

use super::client::base_client_config;
use super::config::KafkaConfig;
use super::connectivity::Connectivity;
use super::error::ProduceError;
use super::metrics::ProducerMetrics;
use super::record::context_headers;

/// Where a record was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The partition.
    pub partition: i32,
    /// The record's offset in it.
    pub offset: i64,
}

/// The producer's librdkafka context: connection errors and log lines go through [`Connectivity`] (one WARN
/// per outage, not one per reconnect).
struct ProducerContext {
    connectivity: Connectivity,
}

impl rdkafka::ClientContext for ProducerContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.connectivity.stats(&statistics);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.connectivity.log(level, facility, message);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        self.connectivity.error(&error, reason);
    }
}

/// A Kafka producer. Cheap to clone; clones share one librdkafka producer (thread-safe, batching across
/// callers).
#[derive(Clone)]
pub struct KafkaProducer {
    producer: Arc<FutureProducer<ProducerContext>>,
    delivery_timeout: Duration,
    address: String,
    metrics: ProducerMetrics,
}

impl fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaProducer").field("delivery_timeout", &self.delivery_timeout).finish_non_exhaustive()
    }
}

impl KafkaProducer {
    /// Creates the producer; librdkafka connects in the background, so this succeeds with brokers down.
    pub fn connect_lazy(config: &KafkaConfig) -> Result<Self, ProduceError> {
        let producer = base_client_config(config)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("batch.num.messages", config.batch_size.to_string())
            .set("linger.ms", config.linger.as_millis().to_string())
            .set("compression.codec", config.compression)
            .set("delivery.timeout.ms", config.delivery_timeout.as_millis().to_string())
            // Statistics tell the connectivity tracker when the brokers are reachable again.
            .set("statistics.interval.ms", "1000")
            .create_with_context(ProducerContext {
                connectivity: Connectivity::new(&config.bootstrap_servers(), "producer"),
            })
            .map_err(ProduceError::Config)?;
        let metrics = ProducerMetrics;
        metrics.register(&config.topic);
        Ok(KafkaProducer {
            producer: Arc::new(producer),
            delivery_timeout: config.delivery_timeout,
            address: config.bootstrap_servers(),
            metrics,
        })
    }

    /// Sends one record and waits for its delivery report. `headers` are sent as given, followed by the trace
    /// context of the `kafka.produce` span (`traceparent`, `tracestate`) and the current correlation id
    /// (`correlation-id`) unless `headers` already carry them.
    #[doc(alias = "produce_with_tracing")]
    pub async fn produce(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<Delivered, ProduceError> {
        let span = tracing::info_span!(
            target: "infra::kafka",
            "kafka.produce",
            otel.name = format!("{topic} publish"),
            otel.kind = "producer",
            otel.status_code = Empty,
            messaging.system = "kafka",
            messaging.operation.type = "publish",
            messaging.destination.name = topic,
            messaging.kafka.destination.partition = Empty,
            messaging.kafka.message.offset = Empty,
            messaging.message.body.size = value.len(),
            error.type = Empty,
        );
        let context = context_headers(&span, headers);
        let mut owned = OwnedHeaders::new_with_capacity(headers.len() + context.len());
        for (name, value) in headers {
            owned = owned.insert(Header { key: name, value: Some(*value) });
        }
        for (name, value) in &context {
            owned = owned.insert(Header { key: name, value: Some(value.as_bytes()) });
        }
        let mut record = FutureRecord::to(topic).payload(value).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        let started = Instant::now();
        let result = tracing::Instrument::instrument(self.producer.send(record, self.delivery_timeout), span.clone())
            .await
            .map(|delivery| Delivered { partition: delivery.partition, offset: delivery.offset })
            .map_err(|(err, _)| self.classify(topic, err));
        match &result {
            Ok(delivered) => {
                span.record("messaging.kafka.destination.partition", delivered.partition);
                span.record("messaging.kafka.message.offset", delivered.offset);
                self.metrics.delivered(topic, started.elapsed());
            }
            Err(err) => {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", err.metric_class());
                self.metrics.delivery_failed(topic, started.elapsed());
            }
        }
        result
    }

    /// Waits until every outstanding record is acknowledged, at most `timeout` (shutdown).
    pub async fn flush(&self, timeout: Duration) -> Result<(), ProduceError> {
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => Ok(()),
            _ => Err(ProduceError::Unflushed { pending: self.producer.in_flight_count(), timeout }),
        }
    }

    /// The bootstrap brokers (KAFKA_BROKERS), safe to log.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Records sent but not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    fn classify(&self, topic: &str, err: RdKafkaError) -> ProduceError {
        match err.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::QueueFull) => {
                ProduceError::TimedOut { topic: topic.to_string(), timeout: self.delivery_timeout }
            }
            _ => ProduceError::Rejected { topic: topic.to_string(), cause: err },
        }
    }
}
