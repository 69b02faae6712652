//! Login sessions over a cookie: `POST /sessions` (login), `GET /me`, `DELETE /sessions` (logout).
//!
//! The cookie is `HttpOnly` (no script can read it), `SameSite=Lax` (not sent on cross-site POSTs: CSRF) and
//! `Secure` when SESSION_COOKIE_SECURE is set. Its value is the session id: it never appears in logs or spans
//! (Redis keys are its SHA-256).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::AppState;
use super::access::{Caller, session_token};
use super::body::object;
use super::client_ip::{ClientIp, limit_subject};
use super::openapi::closed_object;
use super::problem::Problem;
use super::problem::user_problem;
use super::rate_limit::{set_headers, too_many_requests};
use super::users::{UserBody, password_schema, sign_in_email_schema};
use crate::users::{Credentials, SessionToken, UserError};
use infra::redis::Decision;

/// How the session cookie is made.
#[derive(Clone, Debug)]
pub struct CookieSettings {
    /// Cookie name.
    pub name: String,
    /// Whether to mark it `Secure`.
    pub secure: bool,
    /// Its lifetime (the session's TTL; each use renews the session, not the cookie).
    pub ttl: Duration,
}

/// The body of `POST /sessions`; read field by field by the handler, so that each problem is reported.
pub struct Login;

impl PartialSchema for Login {
    fn schema() -> RefOr<Schema> {
        closed_object()
            .property("email", sign_in_email_schema())
            .property("password", password_schema())
            .required("email")
            .required("password")
            .into()
    }
}

impl ToSchema for Login {}

/// Signs in: checks email and password, sets the session cookie. Limited per client IP and account
/// (LOGIN_RATE_LIMIT per minute) before the password is even checked.
#[utoipa::path(post, path = "/sessions", tag = "sessions", request_body = Login,
    responses(
        (status = 201, description = "Signed in; the session cookie is set", body = UserBody,
            headers(("set-cookie" = String, description = "The session cookie (HttpOnly, SameSite=Lax)"))),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, description = "Wrong email or password (`invalid-credentials`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, response = super::openapi::BodyTooLarge),
        (status = 415, response = super::openapi::NotJson),
        (status = 422, response = super::openapi::Invalid),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn login(
    State(state): State<AppState>,
    client: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    jar: CookieJar,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let mut fields = match object(body, &["email", "password"]) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let input = Credentials { name: None, email: fields.take("email"), password: fields.take("password") };
    if let Some(problem) = fields.problem() {
        return problem.into_response();
    }
    let client = client.map_or_else(|| "unknown".to_string(), |Extension(ClientIp(ip))| limit_subject(ip));
    let decision = match login_allowance(&state, &client, input.email.as_deref()).await {
        Ok(decision) => decision,
        Err(refusal) => return refusal,
    };
    let previous = session_token(&headers, &state.cookie.name);
    let mut response = match state.users.login(input, previous.as_ref()).await {
        Ok((user, token)) => {
            let jar = jar.add(session_cookie(&state.cookie, &token));
            (StatusCode::CREATED, jar, Json(UserBody::from(user))).into_response()
        }
        Err(err) => user_problem(err).into_response(),
    };
    set_headers(response.headers_mut(), decision);
    response
}

/// The signed-in user.
#[utoipa::path(get, path = "/me", tag = "sessions",
    responses(
        (status = 200, description = "The signed-in user", body = UserBody),
        (status = 401, response = super::openapi::Unauthenticated),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn me(caller: Caller) -> Response {
    Json(UserBody::from(caller.user)).into_response()
}

/// Where `DELETE /sessions` signs out.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogoutQuery {
    /// `true`: end every session of the signed-in user, on every device (needs a valid session).
    all: Option<bool>,
}

/// Signs out: ends the session (or, with `?all=true`, every session of the user) and clears the cookie.
/// 204 signed in or not, except that `?all=true` needs a valid session.
#[utoipa::path(delete, path = "/sessions", tag = "sessions", params(LogoutQuery),
    // A session is optional: without one (or with an expired one) the cookie is cleared all the same.
    security((), ("sessionCookie" = []), ("bearerSession" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, description = "`all=true` without a valid session (`unauthenticated`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    query: Result<Query<LogoutQuery>, QueryRejection>,
    headers: HeaderMap,
    jar: CookieJar,
) -> Response {
    let Ok(Query(query)) = query else {
        return Problem::new(StatusCode::BAD_REQUEST, "invalid-query", "Invalid query string").into_response();
    };
    let token = session_token(&headers, &state.cookie.name);
    let ended = if query.all.unwrap_or(false) {
        logout_everywhere(&state, token.as_ref()).await
    } else {
        state.users.logout(token.as_ref()).await
    };
    match ended {
        Ok(()) => {
            let removal = Cookie::build((state.cookie.name.clone(), "")).path("/").build();
            (StatusCode::NO_CONTENT, jar.remove(removal)).into_response()
        }
        Err(err) => user_problem(err).into_response(),
    }
}

/// Ends every session of the user `token` belongs to.
async fn logout_everywhere(state: &AppState, token: Option<&SessionToken>) -> Result<(), UserError> {
    let token = token.ok_or(UserError::Unauthenticated)?;
    let user = state.users.authenticate(token).await?.ok_or(UserError::Unauthenticated)?;
    state.users.logout_everywhere(user.id).await
}

fn session_cookie(settings: &CookieSettings, token: &SessionToken) -> Cookie<'static> {
    let max_age = time::Duration::try_from(settings.ttl).unwrap_or(time::Duration::DAY);
    Cookie::build((settings.name.clone(), token.expose().to_string()))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(settings.secure)
        .max_age(max_age)
        .build()
}

/// Checks both login limits: per client address and account (`LOGIN_RATE_LIMIT`), and per account across all
/// addresses (`LOGIN_ACCOUNT_RATE_LIMIT`, against credential stuffing from many addresses). Both fail closed:
/// without Redis no login can succeed anyway (sessions live there), so an outage is a 503, never a free pass.
async fn login_allowance(state: &AppState, client: &str, email: Option<&str>) -> Result<Decision, Response> {
    let limits = &state.limits;
    let account = account_digest(email);
    let per_client = limits.login_limiter.check(&format!("login:{client}:{account}"), limits.login).await;
    if let Some(refused) = refusal(per_client) {
        return Err(refused);
    }
    // Checked only once the address is within its own limit: one address hammering an account spends its own
    // budget, not the account's (which would lock the owner out from everywhere).
    let per_account = limits.login_limiter.check(&format!("login-account:{account}"), limits.login_per_account).await;
    if let Some(refused) = refusal(per_account) {
        return Err(refused);
    }
    Ok(if per_account.remaining < per_client.remaining { per_account } else { per_client })
}

/// The refusal for a login limiter's `decision`: 503 when it could not count (fail closed), 429 when limited.
fn refusal(decision: Decision) -> Option<Response> {
    if decision.unavailable {
        return Some(Problem::unavailable("login attempts cannot be counted right now; retry later").into_response());
    }
    (!decision.allowed).then(|| too_many_requests(decision, "too many login attempts for this account; retry later"))
}

/// The account part of the login limiters' keys: the email hashed (lower-cased first, as accounts are
/// case-insensitive) so no address ends up in Redis keys or command spans.
fn account_digest(email: Option<&str>) -> String {
    let account = email.unwrap_or_default().trim().to_lowercase();
    hex::encode(&Sha256::digest(account.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_keys_ignore_case_and_hide_the_address() {
        let key = account_digest(Some(" Ada@Example.com"));
        assert_eq!(key, account_digest(Some("ada@example.com")));
        assert_ne!(key, account_digest(Some("bob@example.com")));
        assert!(!key.contains("ada"));
    }

    #[test]
    fn the_cookie_is_http_only_and_lax() {
        let settings = CookieSettings { name: "s".into(), secure: true, ttl: Duration::from_secs(60) };
        let cookie = session_cookie(&settings, &SessionToken::new("abc".into())).to_string();
        for part in ["s=abc", "HttpOnly", "SameSite=Lax", "Secure", "Path=/", "Max-Age=60"] {
            assert!(cookie.contains(part), "{cookie} lacks {part}");
        }
    }
}
