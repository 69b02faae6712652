//! What librdkafka says about its connections, turned into one WARN when the brokers go away, one INFO when
//! they are back, and a counter in between (`kafka_connection_errors_total`). Left alone, librdkafka reports
//! every failed reconnect — an ERROR from its error callback and another from its log callback, several per
//! second across the producer and the consumer — for as long as an outage lasts.
//!
//! Clients of the same brokers (same KAFKA_BROKERS) in one process share one tracker: the brokers are
//! unreachable from the first client's connection error until every client that saw one is connected again
//! (its statistics show a broker up and no new connection error). Other errors and log lines keep their level.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::Instant;

use metrics::{Counter, counter};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use super::metrics::names;

/// The trackers of this process, by bootstrap address.
static CLUSTERS: LazyLock<Mutex<HashMap<String, Weak<Cluster>>>> = LazyLock::new(Mutex::default);
/// Identifies clients within a tracker.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(0);

/// librdkafka's log facilities of connection attempts and losses: logged at DEBUG, counted through the outage.
const CONNECTION_FACILITIES: [&str; 5] = ["FAIL", "CONNECT", "BROKERFAIL", "REQTMOUT", "DISCONNECT"];

/// Whether `error` says a broker cannot be reached (rather than that a request or a record is wrong).
pub(crate) fn is_connection_error(error: &RdKafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::CoordinatorNotAvailable
        )
    )
}

/// Whether `error` says a topic does not exist (yet): a subscribed topic being created, or gone with the broker
/// that held it.
pub(crate) fn is_missing_topic(error: &RdKafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
    )
}

/// The outage of one set of brokers, as every client of it in this process sees it.
#[derive(Debug)]
struct Cluster {
    address: String,
    outage: Mutex<Outage>,
}

#[derive(Debug, Default)]
struct Outage {
    /// Clients whose last word was a connection error.
    clients_down: BTreeSet<u64>,
    since: Option<Instant>,
    errors: u64,
}

impl Cluster {
    fn shared(address: &str) -> Arc<Cluster> {
        let mut clusters = CLUSTERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        clusters.retain(|_, cluster| cluster.strong_count() > 0);
        if let Some(cluster) = clusters.get(address).and_then(Weak::upgrade) {
            return cluster;
        }
        let cluster = Arc::new(Cluster { address: address.to_string(), outage: Mutex::default() });
        clusters.insert(address.to_string(), Arc::downgrade(&cluster));
        cluster
    }

    fn lock(&self) -> MutexGuard<'_, Outage> {
        self.outage.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn went_away(&self, client: u64, kind: &str, reason: &str) {
        let mut outage = self.lock();
        outage.errors += 1;
        let first = outage.clients_down.is_empty();
        outage.clients_down.insert(client);
        if first {
            outage.since = Some(Instant::now());
            tracing::warn!(
                target: "infra::kafka", brokers = %self.address, client = kind, reason,
                "Kafka brokers unreachable; librdkafka keeps reconnecting (each failure counted in kafka_connection_errors_total)"
            );
        }
    }

    fn back(&self, client: u64) {
        let mut outage = self.lock();
        if !outage.clients_down.remove(&client) || !outage.clients_down.is_empty() {
            return;
        }
        let lasted = outage.since.take().map(|since| since.elapsed()).unwrap_or_default();
        tracing::info!(
            target: "infra::kafka", brokers = %self.address, after = ?lasted, connection_errors = outage.errors,
            "Kafka brokers reachable again"
        );
        outage.errors = 0;
    }

    /// A client went away (dropped) while down: it no longer holds the outage open.
    fn forget(&self, client: u64) {
        let mut outage = self.lock();
        outage.clients_down.remove(&client);
        if outage.clients_down.is_empty() {
            outage.since = None;
            outage.errors = 0;
        }
    }
}

/// One librdkafka client's side of the tracker: its `log`, `error` and `stats` callbacks go through here.
#[derive(Debug)]
pub(crate) struct Connectivity {
    id: u64,
    kind: &'static str,
    cluster: Arc<Cluster>,
    errors: Counter,
    /// Connection errors since the last statistics: a client is back only after a quiet interval.
    recent_errors: AtomicU64,
}

impl Connectivity {
    /// The tracker of a `kind` client (`producer`, `consumer`) of the brokers at `address`.
    pub(crate) fn new(address: &str, kind: &'static str) -> Self {
        let errors = counter!(names::CONNECTION_ERRORS, "client" => kind);
        errors.increment(0);
        Connectivity {
            id: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
            kind,
            cluster: Cluster::shared(address),
            errors,
            recent_errors: AtomicU64::new(0),
        }
    }

    /// librdkafka's error callback.
    pub(crate) fn error(&self, error: &RdKafkaError, reason: &str) {
        if is_connection_error(error) {
            self.connection_failed(reason);
        } else if is_missing_topic(error) {
            // The consumer waits for the topic and consumes it once created; /health/kafka reports it missing.
            tracing::warn!(target: "librdkafka", client = self.kind, error = %error, reason, "Kafka topic not available");
        } else {
            tracing::error!(target: "librdkafka", client = self.kind, error = %error, reason, "Kafka client error");
        }
    }

    /// librdkafka's log callback: connection failures are counted and logged at DEBUG, the rest as librdkafka
    /// ranks them.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if CONNECTION_FACILITIES.contains(&facility) {
            tracing::debug!(target: "librdkafka", client = self.kind, facility, message);
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", client = self.kind, facility, message)
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", client = self.kind, facility, message),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", client = self.kind, facility, message)
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", client = self.kind, facility, message),
        }
    }

    /// librdkafka's statistics: a broker up and no connection error since the previous statistics means this
    /// client is connected again.
    pub(crate) fn stats(&self, statistics: &Statistics) {
        self.brokers_seen(statistics.brokers.values().any(|broker| broker.state == "UP"));
    }

    fn brokers_seen(&self, any_up: bool) {
        let quiet = self.recent_errors.swap(0, Ordering::Relaxed) == 0;
        if quiet && any_up {
            self.cluster.back(self.id);
        }
    }

    fn connection_failed(&self, reason: &str) {
        self.errors.increment(1);
        self.recent_errors.fetch_add(1, Ordering::Relaxed);
        self.cluster.went_away(self.id, self.kind, reason);
        tracing::debug!(target: "librdkafka", client = self.kind, reason, "Kafka connection error");
    }
}

impl Drop for Connectivity {
    fn drop(&mut self) {
        self.cluster.forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError as RdKafkaError;

    use super::*;

    fn transport_failure() -> RdKafkaError {
        RdKafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure)
    }

    fn outage_of(cluster: &Cluster) -> (usize, u64) {
        let outage = cluster.lock();
        (outage.clients_down.len(), outage.errors)
    }

    #[test]
    fn connection_errors_are_told_from_other_errors() {
        assert!(is_connection_error(&transport_failure()));
        assert!(is_connection_error(&RdKafkaError::Global(RDKafkaErrorCode::AllBrokersDown)));
        assert!(is_connection_error(&RdKafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(!is_connection_error(&RdKafkaError::Global(RDKafkaErrorCode::SSL)));
        assert!(!is_connection_error(&RdKafkaError::Global(RDKafkaErrorCode::UnknownTopicOrPartition)));
    }

    #[test]
    fn an_outage_lasts_from_the_first_error_until_every_client_that_saw_one_is_back() {
        let address = format!("test-{}:9092", NEXT_CLIENT.fetch_add(1, Ordering::Relaxed));
        let (producer, consumer) = (Connectivity::new(&address, "producer"), Connectivity::new(&address, "consumer"));
        let cluster = producer.cluster.clone();
        assert!(Arc::ptr_eq(&cluster, &consumer.cluster), "one tracker per set of brokers");

        producer.error(&transport_failure(), "connection refused");
        producer.error(&transport_failure(), "connection refused");
        consumer.error(&transport_failure(), "connection refused");
        assert_eq!(outage_of(&cluster), (2, 3));

        producer.brokers_seen(true);
        assert_eq!(outage_of(&cluster), (2, 3), "not back: errors since the previous statistics");
        producer.brokers_seen(true);
        assert_eq!(outage_of(&cluster), (1, 3), "the producer is back, the consumer not yet");
        consumer.brokers_seen(false);
        consumer.brokers_seen(false);
        assert_eq!(outage_of(&cluster), (1, 3), "no broker up");
        consumer.brokers_seen(true);
        assert_eq!(outage_of(&cluster), (0, 0), "over");

        consumer.error(&transport_failure(), "connection refused");
        drop(consumer);
        assert_eq!(outage_of(&cluster), (0, 0), "a client dropped while down does not hold the outage open");
    }
}
