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

use super::AppState;
use super::access::Caller;
use super::client_ip::{ClientIp, limit_subject};
use super::extract::IdPath;
use super::problem::Problem;
use super::rate_limit::too_many_requests;
use crate::events::{Event, EventKey, EventType, MAX_DATA_BYTES};

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

/// Publishes the event and answers 202 with its id and place in the stream once Kafka acknowledged it.
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

/// The recorded event, or 404 while it is not (yet) recorded.
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
