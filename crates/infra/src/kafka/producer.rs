//! The producer: idempotent, acks=all, batched and compressed as configured; every send is a span and waits
//! for the broker's delivery report, so `Ok` means the record is stored.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use opentelemetry_semantic_conventions::attribute::ERROR_TYPE;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::client::base_client_config;
use super::config::KafkaConfig;
use super::connectivity::Connectivity;
use super::error::ProduceError;
use super::metrics::ProducerMetrics;
use super::record::context_headers;
use super::spans;

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
///
/// An idempotent producer can fail for good ("fatal error", e.g. `UnknownProducerId` with records in flight
/// after a broker lost its state in a restart): librdkafka then fails every later send. The failed producer
/// is replaced by a new one built from the same settings, shared by every clone, so sending recovers by
/// itself; the records it had failed stay failed (the caller retries them, as the outbox relay does).
#[derive(Clone)]
pub struct KafkaProducer {
    producer: Arc<RwLock<Arc<FutureProducer<ProducerContext>>>>,
    settings: Arc<ClientConfig>,
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
        let mut settings = base_client_config(config);
        settings
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("batch.num.messages", config.batch_size.to_string())
            .set("linger.ms", config.linger.as_millis().to_string())
            .set("compression.codec", config.compression)
            .set("delivery.timeout.ms", config.delivery_timeout.as_millis().to_string())
            // Topics are created on purpose (KAFKA_CREATE_TOPICS, with the service's partition count) or
            // provisioned, never as a side effect of a send: a broker that lost its topics would otherwise
            // re-create them with its own default partition count, or despite KAFKA_CREATE_TOPICS=false.
            .set("allow.auto.create.topics", "false")
            // Statistics tell the connectivity tracker when the brokers are reachable again.
            .set("statistics.interval.ms", "1000");
        let producer = create(&settings, &config.bootstrap_servers()).map_err(ProduceError::Config)?;
        let metrics = ProducerMetrics;
        metrics.register(&config.topic);
        Ok(KafkaProducer {
            producer: Arc::new(RwLock::new(Arc::new(producer))),
            settings: Arc::new(settings),
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
        let span = spans::send(topic, value.len(), &self.address);
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
        let producer = self.current();
        let result = tracing::Instrument::instrument(producer.send(record, self.delivery_timeout), span.clone())
            .await
            .map(|delivery| Delivered { partition: delivery.partition, offset: delivery.offset })
            .map_err(|(err, _)| {
                self.replace_if_failed_for_good(&producer, &err);
                self.classify(topic, err)
            });
        match &result {
            Ok(delivered) => {
                spans::delivered(&span, delivered.partition, delivered.offset);
                self.metrics.delivered(topic, started.elapsed());
            }
            Err(err) => {
                span.record("otel.status_code", "ERROR");
                span.record(ERROR_TYPE, err.metric_class());
                self.metrics.delivery_failed(topic, started.elapsed());
            }
        }
        result
    }

    /// Waits until every outstanding record is acknowledged, at most `timeout` (shutdown).
    pub async fn flush(&self, timeout: Duration) -> Result<(), ProduceError> {
        let producer = self.current();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => Ok(()),
            _ => Err(ProduceError::Unflushed { pending: self.in_flight(), timeout }),
        }
    }

    /// The bootstrap brokers (KAFKA_BROKERS), safe to log.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Records sent but not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.current().in_flight_count()
    }

    fn current(&self) -> Arc<FutureProducer<ProducerContext>> {
        self.producer.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Replaces the producer in use by a new one built from the same settings, shared by every clone: for a
    /// caller whose sends keep timing out while the cluster answers (an idempotent producer can hang in its
    /// producer-id handshake with a broker that restarted without its state, without a fatal error). Records
    /// still queued in the old producer fail.
    pub fn replace(&self, why: &str) {
        let current = self.current();
        if self.swap(&current) {
            tracing::warn!(target: "infra::kafka", reason = why, "Kafka producer replaced by a new one");
        }
    }

    /// Replaces `failed` when librdkafka reports it failed for good (its fatal error), or when the broker no
    /// longer knows its producer id (a broker restarted without its state: librdkafka may go on sending with the
    /// forgotten id, each send refused with `UnknownProducerId`, without raising a fatal error — seen in the fault
    /// matrix), unless a clone already replaced it. A new producer gets a new producer id, so its sends are
    /// accepted again.
    fn replace_if_failed_for_good(&self, failed: &Arc<FutureProducer<ProducerContext>>, err: &RdKafkaError) {
        if let Some((code, reason)) = failed.client().fatal_error() {
            if self.swap(failed) {
                tracing::warn!(target: "infra::kafka", error = %code, %reason, "Kafka producer failed for good; replaced by a new one");
            }
        } else if lost_producer_state(err) && self.swap(failed) {
            tracing::warn!(target: "infra::kafka", error = %err, "the brokers forgot the Kafka producer's id; replaced by a new one");
        }
    }

    /// Puts a new producer in place of `old` unless a clone already replaced it; whether it did. Dropping a
    /// librdkafka producer purges and flushes it (up to 500 ms) and joins its threads: the old one is dropped on
    /// the blocking pool.
    fn swap(&self, old: &Arc<FutureProducer<ProducerContext>>) -> bool {
        let replaced = {
            let mut slot = self.producer.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !Arc::ptr_eq(&slot, old) {
                return false;
            }
            match create(&self.settings, &self.address) {
                Ok(fresh) => std::mem::replace(&mut *slot, Arc::new(fresh)),
                Err(err) => {
                    tracing::error!(target: "infra::kafka", error = %err, "cannot create a Kafka producer to replace the failed one");
                    return false;
                }
            }
        };
        self.metrics.replaced();
        drop(tokio::task::spawn_blocking(move || drop(replaced)));
        true
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

/// Whether `err` says the brokers no longer know this producer's idempotence state (id, epoch, sequence).
fn lost_producer_state(err: &RdKafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
        )
    )
}

/// A librdkafka producer from `settings`, its connection errors and log lines going through a [`Connectivity`]
/// tracker of the brokers at `address` (a replacement producer gets its own).
fn create(settings: &ClientConfig, address: &str) -> Result<FutureProducer<ProducerContext>, RdKafkaError> {
    settings.create_with_context(ProducerContext { connectivity: Connectivity::new(address, "producer") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_producer_id_is_lost_state_and_a_timeout_is_not() {
        let refused = |code| RdKafkaError::MessageProduction(code);
        assert!(lost_producer_state(&refused(RDKafkaErrorCode::UnknownProducerId)));
        assert!(lost_producer_state(&refused(RDKafkaErrorCode::OutOfOrderSequenceNumber)));
        assert!(!lost_producer_state(&refused(RDKafkaErrorCode::MessageTimedOut)));
        assert!(!lost_producer_state(&refused(RDKafkaErrorCode::MessageSizeTooLarge)));
    }
}
