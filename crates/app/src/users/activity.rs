//! Each user's audit trail (`user_activity`), kept by the service's event consumer from the user events: what
//! happened to a user and when, applied exactly once per event however often Kafka delivers it.
//!
//! The parsing of an [`Event`] into a trail entry is the domain's ([`UserActivityEvent::from_event`]); storing
//! it exactly once is the [`ActivityRecorder`] port's, implemented in [`postgres`]. [`UserActivity`] joins the
//! two as an [`EventProjection`] the consumer runs after logging each event.

pub mod postgres;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::UserId;
use crate::events::{Applied, Event, EventProjection, ProjectionError};
use crate::port::PortError;

/// The name the trail is kept under, in logs and in `processed_events.consumer`. Never change it: it keys
/// the record of applied events, so a new name would apply every retained event a second time.
pub const CONSUMER: &str = "user-activity";

/// Event types starting with this belong to the users domain: an event of that namespace that does not parse
/// is a poison event, not someone else's.
const USER_EVENT_PREFIX: &str = "user_";

/// The longest field name accepted in an update's `changed` list.
const MAX_FIELD_NAME_LEN: usize = 64;

/// What happened to the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivityKind {
    /// `user_created`: the user registered.
    Created,
    /// `user_updated`: the user changed some fields.
    Updated,
    /// `user_deleted`: the user was deleted.
    Deleted,
}

impl ActivityKind {
    /// The event type, as stored in `user_activity.event_type` and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Created => "user_created",
            ActivityKind::Updated => "user_updated",
            ActivityKind::Deleted => "user_deleted",
        }
    }

    fn parse(kind: &str) -> Option<Self> {
        [ActivityKind::Created, ActivityKind::Updated, ActivityKind::Deleted].into_iter().find(|k| k.as_str() == kind)
    }
}

/// One entry of a user's audit trail, parsed from a user event: what the [`ActivityRecorder`] stores.
#[derive(Clone, Debug, PartialEq)]
pub struct UserActivityEvent {
    /// The event's id: the entry's identity, so a redelivered event is recognised.
    pub event_id: Uuid,
    /// The user it is about (the event's key).
    pub user_id: UserId,
    /// What happened.
    pub kind: ActivityKind,
    /// When it happened.
    pub occurred_at: OffsetDateTime,
    /// What to remember about it: `{"changed": [field names]}` for an update, `{}` otherwise. Never a name, an
    /// email, a password or its hash.
    pub details: serde_json::Value,
}

/// Why a user event cannot become a trail entry; the message names the offending part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidUserEvent(String);

/// The part of an update's data the trail keeps.
#[derive(Deserialize)]
struct UpdateData {
    changed: Vec<String>,
}

impl UserActivityEvent {
    /// The trail entry of `event`: `Ok(None)` when it is not a user event (its type does not start with
    /// `user_`), an error when it is one that does not parse — its type is not `user_created`, `user_updated`
    /// or `user_deleted`, its key is not a user id (a UUID), its data is not an object, names another user, or
    /// lacks what the type promises.
    ///
    /// Events written before events lost their personal fields (a `user_created` or `user_updated` with a
    /// `data.user` object) still parse: what they carry besides ids and field names is dropped, not stored.
    pub fn from_event(event: &Event) -> Result<Option<Self>, InvalidUserEvent> {
        let type_name = event.kind.as_str();
        if !type_name.starts_with(USER_EVENT_PREFIX) {
            return Ok(None);
        }
        let kind = ActivityKind::parse(type_name)
            .ok_or_else(|| InvalidUserEvent(format!("unknown user event type {type_name:?}")))?;
        let key = event.key.as_str();
        let user_id =
            Uuid::parse_str(key).map_err(|_| InvalidUserEvent(format!("key {key:?} is not a user id (a UUID)")))?;
        check_user_id(user_id, &event.data)?;
        let details = match kind {
            ActivityKind::Updated => updated_details(&event.data)?,
            ActivityKind::Created | ActivityKind::Deleted => serde_json::json!({}),
        };
        Ok(Some(UserActivityEvent { event_id: event.id, user_id, kind, occurred_at: event.occurred_at, details }))
    }
}

/// The data must be an object whose `user_id` (events since ids-only), or `user.id` (older events), when
/// present, is the event's key: an event naming two users is not one to guess about.
fn check_user_id(user_id: UserId, data: &serde_json::Value) -> Result<(), InvalidUserEvent> {
    let data = data.as_object().ok_or_else(|| InvalidUserEvent("data must be an object".to_string()))?;
    let named = [("data.user_id", data.get("user_id")), ("data.user.id", data.get("user").and_then(|u| u.get("id")))];
    for (field, value) in named {
        let Some(value) = value else { continue };
        let named = value.as_str().and_then(|raw| Uuid::parse_str(raw).ok());
        if named != Some(user_id) {
            return Err(InvalidUserEvent(format!("{field} {value} is not the key {user_id}")));
        }
    }
    Ok(())
}

/// An update's details: the names of the changed fields (never their values).
fn updated_details(data: &serde_json::Value) -> Result<serde_json::Value, InvalidUserEvent> {
    let UpdateData { changed } = serde_json::from_value(data.clone())
        .map_err(|err| InvalidUserEvent(format!("data.changed must be a list of field names: {err}")))?;
    let is_field_name = |name: &String| {
        (1..=MAX_FIELD_NAME_LEN).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if let Some(bad) = changed.iter().find(|name| !is_field_name(name)) {
        return Err(InvalidUserEvent(format!("data.changed: {bad:?} is not a field name")));
    }
    Ok(serde_json::json!({ "changed": changed }))
}

/// `event` as a projection of user events sees it: `None` for another domain's event, poison for a user event
/// that does not parse ([`UserActivityEvent::from_event`]).
pub(crate) fn user_event(event: &Event) -> Result<Option<UserActivityEvent>, ProjectionError> {
    UserActivityEvent::from_event(event).map_err(|err| ProjectionError::Poison(err.to_string()))
}

/// Where the audit trail lives. The port promises "exactly once": the entry and the record that its event
/// was applied are stored together, so a redelivered event changes nothing.
#[async_trait]
pub trait ActivityRecorder: Send + Sync {
    /// Appends `entry` to its user's trail; `false` when its event had been applied before (nothing changed).
    async fn apply(&self, entry: &UserActivityEvent) -> Result<bool, PortError>;
}

/// The audit trail as a projection of the event stream: user events become trail entries, other events are
/// ignored, user events that do not parse are poison.
pub struct UserActivity {
    recorder: Arc<dyn ActivityRecorder>,
}

impl UserActivity {
    /// Stores entries through `recorder`.
    pub fn new(recorder: Arc<dyn ActivityRecorder>) -> Self {
        UserActivity { recorder }
    }
}

#[async_trait]
impl EventProjection for UserActivity {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    async fn apply(&self, event: &Event) -> Result<Applied, ProjectionError> {
        let Some(entry) = user_event(event)? else {
            return Ok(Applied::Ignored);
        };
        let new = self.recorder.apply(&entry).await?;
        Ok(if new { Applied::Applied } else { Applied::AlreadyApplied })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use serde_json::{Value, json};

    use super::*;
    use crate::events::{EventKey, EventType};

    fn event(kind: &str, key: &str, data: Value) -> Event {
        Event {
            id: Uuid::now_v7(),
            kind: EventType::try_from(kind.to_string()).expect("type"),
            key: EventKey::try_from(key.to_string()).expect("key"),
            data,
            occurred_at: OffsetDateTime::now_utc(),
            publisher: None,
        }
    }

    fn user_json(id: Uuid) -> Value {
        json!({"id": id, "name": "Ada", "email": "ada@example.com",
               "created_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T10:00:00Z"})
    }

    #[test]
    fn user_events_parse_into_trail_entries_of_ids_and_field_names() {
        let id = Uuid::now_v7();
        let created = event("user_created", &id.to_string(), json!({"user_id": id}));
        let entry = UserActivityEvent::from_event(&created).expect("parses").expect("a user event");
        assert_eq!((entry.event_id, entry.user_id, entry.kind), (created.id, id, ActivityKind::Created));
        assert_eq!(entry.occurred_at, created.occurred_at);
        assert_eq!(entry.details, json!({}));

        let updated = event("user_updated", &id.to_string(), json!({"user_id": id, "changed": ["name"]}));
        let entry = UserActivityEvent::from_event(&updated).expect("parses").expect("a user event");
        assert_eq!((entry.kind, entry.details), (ActivityKind::Updated, json!({"changed": ["name"]})));

        let deleted = event("user_deleted", &id.to_string(), json!({"user_id": id}));
        let entry = UserActivityEvent::from_event(&deleted).expect("parses").expect("a user event");
        assert_eq!((entry.kind, entry.details), (ActivityKind::Deleted, json!({})));

        let other = event("user.created", "user-1", json!({"name": "Ada"}));
        assert_eq!(UserActivityEvent::from_event(&other), Ok(None), "not the users domain's event");
    }

    #[test]
    fn events_of_the_old_format_parse_and_their_personal_fields_are_dropped() {
        let id = Uuid::now_v7();
        let mut user = user_json(id);
        user["password_hash"] = json!("$argon2id$secret");
        let created = event("user_created", &id.to_string(), json!({"user": user}));
        let entry = UserActivityEvent::from_event(&created).expect("parses").expect("a user event");
        assert_eq!((entry.kind, entry.details), (ActivityKind::Created, json!({})), "nothing of data.user is kept");

        let updated = event("user_updated", &id.to_string(), json!({"user": user_json(id), "changed": ["email"]}));
        let entry = UserActivityEvent::from_event(&updated).expect("parses").expect("a user event");
        assert_eq!(entry.details, json!({"changed": ["email"]}), "the field names only");

        let deleted = event("user_deleted", &id.to_string(), json!({}));
        let entry = UserActivityEvent::from_event(&deleted).expect("parses").expect("a user event");
        assert_eq!(entry.details, json!({}));
    }

    #[test]
    fn malformed_user_events_are_refused_with_the_reason() {
        let id = Uuid::now_v7();
        let key = id.to_string();
        let other = Uuid::now_v7();
        let cases = [
            ("unknown type", event("user_renamed", &key, json!({})), "unknown user event type"),
            ("key not a UUID", event("user_deleted", "user-42", json!({})), "not a user id"),
            ("data not an object", event("user_created", &key, json!(["Ada"])), "data must be an object"),
            ("other user's id", event("user_created", &key, json!({"user_id": other})), "is not the key"),
            ("user_id not a UUID", event("user_deleted", &key, json!({"user_id": 7})), "is not the key"),
            ("old format, other user", event("user_created", &key, json!({"user": user_json(other)})), "data.user.id"),
            ("updated without changed", event("user_updated", &key, json!({"user_id": id})), "data.changed"),
            ("changed not strings", event("user_updated", &key, json!({"changed": [1]})), "data.changed"),
            ("changed not a name", event("user_updated", &key, json!({"changed": ["a b"]})), "not a field name"),
        ];
        for (case, event, reason) in cases {
            let err = UserActivityEvent::from_event(&event).expect_err(case);
            assert!(err.to_string().contains(reason), "{case}: {err}");
        }
    }

    /// Remembers applied event ids, like the real recorder's `processed_events`.
    #[derive(Default)]
    struct FakeRecorder(Mutex<HashSet<Uuid>>);

    #[async_trait]
    impl ActivityRecorder for FakeRecorder {
        async fn apply(&self, entry: &UserActivityEvent) -> Result<bool, PortError> {
            Ok(self.0.lock().expect("lock").insert(entry.event_id))
        }
    }

    #[tokio::test]
    async fn the_projection_applies_user_events_once_ignores_others_and_flags_poison() {
        let projection = UserActivity::new(Arc::new(FakeRecorder::default()));
        let id = Uuid::now_v7();
        let deleted = event("user_deleted", &id.to_string(), json!({}));
        assert_eq!(projection.apply(&deleted).await.expect("applies"), Applied::Applied);
        assert_eq!(projection.apply(&deleted).await.expect("applies"), Applied::AlreadyApplied);
        let other = event("order.placed", "order-1", json!({}));
        assert_eq!(projection.apply(&other).await.expect("ignores"), Applied::Ignored);
        let poison = event("user_deleted", "not-a-uuid", json!({}));
        assert!(matches!(projection.apply(&poison).await, Err(ProjectionError::Poison(_))));
    }
}
