//! Per-client rate limiting through the Redis limiter (GCRA, shared by every instance), with the IETF
//! `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` headers on every limited route's answer and
//! `Retry-After` on a 429. The per-IP limit leases a few tokens at a time and spends them in process
//! ([`infra::redis::LeasedRateLimiter`]): one Redis round trip per lease, not per request. Its
//! `RateLimit-Remaining` is then approximate: Redis' remaining when the lease was taken plus the tokens this
//! instance still holds.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use infra::redis::{Decision, LeasedRateLimiter, Limit, RateLimiter};
use ipnet::IpNet;
use tokio::time::Timeout;
use tower::{Layer, Service, ServiceExt};

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

/// The per-IP limit and the request time limit of the API routes, as one `tower` layer (see `http::router`: the
/// operational routes are never limited, and have their own time limit). For each request it attributes the
/// request to its client ([`ClientIp`] in the extensions, for handlers), applies the per-IP limit, then bounds
/// the admitted request by HTTP_REQUEST_TIMEOUT ([`super::timed_out`]), and writes the RateLimit-* headers.
///
/// Written as a service rather than with `axum::middleware::from_fn`: it runs on every API request, and the
/// limit is decided in process for all but one request per lease ([`LeasedRateLimiter::check_local`]), so those
/// are answered with the inner future wrapped in place; only a request that must wait for a new lease is boxed.
#[derive(Clone, Debug)]
pub struct LimitLayer(Arc<LimitPolicy>);

#[derive(Debug)]
struct LimitPolicy {
    per_ip: LeasedRateLimiter<LimitSubject>,
    /// Peers whose `X-Forwarded-For` is believed (HTTP_TRUSTED_PROXIES).
    proxies: Vec<IpNet>,
    /// HTTP_REQUEST_TIMEOUT.
    timeout: Duration,
}

impl LimitLayer {
    /// Limits each client address by `per_ip` (attributed through `proxies`) and each request to `timeout`.
    pub fn new(per_ip: LeasedRateLimiter<LimitSubject>, proxies: &[IpNet], timeout: Duration) -> Self {
        LimitLayer(Arc::new(LimitPolicy { per_ip, proxies: proxies.to_vec(), timeout }))
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited { inner, policy: Arc::clone(&self.0) }
    }
}

/// `inner` behind the per-IP limit and the request time limit (see [`LimitLayer`]).
#[derive(Clone, Debug)]
pub struct Limited<S> {
    inner: S,
    policy: Arc<LimitPolicy>,
}

impl<S> Service<Request> for Limited<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = LimitedResponse<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let timeout = self.policy.timeout;
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
        let Some(peer) = peer else {
            // Only in-process tests without connection info get here: nothing to attribute the request to.
            return LimitedResponse::admitted(self.inner.call(request), timeout, None);
        };
        let client = client_ip(peer, request.headers(), &self.policy.proxies);
        request.extensions_mut().insert(ClientIp(client));
        let subject = LimitSubject::of(client);
        match self.policy.per_ip.check_local(&subject) {
            Some(decision) if !decision.allowed => LimitedResponse::Refused { response: Some(refused(decision)) },
            Some(decision) => LimitedResponse::admitted(self.inner.call(request), timeout, Some(decision)),
            None => {
                // This instance's lease for the client is spent: wait for the next one off the fast path. The
                // inner service (a route) is always ready, so a clone of it serves the request.
                let (inner, policy) = (self.inner.clone(), Arc::clone(&self.policy));
                let answer = async move {
                    let decision = policy.per_ip.check(&subject).await;
                    if !decision.allowed {
                        return refused(decision);
                    }
                    let answer = async move {
                        let Ok(response) = inner.oneshot(request).await;
                        response
                    };
                    with_headers(super::time_limited(policy.timeout, answer).await, decision)
                };
                LimitedResponse::Leasing { answer: Box::pin(answer) }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`Limited`] request.
    #[project = LimitedProjection]
    pub enum LimitedResponse<F> {
        /// Refused by the limit: answered without calling the inner service.
        Refused { response: Option<Response> },
        /// Admitted from a local lease: the inner answer within the time limit.
        Admitted { #[pin] answer: Timeout<F>, decision: Option<Decision>, limit: Duration },
        /// Waiting for a new lease first.
        Leasing { answer: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

impl<F: Future> LimitedResponse<F> {
    fn admitted(answer: F, limit: Duration, decision: Option<Decision>) -> Self {
        LimitedResponse::Admitted { answer: tokio::time::timeout(limit, answer), decision, limit }
    }
}

impl<F> Future for LimitedResponse<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.project() {
            // Taken once: a second poll after `Ready` would be the caller's bug, answered rather than panicking.
            LimitedProjection::Refused { response } => {
                response.take().unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
            }
            LimitedProjection::Admitted { answer, decision, limit } => {
                let response = match ready!(answer.poll(cx)) {
                    Ok(Ok(response)) => response,
                    Err(_) => super::timed_out(*limit),
                };
                match decision {
                    Some(decision) => with_headers(response, *decision),
                    None => response,
                }
            }
            LimitedProjection::Leasing { answer } => ready!(answer.as_mut().poll(cx)),
        };
        Poll::Ready(Ok(response))
    }
}

/// The 429 of a client over the per-IP limit.
fn refused(decision: Decision) -> Response {
    too_many_requests(decision, "too many requests from this address; retry later")
}

/// `response` with the RateLimit-* headers of `decision`, unless a route with its own, stricter limit has
/// already set those of that limit.
fn with_headers(mut response: Response, decision: Decision) -> Response {
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
