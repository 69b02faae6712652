//! RFC 9457 problem details (`application/problem+json`): every error the API returns has this shape, with a
//! stable machine-readable `code`.

use std::any::Any;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::users::UserError;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error response body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"type": "urn:rust-app:problem:user-not-found", "title": "User not found", "status": 404, "code": "user-not-found"}))]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, human-readable summary of the type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation of this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable error code clients can branch on.
    pub code: String,
    /// For `validation-failed`: every refused field and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// Sent as the `Retry-After` header (seconds) on 503s.
    #[serde(skip)]
    #[schema(ignore)]
    pub retry_after: Option<u64>,
}

/// One refused field of a request.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    /// The field's name in the request (`email`), or `body` for the request as a whole.
    pub field: String,
    /// Why it was refused.
    pub message: String,
}

impl Problem {
    /// A problem of the given status, code and title.
    pub fn new(status: StatusCode, code: &str, title: &str) -> Self {
        Problem {
            kind: format!("urn:rust-app:problem:{code}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: None,
            code: code.to_string(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// The 503 of a required dependency that is down, with `Retry-After`.
    pub fn unavailable(detail: &str) -> Self {
        let mut problem =
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable", "Service unavailable")
                .detail(detail);
        problem.retry_after = Some(1);
        problem
    }

    /// The 422 listing every refused field.
    pub fn invalid(errors: Vec<FieldProblem>) -> Self {
        let mut problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation-failed", "Validation failed")
            .detail("one or more fields are invalid; see errors");
        problem.errors = errors;
        problem
    }

    /// A JSON body that could not be read: 415 without a JSON content type, 413 over the body limit, 400 for
    /// malformed JSON, 422 for JSON of the wrong shape.
    pub fn from_rejection(rejection: &JsonRejection) -> Self {
        let status = match rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::JsonDataError(_) => StatusCode::UNPROCESSABLE_ENTITY,
            other if other.status().is_client_error() => other.status(),
            _ => StatusCode::BAD_REQUEST,
        };
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body-too-large" } else { "invalid-body" };
        Problem::new(status, code, "Invalid request body").detail(rejection.body_text())
    }

    /// Adds the explanation of this occurrence.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Fallback for unknown routes.
pub async fn not_found(uri: Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(format!("no route for {}", uri.path()))
}

/// Fallback for a known route called with the wrong method.
pub async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed")
}

/// Answers a panicking handler with a 500 problem; the panic message stays in the logs, not the response.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = message, "handler panicked");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error").into_response()
}

/// The problem for a domain error: its stable code, the right status, and never internals.
pub fn user_problem(err: UserError) -> Problem {
    let code = err.code();
    match err {
        UserError::Invalid(errors) => {
            Problem::invalid(errors.into_iter().map(|e| FieldProblem { field: e.field, message: e.message }).collect())
        }
        UserError::NotFound => Problem::new(StatusCode::NOT_FOUND, code, "User not found"),
        UserError::EmailTaken => Problem::new(StatusCode::CONFLICT, code, "Email already registered")
            .detail("another user has this email address"),
        UserError::WrongCurrentPassword => Problem::new(StatusCode::FORBIDDEN, code, "Wrong current password")
            .detail("changing the email or password needs the current password of the signed-in user"),
        UserError::InvalidCredentials => {
            Problem::new(StatusCode::UNAUTHORIZED, code, "Invalid credentials").detail("wrong email or password")
        }
        UserError::Unauthenticated => {
            Problem::new(StatusCode::UNAUTHORIZED, code, "Not signed in").detail("sign in with POST /sessions first")
        }
        UserError::Overloaded { retry_after_secs } => {
            let mut problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, "Too busy")
                .detail("too many password checks are in progress; retry shortly");
            problem.retry_after = Some(retry_after_secs);
            problem
        }
        UserError::Unavailable(cause) => {
            tracing::warn!(error = %cause, "request failed: dependency unavailable");
            Problem::unavailable("a required dependency is unavailable; retry later")
        }
        UserError::Internal(cause) => {
            tracing::error!(error = %cause, "request failed");
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_gets_a_500_problem_and_the_router_keeps_serving() {
        use tower::ServiceExt;
        async fn boom() -> &'static str {
            panic!("handler bug with a secret inside")
        }
        let router = axum::Router::new()
            .route("/boom", axum::routing::get(boom))
            .route("/fine", axum::routing::get(|| async { "fine" }))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response));
        let request = |path: &str| axum::http::Request::get(path).body(axum::body::Body::empty()).expect("request");
        let response = router.clone().oneshot(request("/boom")).await.expect("answered");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.expect("body");
        assert!(!String::from_utf8_lossy(&body).contains("secret"), "the panic message stays in the logs");
        let response = router.oneshot(request("/fine")).await.expect("answered");
        assert_eq!(response.status(), StatusCode::OK);
    }
}
