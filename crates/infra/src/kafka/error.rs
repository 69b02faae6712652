//! Errors of the Kafka layer, one place for all: the admin client's, the producer's, the consumer's and the
//! handler's. Each has a `metric_class` for span and metric labels. Messages never contain the SASL password.

use std::fmt;
use std::time::Duration;

use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// The reason of a [`KafkaError::Topic`] for a topic the metadata does not list at all.
pub(crate) const NOT_IN_METADATA: &str = "not in metadata";

/// Errors of the admin client (metadata, topics) and of reading the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused the configuration.
    #[error("invalid Kafka client configuration: {0}")]
    Config(RdKafkaError),
    /// A metadata request failed or timed out.
    #[error("metadata request failed: {0}")]
    Metadata(RdKafkaError),
    /// A metadata request failed after connecting to the brokers failed: `cause` is librdkafka's own reason
    /// (a TLS handshake whose certificate did not verify, a failed authentication, a name that does not resolve),
    /// which the request's error ("timed out", "transport failure") does not say.
    #[error("metadata request failed: {error}; last connection error: {cause}")]
    Connection {
        /// The request's error.
        error: RdKafkaError,
        /// The last connection error reported since the client's last successful request (never contains the
        /// SASL password).
        cause: String,
    },
    /// The broker answered but the topic is unusable.
    #[error("topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A blocking librdkafka call could not be run.
    #[error("Kafka call aborted: {0}")]
    Aborted(String),
}

impl KafkaError {
    /// Whether the broker answered that the topic does not exist (a metadata request, see
    /// [`super::KafkaClient::topic_metadata`]).
    pub fn is_unknown_topic(&self) -> bool {
        match self {
            KafkaError::Topic { reason, .. } => {
                reason == NOT_IN_METADATA || *reason == RDKafkaErrorCode::UnknownTopicOrPartition.to_string()
            }
            _ => false,
        }
    }

    /// A low-cardinality label for spans and metrics.
    pub fn metric_class(&self) -> &'static str {
        match self {
            KafkaError::Config(_) => "config",
            KafkaError::Metadata(_) | KafkaError::Connection { .. } => "metadata",
            KafkaError::Topic { .. } => "topic",
            KafkaError::Aborted(_) => "aborted",
        }
    }
}

/// Why a record was not stored. The record was not acknowledged; it may or may not have been written (a
/// timeout after the broker wrote it): consumers must tolerate duplicates (at-least-once).
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// librdkafka refused the producer configuration.
    #[error("invalid Kafka producer configuration: {0}")]
    Config(RdKafkaError),
    /// No acknowledgement within KAFKA_DELIVERY_TIMEOUT (brokers unreachable, or too slow).
    #[error("record for {topic} not acknowledged within {timeout:?}")]
    TimedOut {
        /// The topic.
        topic: String,
        /// KAFKA_DELIVERY_TIMEOUT.
        timeout: Duration,
    },
    /// The broker or the client rejected the record (unknown topic, too large, not authorized...).
    #[error("record for {topic} rejected: {cause}")]
    Rejected {
        /// The topic.
        topic: String,
        /// librdkafka's error.
        cause: RdKafkaError,
    },
    /// Outstanding records could not all be delivered before the flush deadline.
    #[error("{pending} record(s) still unacknowledged after flushing for {timeout:?}")]
    Unflushed {
        /// Records still in the producer's queue.
        pending: i32,
        /// The deadline.
        timeout: Duration,
    },
}

impl ProduceError {
    /// A low-cardinality label for spans and metrics.
    pub fn metric_class(&self) -> &'static str {
        match self {
            ProduceError::Config(_) => "config",
            ProduceError::TimedOut { .. } => "timeout",
            ProduceError::Rejected { .. } => "rejected",
            ProduceError::Unflushed { .. } => "unflushed",
        }
    }

    /// Whether the record itself is at fault, so sending it again cannot succeed: too large for the broker's
    /// or the client's limit, malformed, or refused by a topic policy. Outages, timeouts, a missing topic and
    /// a producer that failed for good are not the record's fault: they pass once the cluster or the producer
    /// is well again.
    pub fn is_record_rejected(&self) -> bool {
        let ProduceError::Rejected { cause, .. } = self else { return false };
        matches!(
            cause.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::InvalidMessage
                    | RDKafkaErrorCode::MessageBatchTooLarge
                    | RDKafkaErrorCode::InvalidRecord
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::PolicyViolation
            )
        )
    }

    /// Whether the topic does not exist (the broker lost it, or it was never created).
    pub fn is_unknown_topic(&self) -> bool {
        let ProduceError::Rejected { cause, .. } = self else { return false };
        matches!(
            cause.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        )
    }
}

/// Why consumption stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// librdkafka refused the consumer configuration or the subscription.
    #[error("cannot start the Kafka consumer: {0}")]
    Start(RdKafkaError),
}

impl ConsumeError {
    /// A low-cardinality label for spans and metrics.
    pub fn metric_class(&self) -> &'static str {
        match self {
            ConsumeError::Start(_) => "start",
        }
    }
}

/// A handler's failure: transient ones are retried up to KAFKA_MAX_RETRIES, permanent ones go straight to the
/// dead-letter topic, and "unavailable" ones (a dependency is down) are retried until it is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    message: String,
    pub(crate) kind: FailureKind,
}

/// How the consumer treats a handler failure (see the constructors of [`HandlerError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Transient,
    Permanent,
    Unavailable,
}

impl HandlerError {
    /// A failure that may pass on a later attempt (a conflict, a timeout): retried up to KAFKA_MAX_RETRIES,
    /// then dead-lettered.
    pub fn transient(cause: impl fmt::Display) -> Self {
        HandlerError { message: cause.to_string(), kind: FailureKind::Transient }
    }

    /// A failure no retry can fix (a malformed record): dead-lettered at once.
    pub fn permanent(cause: impl fmt::Display) -> Self {
        HandlerError { message: cause.to_string(), kind: FailureKind::Permanent }
    }

    /// A dependency the handler needs is down (the database unreachable): the record is not at fault, so it is
    /// retried with capped backoff for as long as that lasts (until shutdown) instead of being dead-lettered —
    /// an outage must not empty the topic into the dead-letter topic. Consumption of the partition waits.
    pub fn unavailable(cause: impl fmt::Display) -> Self {
        HandlerError { message: cause.to_string(), kind: FailureKind::Unavailable }
    }

    /// Whether retrying is pointless.
    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// Whether a dependency is down (retried without limit).
    pub fn is_unavailable(&self) -> bool {
        self.kind == FailureKind::Unavailable
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: RDKafkaErrorCode) -> ProduceError {
        ProduceError::Rejected { topic: "t".into(), cause: RdKafkaError::MessageProduction(code) }
    }

    #[test]
    fn only_a_record_at_fault_counts_as_rejected_for_its_own_sake() {
        assert!(rejected(RDKafkaErrorCode::MessageSizeTooLarge).is_record_rejected());
        assert!(rejected(RDKafkaErrorCode::InvalidRecord).is_record_rejected());
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownProducerId,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(!rejected(code).is_record_rejected(), "{code:?}");
        }
        let timed_out = ProduceError::TimedOut { topic: "t".into(), timeout: Duration::from_secs(1) };
        assert!(!timed_out.is_record_rejected());
    }

    #[test]
    fn a_missing_topic_is_recognised_in_sends_and_metadata() {
        assert!(rejected(RDKafkaErrorCode::UnknownTopicOrPartition).is_unknown_topic());
        assert!(rejected(RDKafkaErrorCode::UnknownTopic).is_unknown_topic());
        assert!(!rejected(RDKafkaErrorCode::MessageSizeTooLarge).is_unknown_topic());
        let unknown = RDKafkaErrorCode::UnknownTopicOrPartition.to_string();
        assert!(KafkaError::Topic { topic: "t".into(), reason: unknown }.is_unknown_topic());
        assert!(KafkaError::Topic { topic: "t".into(), reason: NOT_IN_METADATA.into() }.is_unknown_topic());
        assert!(
            !KafkaError::Topic { topic: "t".into(), reason: "Broker: Leader not available".into() }.is_unknown_topic()
        );
    }
}
