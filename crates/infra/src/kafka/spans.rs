//! The spans of a send and of processing one record, on OpenTelemetry's messaging conventions for Kafka
//! (names from `opentelemetry-semantic-conventions`, so they cannot drift): `send {topic}` (producer) and
//! `process {topic}` (consumer), with the destination, partition, offset, consumer group and the first
//! bootstrap broker as `server.address`. Record keys are never recorded: they are the caller's data.

use opentelemetry_semantic_conventions::attribute::{
    ERROR_TYPE, MESSAGING_CONSUMER_GROUP_NAME, MESSAGING_DESTINATION_NAME, MESSAGING_DESTINATION_PARTITION_ID,
    MESSAGING_KAFKA_OFFSET, MESSAGING_MESSAGE_BODY_SIZE, MESSAGING_OPERATION_NAME, MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM, SERVER_ADDRESS, SERVER_PORT,
};
use tracing::Span;
use tracing::field::{Empty, display};

use super::record::Record;

/// `messaging.system` of every span here.
const KAFKA: &str = "kafka";

/// The span of one send of a `body_size`-byte record to `topic`, through brokers `bootstrap` (KAFKA_BROKERS).
/// Where the record landed is added by [`delivered`].
pub(crate) fn send(topic: &str, body_size: usize, bootstrap: &str) -> Span {
    let (host, port) = first_broker(bootstrap);
    tracing::info_span!(
        target: "infra::kafka",
        "kafka.produce",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        { MESSAGING_SYSTEM } = KAFKA,
        { MESSAGING_OPERATION_TYPE } = "send",
        { MESSAGING_OPERATION_NAME } = "send",
        { MESSAGING_DESTINATION_NAME } = topic,
        { MESSAGING_DESTINATION_PARTITION_ID } = Empty,
        { MESSAGING_KAFKA_OFFSET } = Empty,
        { MESSAGING_MESSAGE_BODY_SIZE } = body_size,
        { SERVER_ADDRESS } = host,
        { SERVER_PORT } = port,
        { ERROR_TYPE } = Empty,
    )
}

/// Records on a [`send`] span where the record was stored.
pub(crate) fn delivered(span: &Span, partition: i32, offset: i64) {
    span.record(MESSAGING_DESTINATION_PARTITION_ID, display(partition));
    span.record(MESSAGING_KAFKA_OFFSET, offset);
}

/// The `server.address` and `server.port` of a client's spans: its first bootstrap broker, parsed once per
/// client rather than once per record.
#[derive(Clone, Debug)]
pub(crate) struct Server {
    host: String,
    port: Option<u16>,
}

impl Server {
    /// The first of the comma-separated `host:port` brokers in `bootstrap` (KAFKA_BROKERS).
    pub(crate) fn first_of(bootstrap: &str) -> Self {
        let (host, port) = first_broker(bootstrap);
        Server { host: host.to_string(), port }
    }
}

/// The span of handling one consumed `record` as a member of `group`, read from `server`. `attempts`,
/// `dead_lettered` and `correlation_id` are this service's own fields, recorded by the consumer.
pub(crate) fn process(record: &Record, group: &str, server: &Server) -> Span {
    let Server { host, port } = server;
    tracing::info_span!(
        target: "infra::kafka",
        "kafka.process",
        otel.name = %format_args!("process {}", record.topic),
        otel.kind = "consumer",
        otel.status_code = Empty,
        { MESSAGING_SYSTEM } = KAFKA,
        { MESSAGING_OPERATION_TYPE } = "process",
        { MESSAGING_OPERATION_NAME } = "process",
        { MESSAGING_DESTINATION_NAME } = %record.topic,
        { MESSAGING_DESTINATION_PARTITION_ID } = %record.partition,
        { MESSAGING_KAFKA_OFFSET } = record.offset,
        { MESSAGING_CONSUMER_GROUP_NAME } = group,
        { MESSAGING_MESSAGE_BODY_SIZE } = record.value.as_ref().map_or(0, Vec::len),
        { SERVER_ADDRESS } = host.as_str(),
        { SERVER_PORT } = *port,
        { ERROR_TYPE } = Empty,
        attempts = Empty,
        dead_lettered = false,
        correlation_id = Empty,
    )
}

/// Host and port of the first of the comma-separated `host:port` brokers (the one a client contacts first).
fn first_broker(bootstrap: &str) -> (&str, Option<u16>) {
    let first = bootstrap.split(',').next().unwrap_or_default().trim();
    match first.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => {
            (host.trim_start_matches('[').trim_end_matches(']'), port.parse().ok())
        }
        _ => (first, None),
    }
}

#[cfg(test)]
mod tests {
    use super::first_broker;

    #[test]
    fn the_first_broker_is_the_server() {
        assert_eq!(first_broker("127.0.0.1:9092,127.0.0.1:9093"), ("127.0.0.1", Some(9092)));
        assert_eq!(first_broker("kafka-0.internal:9093"), ("kafka-0.internal", Some(9093)));
        assert_eq!(first_broker("[::1]:9092"), ("::1", Some(9092)));
        assert_eq!(first_broker("broker"), ("broker", None));
    }
}
