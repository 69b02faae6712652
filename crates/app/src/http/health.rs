//! Health endpoints: `/livez`, `/readyz`, `/health`, `/health/{component}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infra::health::Status;
use serde_json::json;

use super::AppState;
use super::problem::Problem;

/// The process is alive: answers without touching any dependency, so a slow database never gets the
/// process killed by its liveness probe.
pub async fn livez() -> Response {
    Json(json!({ "status": Status::Up })).into_response()
}

/// Ready for traffic: every required dependency (PostgreSQL) is up. Optional ones only degrade the service.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.health.check_required().await;
    (status_code(report.status), Json(report)).into_response()
}

/// Aggregate health of every dependency: 200 when up or degraded, 503 when down.
pub async fn health(State(state): State<AppState>) -> Response {
    let report = state.health.check_all().await;
    (status_code(report.status), Json(report)).into_response()
}

/// Health of one dependency: 200 when up, 503 when down, 404 for an unknown name.
pub async fn component(State(state): State<AppState>, Path(name): Path<String>) -> Response {
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
