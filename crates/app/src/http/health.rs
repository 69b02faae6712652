//! Health endpoints: `/livez`, `/readyz`, `/health`, `/health/{component}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infra::health::Status;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::AppState;
use super::extract::PathText;
use super::problem::Problem;

/// A health status, as `infra::health::Status` serializes.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Documents the responses.
pub enum HealthStatus {
    /// Working.
    Up,
    /// Working without an optional dependency (the aggregate only).
    Degraded,
    /// Not working.
    Down,
}

/// `/livez`'s answer.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // Documents the response.
pub struct Liveness {
    /// Always `up`.
    status: HealthStatus,
}

/// One component's health, as `infra::health::ComponentHealth` serializes.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // Documents the responses.
pub struct ComponentReport {
    /// `up` or `down`.
    status: HealthStatus,
    /// How long the check took, in milliseconds.
    latency_ms: f64,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// What the check reported (pool sizes, partitions, lag...).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Map<String, serde_json::Value>>,
    /// The component's name (`/health/{component}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<String>,
}

/// The aggregate health, as `infra::health::HealthReport` serializes.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // Documents the responses.
pub struct HealthReport {
    /// Up when every component is up; degraded when only optional ones are down; down otherwise.
    status: HealthStatus,
    /// Each component's result, by name.
    components: std::collections::BTreeMap<String, ComponentReport>,
}

/// The process is alive: answers without touching any dependency, so a slow database never gets the
/// process killed by its liveness probe.
#[utoipa::path(get, path = "/livez", tag = "operations", security(()),
    responses(
        (status = 200, description = "Alive", body = Liveness),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn livez() -> Response {
    Json(json!({ "status": Status::Up })).into_response()
}

/// Ready for traffic: every required dependency (PostgreSQL) is up. Optional ones only degrade the service.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready: the required dependencies are up", body = HealthReport),
        (status = 503, description = "Not ready (the report), or the check took longer than `HTTP_REQUEST_TIMEOUT` (a problem)",
            content((HealthReport = "application/json"), (Problem = "application/problem+json"))),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.health.check_required().await;
    (status_code(report.status), Json(report)).into_response()
}

/// Aggregate health of every dependency: 200 when up or degraded, 503 when down.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses(
        (status = 200, description = "Up or degraded", body = HealthReport),
        (status = 503, description = "Down (the report), or the checks took longer than `HTTP_REQUEST_TIMEOUT` (a problem)",
            content((HealthReport = "application/json"), (Problem = "application/problem+json"))),
    ))]
pub async fn health(State(state): State<AppState>) -> Response {
    let report = state.health.check_all().await;
    (status_code(report.status), Json(report)).into_response()
}

/// Health of one dependency: 200 when up, 503 when down, 404 for an unknown name.
#[utoipa::path(get, path = "/health/{component}", tag = "operations", security(()),
    params(("component" = String, Path, description = "A component: `postgres`, `redis`, `kafka`...", example = "postgres")),
    responses(
        (status = 200, description = "Up", body = ComponentReport),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, description = "No component of this name (`unknown-component`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Down (the report), or the check took longer than `HTTP_REQUEST_TIMEOUT` (a problem)",
            content((ComponentReport = "application/json"), (Problem = "application/problem+json"))),
    ))]
pub async fn component(State(state): State<AppState>, PathText(name): PathText) -> Response {
    match state.health.check_one(&name).await {
        Some(result) => {
            let mut body = serde_json::to_value(&result).unwrap_or_default();
            if let Some(object) = body.as_object_mut() {
                object.insert("component".into(), json!(name));
            }
            (status_code(result.status), Json(body)).into_response()
        }
        None => {
            let known: Vec<&str> = state.health.names().collect();
            Problem::new(StatusCode::NOT_FOUND, "unknown-component", "Unknown component")
                .detail(format!("no health check named {name:?}; known: {}", known.join(", ")))
                .into_response()
        }
    }
}

fn status_code(status: Status) -> StatusCode {
    match status {
        Status::Up | Status::Degraded => StatusCode::OK,
        Status::Down => StatusCode::SERVICE_UNAVAILABLE,
    }
}
