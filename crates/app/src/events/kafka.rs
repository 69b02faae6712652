//! The Kafka side of events: publishing to the event topic, and the consumer's handler that records each
//! consumed event in the event log and applies it to the projections.

use std::sync::Arc;

use async_trait::async_trait;
use infra::kafka::{Handler, HandlerError, KafkaProducer, Record};

use super::{
    Applied, Event, EventLog, EventProjection, EventPublisher, LoggedEvent, Origin, PortError, ProjectionError,
    Published,
};

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
            .produce(&self.topic, Some(event.key.as_str().as_bytes()), &value, &headers)
            .await
            .map_err(|err| PortError::unavailable(err.to_string()))?;
        Ok(Published { partition: delivered.partition, offset: delivered.offset })
    }
}

/// Records every consumed event in the event log, then hands it to each projection (in the order they were
/// added), so the service's single consumer keeps the log and every read model. A record that is not an event,
/// or an event a projection follows that does not parse, can never succeed: it goes to the dead-letter topic
/// at once. A store failure waiting can fix (PortError `unavailable`: the database down, read-only during a
/// failover, out of resources, a statement or lock timeout; Redis down) is waited for: the record is retried
/// until the store answers, without spending its retries. Other store failures (bad data, a violated
/// constraint) are retried up to KAFKA_MAX_RETRIES, then dead-lettered. A retry repeats every step: the log and the projections are
/// idempotent, so what already succeeded changes nothing the second time.
pub struct EventLogHandler {
    log: Arc<dyn EventLog>,
    projections: Vec<Arc<dyn EventProjection>>,
}

impl EventLogHandler {
    /// Records into `log`.
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        EventLogHandler { log, projections: Vec::new() }
    }

    /// Also applies every event to `projection`, after the log and the projections added before it.
    pub fn with_projection(mut self, projection: Arc<dyn EventProjection>) -> Self {
        self.projections.push(projection);
        self
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
        let new = self.log.record(&entry).await.map_err(port_failure)?;
        if new {
            tracing::info!(event_id = %entry.event.id, event_type = entry.event.kind.as_str(), "event recorded");
        } else {
            tracing::info!(event_id = %entry.event.id, "event already recorded (redelivery)");
        }
        for projection in &self.projections {
            apply(projection.as_ref(), &entry.event).await?;
        }
        Ok(())
    }
}

/// Applies `event` to `projection`; a failure says which projection and which event.
async fn apply(projection: &dyn EventProjection, event: &Event) -> Result<(), HandlerError> {
    let name = projection.name();
    match projection.apply(event).await {
        Ok(Applied::Ignored) => {}
        Ok(Applied::Applied) => tracing::info!(event_id = %event.id, projection = name, "event applied"),
        Ok(Applied::AlreadyApplied) => {
            tracing::info!(event_id = %event.id, projection = name, "event already applied (redelivery)")
        }
        Err(ProjectionError::Poison(why)) => {
            return Err(HandlerError::permanent(format!(
                "{name}: event {} ({}) does not parse: {why}",
                event.id,
                event.kind.as_str()
            )));
        }
        Err(ProjectionError::Port(err)) => {
            return Err(port_failure(PortError {
                message: format!("{name}: event {}: {}", event.id, err.message),
                ..err
            }));
        }
    }
    Ok(())
}

/// A store failure as a handler failure: one waiting can fix is waited for rather than dead-lettering every
/// event of an outage or a failover; anything else is retried a few times.
fn port_failure(err: PortError) -> HandlerError {
    if err.unavailable { HandlerError::unavailable(err) } else { HandlerError::transient(err) }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An event log in memory.
    #[derive(Default)]
    struct MemoryLog(Mutex<Vec<uuid::Uuid>>);

    #[async_trait]
    impl EventLog for MemoryLog {
        async fn record(&self, entry: &LoggedEvent) -> Result<bool, PortError> {
            let mut ids = self.0.lock().expect("lock");
            let new = !ids.contains(&entry.event.id);
            if new {
                ids.push(entry.event.id);
            }
            Ok(new)
        }

        async fn find(&self, _id: uuid::Uuid) -> Result<Option<LoggedEvent>, PortError> {
            Ok(None)
        }
    }

    /// A projection that answers with what its event's `data.outcome` asks for.
    struct Scripted;

    #[async_trait]
    impl EventProjection for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }

        async fn apply(&self, event: &Event) -> Result<Applied, ProjectionError> {
            match event.data["outcome"].as_str() {
                Some("poison") => Err(ProjectionError::Poison("bad shape".into())),
                Some("down") => Err(PortError::unavailable("database unreachable").into()),
                Some("failed") => Err(PortError::failed("deadlock").into()),
                _ => Ok(Applied::Applied),
            }
        }
    }

    fn record(value: &[u8]) -> Record {
        Record {
            topic: "events".into(),
            partition: 0,
            offset: 7,
            timestamp: None,
            key: None,
            value: Some(value.to_vec()),
            headers: Vec::new(),
        }
    }

    fn event_with(outcome: &str) -> (uuid::Uuid, Vec<u8>) {
        let id = uuid::Uuid::now_v7();
        let event = serde_json::json!({"id": id, "type": "t", "key": "k", "data": {"outcome": outcome}});
        (id, event.to_string().into_bytes())
    }

    #[tokio::test]
    async fn every_event_is_logged_then_projected_and_failures_map_to_the_consumer_s_kinds() {
        let log = Arc::new(MemoryLog::default());
        let handler = EventLogHandler::new(log.clone()).with_projection(Arc::new(Scripted));

        let err = handler.handle(&record(b"not json")).await.expect_err("not an event");
        assert!(err.is_permanent(), "{err}");

        let (ok, value) = event_with("ok");
        handler.handle(&record(&value)).await.expect("handled");
        handler.handle(&record(&value)).await.expect("a redelivery is handled too");

        let (poison, value) = event_with("poison");
        let err = handler.handle(&record(&value)).await.expect_err("poison");
        assert!(err.is_permanent(), "{err}");
        assert!(err.to_string().contains("scripted") && err.to_string().contains(&poison.to_string()), "{err}");

        let (_, value) = event_with("down");
        let err = handler.handle(&record(&value)).await.expect_err("database down");
        assert!(err.is_unavailable(), "{err}");

        let (_, value) = event_with("failed");
        let err = handler.handle(&record(&value)).await.expect_err("failed");
        assert!(!err.is_permanent() && !err.is_unavailable(), "transient: {err}");

        let logged = log.0.lock().expect("lock").clone();
        assert_eq!(logged.len(), 4, "every event reached the log, once: {logged:?}");
        assert_eq!(logged[..2], [ok, poison]);
    }
}
