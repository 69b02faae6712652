//! The OpenAPI 3.1 document, generated from the handlers' annotations (utoipa) and served at `/openapi.json`,
//! so it cannot drift from the routes.

use axum::Json;
use utoipa::OpenApi;

use super::problem::{FieldProblem, Problem};
use super::{sessions, users};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "rust-app", description = "Users, sessions and their audit trail over PostgreSQL, Redis and Kafka. \
        Every error is an RFC 9457 problem (application/problem+json) with a stable `code`."),
    paths(
        users::create, users::list, users::get, users::update, users::delete, users::activity,
        sessions::login, sessions::me, sessions::logout,
    ),
    components(schemas(Problem, FieldProblem)),
    tags((name = "users", description = "Registration and profiles"), (name = "sessions", description = "Login with a session cookie")),
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
