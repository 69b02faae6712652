//! Login sessions over a cookie: `POST /sessions` (login), `GET /me`, `DELETE /sessions` (logout).
//!
//! The cookie is `HttpOnly` (no script can read it), `SameSite=Lax` (not sent on cross-site POSTs: CSRF) and
//! `Secure` when SESSION_COOKIE_SECURE is set. Its value is the session id: it never appears in logs or spans
//! (Redis keys are its SHA-256).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::body::object;
use super::client_ip::ClientIp;
use super::problem::Problem;
use super::rate_limit::{set_headers, too_many_requests};
use super::users::{UserBody, user_problem};
use crate::users::{Credentials, SessionToken};

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

/// The body of `POST /sessions`.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)] // Documents the request; the handler reads the fields one by one to report each problem.
pub struct Login {
    /// The registered email (any case).
    #[schema(example = "ada@example.com")]
    email: String,
    /// The password.
    #[schema(format = Password, example = "correct horse battery staple")]
    password: String,
}

/// Signs in: checks email and password, sets the session cookie. Limited per client IP and account
/// (LOGIN_RATE_LIMIT per minute) before the password is even checked.
#[utoipa::path(post, path = "/sessions", tag = "sessions", request_body = Login,
    responses(
        (status = 201, description = "Signed in; the session cookie is set", body = UserBody,
            headers(("set-cookie" = String, description = "The session cookie (HttpOnly, SameSite=Lax)"))),
        (status = 401, description = "Wrong email or password", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts for this account from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "PostgreSQL or Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    client: Option<Extension<ClientIp>>,
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
    let client = client.map_or_else(|| "unknown".to_string(), |Extension(ClientIp(ip))| ip.to_string());
    let decision = state.limits.limiter.check(&login_key(&client, input.email.as_deref()), state.limits.login).await;
    if !decision.allowed {
        return too_many_requests(decision, "too many login attempts for this account; retry later");
    }
    let mut response = match state.users.login(input).await {
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
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable (sessions live there)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn me(State(state): State<AppState>, jar: CookieJar) -> Response {
    let token = token(&state, &jar);
    match state.users.me(token.as_ref()).await {
        Ok(user) => Json(UserBody::from(user)).into_response(),
        Err(err) => user_problem(err).into_response(),
    }
}

/// Signs out: ends the session and clears the cookie. Always 204, signed in or not.
#[utoipa::path(delete, path = "/sessions", tag = "sessions",
    responses(
        (status = 204, description = "Signed out"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn logout(State(state): State<AppState>, jar: CookieJar) -> Response {
    let token = token(&state, &jar);
    match state.users.logout(token.as_ref()).await {
        Ok(()) => {
            let removal = Cookie::build((state.cookie.name.clone(), "")).path("/").build();
            (StatusCode::NO_CONTENT, jar.remove(removal)).into_response()
        }
        Err(err) => user_problem(err).into_response(),
    }
}

fn token(state: &AppState, jar: &CookieJar) -> Option<SessionToken> {
    jar.get(&state.cookie.name).map(|cookie| SessionToken::new(cookie.value().to_string()))
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

/// The login limiter's key: client IP and account. The email is hashed (lower-cased first, as accounts are
/// case-insensitive) so no address ends up in Redis keys or command spans.
fn login_key(client: &str, email: Option<&str>) -> String {
    let account = email.unwrap_or_default().trim().to_lowercase();
    format!("login:{client}:{}", hex::encode(&Sha256::digest(account.as_bytes())[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_keys_ignore_case_and_hide_the_address() {
        let key = login_key("10.0.0.1", Some(" Ada@Example.com"));
        assert_eq!(key, login_key("10.0.0.1", Some("ada@example.com")));
        assert_ne!(key, login_key("10.0.0.2", Some("ada@example.com")));
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
