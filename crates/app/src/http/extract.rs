//! Extractors shared by the handlers.

use axum::extract::{FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::problem::Problem;

/// The length of a UUID in its hyphenated form, the only one the API writes and accepts (as JSON Schema's
/// `format: uuid` does: no braces, no `urn:uuid:`, no hyphen-less form).
const HYPHENATED_UUID_LEN: usize = 36;

/// The `{id}` of a route's path (a user's or an event's), which must be a hyphenated UUID: anything else is
/// answered with the 400 `invalid-id` problem before the handler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let PathText(raw) = PathText::from_request_parts(parts, state).await?;
        let hyphenated = raw.len() == HYPHENATED_UUID_LEN;
        raw.parse::<Uuid>().ok().filter(|_| hyphenated).map(IdPath).ok_or_else(|| {
            Problem::new(StatusCode::BAD_REQUEST, "invalid-id", "Invalid id")
                .detail("id must be a UUID such as 0190f6c4-6b1e-7cc0-9d5e-3a1f2b4c5d6e")
                .into_response()
        })
    }
}

/// The single parameter of a route's path as text; a segment that does not decode (percent-encoded bytes that
/// are not UTF-8) is answered with the 400 `invalid-path` problem, not axum's plain-text rejection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) => Ok(PathText(raw)),
            Err(rejection) => Err(invalid_path(&rejection.body_text())),
        }
    }
}

/// The 400 `invalid-path` problem: a path segment that does not decode.
pub fn invalid_path(detail: &str) -> Response {
    Problem::new(StatusCode::BAD_REQUEST, "invalid-path", "Invalid path").detail(detail).into_response()
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
        for bad in ["42".to_string(), id.simple().to_string(), id.urn().to_string(), format!("%7B{id}%7D")] {
            let (status, body) = answer(&format!("/things/{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(body.contains("\"code\":\"invalid-id\""), "{bad}: {body}");
        }
        let (status, body) = answer("/things/%FF").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("\"code\":\"invalid-path\""), "{body}");
    }
}
