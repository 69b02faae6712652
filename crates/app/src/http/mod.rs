//! The HTTP surface: routes, shared state and error responses.

mod events;
mod health;
pub mod observe;
pub mod problem;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use infra::health::HealthRegistry;
use infra::redis::RateLimiter;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;

use crate::events::{EventLog, EventPublisher};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Health checks of every dependency.
    pub health: Arc<HealthRegistry>,
    /// Renders every metric of the process for `/metrics`.
    pub metrics: PrometheusHandle,
    /// Publishes events.
    pub events: Arc<dyn EventPublisher>,
    /// Recorded events.
    pub event_log: Arc<dyn EventLog>,
    /// Limits publications per client address.
    pub publish_limiter: RateLimiter,
}

/// All routes with their middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/health", get(health::health))
        .route("/health/{component}", get(health::component))
        .route("/metrics", get(metrics))
        .route("/events", post(events::publish))
        .route("/events/{id}", get(events::find))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(CatchPanicLayer::custom(problem::panic_response))
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(state)
}

/// Every metric of the process in the Prometheus text exposition format.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}
