//! Extractors shared by the handlers.

use axum::extract::{FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::problem::Problem;

/// The `{id}` of a route's path (a user's or an event's), which must be a UUID: anything else is answered with
/// the 400 `invalid-id` problem before the handler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        raw.parse::<Uuid>().map(IdPath).map_err(|_| {
            Problem::new(StatusCode::BAD_REQUEST, "invalid-id", "Invalid id")
                .detail("id must be a UUID")
                .into_response()
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    async fn answer(path: &str) -> (StatusCode, String) {
        let router = Router::new().route("/things/{id}", get(|IdPath(id): IdPath| async move { id.to_string() }));
        let request = axum::http::Request::get(path).body(Body::empty()).expect("request");
        let response = router.oneshot(request).await.expect("answered");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 4096).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_uuid_reaches_the_handler_and_anything_else_is_an_invalid_id_problem() {
        let id = Uuid::now_v7();
        assert_eq!(answer(&format!("/things/{id}")).await, (StatusCode::OK, id.to_string()));
        let (status, body) = answer("/things/42").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("\"code\":\"invalid-id\""), "{body}");
    }
}
