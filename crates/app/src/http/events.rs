//! `POST /events` publishes an event; `GET /events/{id}` shows it once the consumer recorded it.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infra::redis::Limit;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::access::Caller;
use super::client_ip::{ClientIp, limit_subject};
use super::extract::IdPath;
use super::openapi::{closed_object, matching};
use super::problem::Problem;
use super::rate_limit::too_many_requests;
use crate::events::{Event, EventKey, EventType, KEY_PATTERN, MAX_DATA_BYTES, MAX_KEY_LEN, MAX_TYPE_LEN};

/// Publications admitted per client address: 50 per second on average, bursts of 100.
pub const PUBLISH_LIMIT: Limit = Limit { rate: 50, period: Duration::from_secs(1), burst: 100 };

/// The body of `POST /events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    #[serde(rename = "type")]
    kind: EventType,
    key: EventKey,
    #[serde(default)]
    data: serde_json::Value,
}

/// An event type a client may publish: [`crate::events::TYPE_PATTERN`] without the reserved prefix `user_`
/// (JSON Schema has no "does not start with" short of look-ahead, which not every validator reads).
pub const PUBLISHABLE_TYPE_PATTERN: &str = "^(?:u|us|use|user|(?:[a-tv-z0-9._-]|u[a-rt-z0-9._-]|us[a-df-z0-9._-]|use[a-qs-z0-9._-]|user[a-z0-9.-])[a-z0-9._-]*)$";

/// The body of `POST /events`, as the handler reads it.
pub struct PublishEvent;

impl PartialSchema for PublishEvent {
    fn schema() -> RefOr<Schema> {
        let kind_means = "What happened: a-z, 0-9, `.`, `_`, `-`; types starting with `user_` are the service's own";
        let kind = matching(1, MAX_TYPE_LEN, PUBLISHABLE_TYPE_PATTERN, kind_means, "order.shipped");
        let key_means = "What it happened to, visible ASCII: events with the same key keep their order";
        let key = matching(1, MAX_KEY_LEN, KEY_PATTERN, key_means, "order-42");
        let data = utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .description(Some(format!("Details: any JSON, at most {MAX_DATA_BYTES} bytes serialized (413 beyond)")));
        closed_object()
            .property("type", kind)
            .property("key", key)
            .property("data", data)
            .required("type")
            .required("key")
            .into()
    }
}

impl ToSchema for PublishEvent {}

/// Where a published event was stored.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the response, which the handler writes with `json!`.
pub struct PublishedEvent {
    /// The event's id: `GET /events/{id}` once recorded.
    id: Uuid,
    /// The partition of the event topic.
    partition: i32,
    /// Its offset there.
    offset: i64,
}

/// A recorded event.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)] // Documents `events::LoggedEvent` as it serializes.
pub struct RecordedEvent {
    /// Its id.
    id: Uuid,
    /// What happened.
    #[serde(rename = "type")]
    kind: String,
    /// What it happened to.
    key: String,
    /// Details, as published.
    data: serde_json::Value,
    /// When it was published (RFC 3339).
    occurred_at: OffsetDateTime,
    /// Who published it; absent for the service's own events.
    #[serde(skip_serializing_if = "Option::is_none")]
    publisher: Option<Uuid>,
    /// Where the consumer read it.
    origin: EventOrigin,
}

/// Where a recorded event was consumed from.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)] // Documents `events::Origin`.
pub struct EventOrigin {
    /// The topic.
    topic: String,
    /// The partition.
    partition: i32,
    /// The offset.
    offset: i64,
}

/// Publishes the event and answers 202 with its id and place in the stream once Kafka acknowledged it.
/// Limited to 50 per second per client address (bursts of 100).
#[utoipa::path(post, path = "/events", tag = "events", request_body = PublishEvent,
    responses(
        (status = 202, description = "Kafka acknowledged the event", body = PublishedEvent),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthenticated),
        (status = 413, description = "The body is over `HTTP_BODY_LIMIT` (`body-too-large`) or `data` over 64 KiB (`event-too-large`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, response = super::openapi::NotJson),
        (status = 422, description = "A missing or refused field (`invalid-body`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    client: Option<Extension<ClientIp>>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    // The client as the per-IP middleware attributed it (behind a trusted proxy: the forwarded address).
    let client = client.map_or_else(|| "unknown".to_string(), |Extension(ClientIp(ip))| limit_subject(ip));
    let decision = state.publish_limiter.check(&client, PUBLISH_LIMIT).await;
    if !decision.allowed {
        return too_many_requests(
            decision,
            &format!("at most {} events may be published at once; retry later", decision.limit),
        );
    }
    let new = match body.map(|Json(body)| parse_event(body)) {
        Ok(Ok(new)) => new,
        Ok(Err(detail)) => {
            return Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", "Invalid request body")
                .detail(detail)
                .into_response();
        }
        Err(rejection) => return Problem::from_rejection(&rejection).into_response(),
    };
    if new.data.to_string().len() > MAX_DATA_BYTES {
        return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "event-too-large", "Event too large")
            .detail(format!("data must serialize to at most {MAX_DATA_BYTES} bytes"))
            .into_response();
    }
    let event = Event {
        id: uuid::Uuid::new_v4(),
        kind: new.kind,
        key: new.key,
        data: new.data,
        occurred_at: time::OffsetDateTime::now_utc(),
        publisher: Some(caller.user.id),
    };
    match state.events.publish(&event).await {
        Ok(published) => {
            let body = json!({ "id": event.id, "partition": published.partition, "offset": published.offset });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(err) => {
            tracing::warn!(error = %err, "event not published");
            Problem::unavailable(
                "the event stream did not acknowledge the event in time; it may or may not have been stored, retry later",
            )
            .into_response()
        }
    }
}

/// The recorded event, or 404 while it is not (yet) recorded. Readable by its publisher and admins.
#[utoipa::path(get, path = "/events/{id}", tag = "events", params(("id" = Uuid, Path, description = "Event id")),
    responses(
        (status = 200, description = "The recorded event", body = RecordedEvent),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthenticated),
        (status = 404, description = "Not recorded (yet), or someone else's (`event-not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn find(State(state): State<AppState>, caller: Caller, IdPath(id): IdPath) -> Response {
    let actor = caller.actor();
    match state.event_log.find(id).await {
        // Someone else's event is answered like a missing one: ids of other users' events cannot be probed.
        Ok(Some(logged)) if actor.is_admin() || logged.event.publisher == Some(actor.id) => {
            Json(logged).into_response()
        }
        Ok(_) => Problem::new(StatusCode::NOT_FOUND, "event-not-found", "Event not found")
            .detail("no event with this id has been recorded (yet)")
            .into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "event log unavailable");
            Problem::unavailable("the event log is unavailable; retry later").into_response()
        }
    }
}

/// The event in `body`, which must be a JSON object (serde would also fill a struct from an array); else why
/// not.
fn parse_event(body: serde_json::Value) -> Result<NewEvent, String> {
    if !body.is_object() {
        return Err("the body must be a JSON object with type, key and data".to_string());
    }
    let event: NewEvent = serde_json::from_value(body).map_err(|err| err.to_string())?;
    if event.kind.as_str().starts_with(RESERVED_PREFIX) {
        // The consumer turns user_* events into users' audit trails: only the service's outbox may emit them.
        return Err(format!("types starting with {RESERVED_PREFIX:?} are reserved for the service's own events"));
    }
    Ok(event)
}

/// Event types only the service itself publishes (through its outbox).
const RESERVED_PREFIX: &str = "user_";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_type_pattern_admits_exactly_what_publish_accepts() {
        let pattern = regex::Regex::new(PUBLISHABLE_TYPE_PATTERN).expect("pattern");
        let types = [
            "u",
            "us",
            "use",
            "user",
            "user.created",
            "user-x",
            "users",
            "user_",
            "user_created",
            "usr_x",
            "a",
            "x.y_z-1",
            "User",
            "a b",
            "ü",
            "",
            "_user_",
            ".",
            "uses_",
            "use_r",
        ];
        for kind in types {
            let accepted = parse_event(json!({"type": kind, "key": "k"})).is_ok();
            assert_eq!(pattern.is_match(kind), accepted, "{kind:?}");
        }
    }
}
