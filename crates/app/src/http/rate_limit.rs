//! Per-client rate limiting through the Redis limiter (GCRA, shared by every instance), with the IETF
//! `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` headers on every limited route's answer and
//! `Retry-After` on a 429. The per-IP limit leases a few tokens at a time and spends them in process
//! ([`infra::redis::LeasedRateLimiter`]): one Redis round trip per lease, not per request. Its
//! `RateLimit-Remaining` is then approximate: Redis' remaining when the lease was taken plus the tokens this
//! instance still holds.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use infra::redis::{Decision, LeasedRateLimiter, Limit, RateLimiter};

use super::AppState;
use super::client_ip::{ClientIp, LimitSubject, client_ip};
use super::problem::Problem;

/// The per-IP limit of every API route.
pub fn per_ip_limit(rate_per_second: u32, burst: u32) -> Limit {
    Limit { rate: rate_per_second, period: Duration::from_secs(1), burst }
}

/// The per-IP limiter: `limit` for each [`LimitSubject`], leased from `limiter`'s keys `{prefix}:ip:{subject}`.
pub fn per_ip_limiter(limiter: RateLimiter, limit: Limit) -> LeasedRateLimiter<LimitSubject> {
    LeasedRateLimiter::new(limiter, "ip", limit)
}

/// A login limit: `attempts_per_minute`, all of them usable at once.
pub fn login_limit(attempts_per_minute: u32) -> Limit {
    Limit { rate: attempts_per_minute, period: Duration::from_secs(60), burst: attempts_per_minute }
}

/// Attributes the request to its client ([`ClientIp`] in the extensions, for handlers), applies the per-IP
/// limit, then bounds the admitted request by HTTP_REQUEST_TIMEOUT ([`super::time_limited`]). Layered onto the
/// API routes only (see `http::router`): the operational ones are never limited (and have their own time
/// limit).
pub async fn limit_per_ip_and_time(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let timeout = state.requests.timeout;
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let Some(peer) = peer else {
        // Only in-process tests without connection info get here: nothing to attribute the request to.
        return super::time_limited(timeout, next.run(request)).await;
    };
    let client = client_ip(peer, request.headers(), &state.limits.trusted_proxies);
    request.extensions_mut().insert(ClientIp(client));
    let decision = state.limits.per_ip.check(&LimitSubject::of(client)).await;
    if !decision.allowed {
        return too_many_requests(decision, "too many requests from this address; retry later");
    }
    let mut response = super::time_limited(timeout, next.run(request)).await;
    // A route with its own, stricter limit has already set the headers of that limit.
    if !response.headers().contains_key(&LIMIT) {
        set_headers(response.headers_mut(), decision);
    }
    response
}

static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Writes the RateLimit-* headers of `decision`.
pub fn set_headers(headers: &mut HeaderMap, decision: Decision) {
    headers.insert(LIMIT.clone(), HeaderValue::from(decision.limit));
    headers.insert(REMAINING.clone(), HeaderValue::from(decision.remaining));
    // Whole seconds, rounded up: "0" would tell a client to retry while it is still limited.
    let reset = decision.reset.as_secs() + u64::from(decision.reset.subsec_nanos() > 0);
    headers.insert(RESET.clone(), HeaderValue::from(reset));
}

/// The 429 problem for a refused `decision`, with its headers and `Retry-After`.
pub fn too_many_requests(decision: Decision, detail: &str) -> Response {
    let mut problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests").detail(detail);
    problem.retry_after = Some(decision.retry_after.as_secs().max(1));
    let mut response = problem.into_response();
    set_headers(response.headers_mut(), decision);
    response
}
