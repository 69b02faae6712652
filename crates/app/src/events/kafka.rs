//! The Kafka side of events: publishing to the event topic, and the consumer's handler that records each
//! consumed event in the event log.

use std::sync::Arc;

use async_trait::async_trait;
use infra::kafka::{Handler, HandlerError, KafkaProducer, Record};

use super::{Event, EventLog, EventPublisher, LoggedEvent, Origin, PortError, Published};

/// Publishes events as JSON records keyed by the event's key (same key, same partition, consumed in order).
#[derive(Clone, Debug)]
pub struct KafkaEventPublisher {
    producer: KafkaProducer,
    topic: String,
}

impl KafkaEventPublisher {
    /// Publishes to `topic` through `producer`.
    pub fn new(producer: KafkaProducer, topic: String) -> Self {
        KafkaEventPublisher { producer, topic }
    }
}

#[async_trait]
impl EventPublisher for KafkaEventPublisher {
    async fn publish(&self, event: &Event) -> Result<Published, PortError> {
        let value =
            serde_json::to_vec(event).map_err(|err| PortError::failed(format!("cannot encode the event: {err}")))?;
        let headers: [(&str, &[u8]); 1] = [("event-type", event.kind.as_str().as_bytes())];
        let delivered = self
            .producer
            .produce_with_tracing(&self.topic, Some(event.key.as_str().as_bytes()), &value, &headers)
            .await
            .map_err(|err| PortError::unavailable(err.to_string()))?;
        Ok(Published { partition: delivered.partition, offset: delivered.offset })
    }
}

/// Records every consumed event in the event log. A record that is not an event can never succeed: it goes
/// to the dead-letter topic at once. An unavailable database is waited for (the record is retried until it is
/// back); other database errors are retried up to KAFKA_MAX_RETRIES.
pub struct EventLogHandler {
    log: Arc<dyn EventLog>,
}

impl EventLogHandler {
    /// Records into `log`.
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        EventLogHandler { log }
    }
}

#[async_trait]
impl Handler for EventLogHandler {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let value = record.value.as_deref().ok_or_else(|| HandlerError::permanent("record has no value"))?;
        let event: Event =
            serde_json::from_slice(value).map_err(|err| HandlerError::permanent(format!("not an event: {err}")))?;
        let origin = Origin { topic: record.topic.clone(), partition: record.partition, offset: record.offset };
        let entry = LoggedEvent { event, origin };
        let new = self.log.record(&entry).await.map_err(|err| {
            // The database down: wait for it rather than dead-letter every event of the outage.
            if err.unavailable { HandlerError::unavailable(err) } else { HandlerError::transient(err) }
        })?;
        if new {
            tracing::info!(event_id = %entry.event.id, event_type = entry.event.kind.as_str(), "event recorded");
        } else {
            tracing::info!(event_id = %entry.event.id, "event already recorded (redelivery)");
        }
        Ok(())
    }
}
