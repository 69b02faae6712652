//! The HTTP surface: routes, shared state and error responses.

mod health;
pub mod problem;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use infra::health::HealthRegistry;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Health checks of every dependency.
    pub health: Arc<HealthRegistry>,
}

/// All routes with their middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/health", get(health::health))
        .route("/health/{component}", get(health::component))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(CatchPanicLayer::custom(problem::panic_response))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
