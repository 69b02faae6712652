//! Access control: who may call each API route, decided in one place.
//!
//! Every API route is declared with an [`Access`] in `http::api_routes`, and the API router is built from those
//! declarations only, so a route cannot exist without a decision. [`AccessLayer`] runs before the handler: it
//! identifies the caller (the session cookie, or `Authorization: Bearer <session id>` for API clients), checks
//! the route's rule, and hands the handler a [`Caller`].
//!
//! Refusals: no or unknown credentials → 401 `unauthenticated`; a signed-in user asking for another user's
//! account → 404 `user-not-found` (the same answer as for an id that does not exist, so ids of other accounts
//! cannot be probed); a signed-in non-admin on an admin route → 403 `forbidden` (the route exists for
//! everyone, only the role is missing). Resource-level rules that need the resource (an event is readable by
//! its publisher or an admin) are answered by the handler with the same [`crate::users::Actor`] questions.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use futures::future::{BoxFuture, Either};
use tower::{Layer, Service, ServiceExt};

use super::AppState;
use super::extract::invalid_path;
use super::problem::Problem;
use super::problem::user_problem;
use crate::users::{Actor, SessionToken, User, UserError, UserId};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: registration, login, logout, the API's description.
    Public,
    /// Any signed-in user.
    SignedIn,
    /// The user named by the path's `{id}`, or an admin.
    OwnerOrAdmin,
    /// Admins only.
    Admin,
}

/// The signed-in caller of a non-public route, as [`AccessLayer`] identified it.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The signed-in user, as stored now (role included).
    pub user: User,
    /// The session that identified them.
    pub token: SessionToken,
}

impl Caller {
    /// What the caller may do.
    pub fn actor(&self) -> Actor {
        Actor::of(&self.user)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    /// The caller [`AccessLayer`] identified; on a route declared [`Access::Public`] there is none, and asking
    /// for one is answered as "not signed in" rather than trusted. Taken out of the request (a handler takes it
    /// once), so the record is moved, not copied.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        parts.extensions.remove::<Caller>().ok_or_else(|| user_problem(UserError::Unauthenticated).into_response())
    }
}

/// The session a request carries: `Authorization: Bearer <id>` if present, else the session cookie.
pub fn session_token(headers: &HeaderMap, cookie_name: &str) -> Option<SessionToken> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim);
    match bearer {
        Some(token) => Some(SessionToken::new(token.to_string())),
        None => CookieJar::from_headers(headers)
            .get(cookie_name)
            .map(|cookie| SessionToken::new(cookie.value().to_string())),
    }
}

/// A route's [`Access`] rule as a `tower` layer: identifies the caller and checks the rule before the handler
/// runs. Written as a service rather than with `axum::middleware::from_fn` (it wraps every API request): a
/// public route's request goes straight to the handler, and a checked one costs one boxed future instead of
/// `from_fn`'s three boxes and its request taken apart for the extractors.
#[derive(Clone)]
pub struct AccessLayer {
    state: AppState,
    access: Access,
}

impl AccessLayer {
    /// Applies `access`, identifying callers with `state`'s sessions and users.
    pub fn new(state: AppState, access: Access) -> Self {
        AccessLayer { state, access }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized { inner, state: self.state.clone(), access: self.access }
    }
}

/// `inner` behind an [`Access`] rule (see [`AccessLayer`]).
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    state: AppState,
    access: Access,
}

impl<S> Service<Request> for Authorized<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if self.access == Access::Public {
            return Either::Left(self.inner.call(request));
        }
        // The inner service (a route) is always ready: a clone of it serves the request once it is admitted.
        let (inner, state, access) = (self.inner.clone(), self.state.clone(), self.access);
        Either::Right(Box::pin(async move {
            match authorize(&state, access, request).await {
                Ok(admitted) => inner.oneshot(admitted).await,
                Err(refusal) => Ok(refusal),
            }
        }))
    }
}

/// `request` with its [`Caller`] in the extensions when `access` admits it, else the response refusing it.
async fn authorize(state: &AppState, access: Access, request: Request) -> Result<Request, Response> {
    // A segment that does not decode names no resource: a problem like every other refusal, not axum's text.
    let (mut parts, body) = request.into_parts();
    let path = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .map_err(|rejection| invalid_path(&rejection.body_text()))?;
    let caller = identify(state, &parts.headers).await?;
    let actor = caller.actor();
    let allowed = match access {
        Access::Public | Access::SignedIn => true,
        // A path id that is not a UUID is nobody's: the handler answers it with 400 invalid-id.
        Access::OwnerOrAdmin => path_id(&path).is_none_or(|id| actor.manages(id)),
        Access::Admin => actor.is_admin(),
    };
    if !allowed {
        return Err(refusal(access).into_response());
    }
    parts.extensions.insert(caller);
    Ok(Request::from_parts(parts, body))
}

/// The signed-in caller, or the response refusing the request (401, or 503 when sessions cannot be read).
async fn identify(state: &AppState, headers: &HeaderMap) -> Result<Caller, Response> {
    let unauthenticated = || user_problem(UserError::Unauthenticated).into_response();
    let token = session_token(headers, &state.cookie.name).ok_or_else(unauthenticated)?;
    match state.users.authenticate(&token).await {
        Ok(Some(user)) => Ok(Caller { user, token }),
        Ok(None) => Err(unauthenticated()),
        Err(err) => Err(user_problem(err).into_response()),
    }
}

fn path_id(path: &RawPathParams) -> Option<UserId> {
    path.iter().find(|(name, _)| *name == "id").and_then(|(_, value)| value.parse().ok())
}

/// The answer to a signed-in caller the rule does not admit.
fn refusal(access: Access) -> Problem {
    match access {
        Access::Admin => {
            Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail("this route is for administrators")
        }
        _ => user_problem(UserError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_bearer_token_wins_over_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("rust_app_session=from-cookie"));
        assert_eq!(
            session_token(&headers, "rust_app_session").map(|t| t.expose().to_string()),
            Some("from-cookie".into())
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer from-header"));
        assert_eq!(
            session_token(&headers, "rust_app_session").map(|t| t.expose().to_string()),
            Some("from-header".into())
        );
        assert!(session_token(&HeaderMap::new(), "rust_app_session").is_none());
    }

    #[test]
    fn other_schemes_are_not_sessions() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwdw=="));
        assert!(session_token(&headers, "rust_app_session").is_none());
    }
}
