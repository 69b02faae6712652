//! Events: clients publish them over HTTP, the service's consumer records each one exactly once in the event
//! log and hands it to the read models kept from the stream ([`EventProjection`]). The domain knows its ports
//! ([`EventPublisher`], [`EventLog`]), not Kafka or PostgreSQL; the adapters in [`kafka`] and [`postgres`]
//! implement them. [`retention`] keeps the log from growing forever.

pub mod kafka;
pub mod postgres;
pub mod retention;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::port::PortError;

/// The longest event type accepted.
pub const MAX_TYPE_LEN: usize = 64;
/// The longest key accepted (it becomes the Kafka record key).
pub const MAX_KEY_LEN: usize = 128;
/// The characters of an event type, as a JSON Schema `pattern` (lengths: 1 to [`MAX_TYPE_LEN`]).
pub const TYPE_PATTERN: &str = "^[a-z0-9._-]+$";
/// The characters of a key, visible ASCII, as a JSON Schema `pattern` (lengths: 1 to [`MAX_KEY_LEN`]).
pub const KEY_PATTERN: &str = r"^[\x21-\x7e]+$";
/// The largest `data` accepted, serialized: well under Kafka's default 1 MB record limit.
pub const MAX_DATA_BYTES: usize = 64 * 1024;

/// What kind of event: `user.created`. Lower-case letters, digits, `.`, `_`, `-`; 1–64 characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventType(String);

impl TryFrom<String> for EventType {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        let ok = (1..=MAX_TYPE_LEN).contains(&raw.len())
            && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        ok.then_some(EventType(raw))
            .ok_or_else(|| format!("type must be 1 to {MAX_TYPE_LEN} characters of a-z, 0-9, '.', '_' or '-'"))
    }
}

impl From<EventType> for String {
    fn from(kind: EventType) -> String {
        kind.0
    }
}

impl EventType {
    /// The type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the event is about (`user-42`): events with the same key are consumed in order. 1–128 visible
/// characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventKey(String);

impl TryFrom<String> for EventKey {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        let ok = (1..=MAX_KEY_LEN).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic());
        ok.then_some(EventKey(raw)).ok_or_else(|| format!("key must be 1 to {MAX_KEY_LEN} visible ASCII characters"))
    }
}

impl From<EventKey> for String {
    fn from(key: EventKey) -> String {
        key.0
    }
}

impl EventKey {
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An event as published and as carried in the record's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id, assigned at publication; the event log's primary key.
    pub id: uuid::Uuid,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// What it happened to.
    pub key: EventKey,
    /// Details, any JSON.
    pub data: serde_json::Value,
    /// When it happened (events published before this field existed read as "now").
    #[serde(with = "time::serde::rfc3339", default = "time::OffsetDateTime::now_utc")]
    pub occurred_at: time::OffsetDateTime,
    /// The signed-in user who published it over HTTP: only they and admins may read it back. `None` for the
    /// service's own events (the outbox's `user_*`) and events published before access control: admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<uuid::Uuid>,
}

/// Where a published event was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The partition of the event topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// Where a consumed event came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

/// An event as the event log holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoggedEvent {
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// Where it was consumed from.
    pub origin: Origin,
}

/// Publishes events to the event stream.
#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// Publishes `event` and waits until the stream acknowledged it.
    async fn publish(&self, event: &Event) -> Result<Published, PortError>;
}

/// The durable record of consumed events.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Records `entry`; `false` when its id was already recorded (a redelivery).
    async fn record(&self, entry: &LoggedEvent) -> Result<bool, PortError>;
    /// The recorded event with this id.
    async fn find(&self, id: uuid::Uuid) -> Result<Option<LoggedEvent>, PortError>;
}

/// What a projection did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The event is not one this projection follows.
    Ignored,
    /// The event's effect was applied now.
    Applied,
    /// The event's effect had been applied before (a redelivery): nothing changed.
    AlreadyApplied,
}

/// Why a projection could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The event is one this projection follows but it does not parse: no retry can fix it.
    #[error("poison event: {0}")]
    Poison(String),
    /// The store behind the projection failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// A read model kept up to date from the event stream (a user's audit trail, say). The consumer hands every
/// event to each projection after logging it, so one consumer maintains the event log and every read model,
/// and a domain adds its own without knowing Kafka. Projections must be idempotent: events are delivered at
/// least once.
#[async_trait]
pub trait EventProjection: Send + Sync {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;
    /// Applies `event` if it concerns this projection, at most once per event id.
    async fn apply(&self, event: &Event) -> Result<Applied, ProjectionError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_keys_parse_or_say_why_not() {
        assert!(EventType::try_from("user.created".to_string()).is_ok());
        assert!(EventType::try_from("User Created".to_string()).is_err());
        assert!(EventType::try_from(String::new()).is_err());
        assert!(EventKey::try_from("user-42".to_string()).is_ok());
        assert!(EventKey::try_from("has space".to_string()).is_err());
        assert!(EventKey::try_from("k".repeat(129)).is_err());
    }

    #[test]
    fn an_event_round_trips_through_json_with_its_type_field() {
        let event = Event {
            id: uuid::Uuid::new_v4(),
            kind: EventType::try_from("user.created".to_string()).expect("type"),
            key: EventKey::try_from("user-1".to_string()).expect("key"),
            data: serde_json::json!({"name": "Ada"}),
            occurred_at: time::OffsetDateTime::now_utc(),
            publisher: Some(uuid::Uuid::now_v7()),
        };
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["type"], "user.created");
        assert_eq!(serde_json::from_value::<Event>(json).expect("parses"), event);
    }
}
