//! The HTTP surface: routes, shared state and error responses.

pub mod access;
pub mod body;
pub mod client_ip;
mod docs;
mod events;
pub mod extract;
mod health;
pub mod observe;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod rate_limit;
pub mod sessions;
mod timestamp;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get, on};
use infra::health::HealthRegistry;
use infra::redis::{LeasedRateLimiter, Limit, RateLimiter};
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::events::{EventLog, EventPublisher};
use crate::users::Users;
use access::Access;
use client_ip::LimitSubject;
use problem::Problem;
use sessions::CookieSettings;

/// What handlers share. axum clones the state for every extractor and middleware of every request: behind
/// one `Arc`, that is a reference count, not a copy of the limiters' strings and the proxy list.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// Shares `services` with every handler.
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services handlers use.
pub struct Services {
    /// Health checks of every dependency.
    pub health: Arc<HealthRegistry>,
    /// Renders every metric of the process for `/metrics`.
    pub metrics: PrometheusHandle,
    /// Publishes events.
    pub events: Arc<dyn EventPublisher>,
    /// Recorded events.
    pub event_log: Arc<dyn EventLog>,
    /// Limits publications per client address.
    pub publish_limiter: RateLimiter,
    /// The users use cases.
    pub users: Users,
    /// Rate limits and client attribution.
    pub limits: Limits,
    /// The session cookie.
    pub cookie: CookieSettings,
    /// Request body and time limits.
    pub requests: RequestLimits,
    /// What the ops page shows besides health.
    pub ops: ops::OpsSources,
}

/// Rate limits of the API.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Every API route, per client IP: leased from the Redis limiter (shared by every instance of the service).
    pub per_ip: LeasedRateLimiter<LimitSubject>,
    /// Counts login attempts; always fails closed (a login cannot succeed without Redis anyway).
    pub login_limiter: RateLimiter,
    /// Logins, per client IP (IPv6: per /64) and account.
    pub login: Limit,
    /// Logins per account across every address.
    pub login_per_account: Limit,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// Limits on each request.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// The largest body accepted, in bytes.
    pub body_limit: usize,
    /// The longest a request may take.
    pub timeout: Duration,
}

/// All routes with their middleware: the ops routes and the API routes, each with the layers its audience
/// needs, both under the `observe` layer that sees (and measures) every answer, 429s included.
pub fn router(state: AppState) -> Router {
    let observe = observe::ObserveLayer::new(&state.limits.trusted_proxies);
    ops_router(state.requests).layer(observe.clone()).merge(api_router(state.clone(), observe)).with_state(state)
}

/// The routes the platform running the service calls: probes, health, metrics, and the ops page people read. Never
/// rate limited (a probe or a scraper answered 429 would restart or blind the service exactly when it is busy) and
/// never behind the API's access control. Built from [`ops_routes`] only.
fn ops_router(requests: RequestLimits) -> Router<AppState> {
    let (mut polled, mut inspected) = (Router::new(), Router::new());
    for route in ops_routes() {
        if route.polled {
            polled = polled.route(route.path, route.handler);
        } else {
            inspected = inspected.route(route.path, route.handler);
        }
    }
    // Polled every few seconds: marked outside the limits so that even a timed-out probe is logged at debug.
    let time_limit = || from_fn_with_state(requests.timeout, time_limit);
    let polled = handled(polled, requests).layer(time_limit()).route_layer(map_response(observe::mark_polled));
    polled.merge(handled(inspected, requests).layer(time_limit()))
}

/// An ops route: a `GET` path anyone may call, and its handler.
pub struct OpsRoute {
    /// The path, as axum matches it.
    pub path: &'static str,
    /// Polled every few seconds by a prober or scraper (logged at debug).
    polled: bool,
    handler: MethodRouter<AppState>,
}

/// Every ops route (all `GET`): the table the ops router is built from, which the OpenAPI test compares with
/// the document.
pub fn ops_routes() -> Vec<OpsRoute> {
    let route = |path, polled, handler| OpsRoute { path, polled, handler };
    vec![
        route("/livez", true, get(health::livez)),
        route("/readyz", true, get(health::readyz)),
        route("/metrics", true, get(metrics)),
        route("/health", false, get(health::health)),
        route("/health/{component}", false, get(health::component)),
        route("/ops", false, get(ops::page)),
    ]
}

/// The routes clients call: users, sessions, events, the API's description, and the answer to unknown paths.
/// Limited per client address; each route behind its [`Access`] rule. Built from [`api_routes`] only, so no
/// route exists without an access decision.
///
/// The layers every API request passes are composed into one service applied once: each `Router::layer` call
/// would wrap every route in one more boxed route, cloned and boxed again on each request.
fn api_router(state: AppState, observe: observe::ObserveLayer) -> Router<AppState> {
    let requests = state.requests;
    let mut routes = Router::new();
    for route in api_routes() {
        let rule = access::AccessLayer::new(state.clone(), route.access);
        routes = routes.route(route.path, (route.handler)(rule));
    }
    let limits = &state.limits;
    let layers = ServiceBuilder::new()
        .layer(observe)
        // Outside the request's other limits: the rate limit answers before any work, then bounds the
        // request's time (HTTP_REQUEST_TIMEOUT).
        .layer(rate_limit::LimitLayer::new(limits.per_ip.clone(), &limits.trusted_proxies, requests.timeout))
        // The panic catcher answers with its own body type; axum's `Response` above it.
        .map_response(IntoResponse::into_response)
        .layer(CatchPanicLayer::custom(problem::panic_response))
        .layer(DefaultBodyLimit::max(requests.body_limit));
    routes.fallback(problem::not_found).method_not_allowed_fallback(problem::method_not_allowed).layer(layers)
}

/// An API route: method and path, who may call it, and its handler.
pub struct ApiRoute {
    /// The HTTP method.
    pub method: Method,
    /// The path, as axum matches it (`/users/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// The route's handler behind the access rule it is given: the rule wraps the handler itself, so the two
    /// are one route (one boxed service per request, not two).
    handler: Box<dyn FnOnce(access::AccessLayer) -> MethodRouter<AppState>>,
}

impl ApiRoute {
    /// `handler` answers `verb` on `path`, for the callers `access` admits. The method is said once, so the
    /// table cannot list one method and route another.
    fn new<H, T>(verb: Verb, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let handler = Box::new(move |rule| on(verb.filter(), handler.layer(rule)));
        ApiRoute { method: verb.method(), path, access, handler }
    }
}

/// The methods the API uses.
#[derive(Clone, Copy, Debug)]
enum Verb {
    Get,
    Post,
    Patch,
    Delete,
}

impl Verb {
    fn method(self) -> Method {
        match self {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
            Verb::Patch => Method::PATCH,
            Verb::Delete => Method::DELETE,
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Patch => MethodFilter::PATCH,
            Verb::Delete => MethodFilter::DELETE,
        }
    }
}

/// Every API route with its access rule: the one place where who may call what is decided (docs/security.md
/// has the same table).
pub fn api_routes() -> Vec<ApiRoute> {
    use Access::{Admin, OwnerOrAdmin, Public, SignedIn};
    use Verb::{Delete, Get, Patch, Post};
    vec![
        ApiRoute::new(Post, "/users", Public, users::create),
        ApiRoute::new(Get, "/users", Admin, users::list),
        // Anyone signed in sees a public profile; the owner and admins the whole record (decided in the handler).
        ApiRoute::new(Get, "/users/{id}", SignedIn, users::get),
        ApiRoute::new(Patch, "/users/{id}", OwnerOrAdmin, users::update),
        ApiRoute::new(Delete, "/users/{id}", OwnerOrAdmin, users::delete),
        ApiRoute::new(Get, "/users/{id}/activity", OwnerOrAdmin, users::activity),
        ApiRoute::new(Post, "/sessions", Public, sessions::login),
        // Public so that signing out with an expired session still clears the cookie; `?all=true` needs a session.
        ApiRoute::new(Delete, "/sessions", Public, sessions::logout),
        ApiRoute::new(Get, "/me", SignedIn, sessions::me),
        ApiRoute::new(Post, "/events", SignedIn, events::publish),
        // The publisher or an admin (decided in the handler, which has the event).
        ApiRoute::new(Get, "/events/{id}", SignedIn, events::find),
        // The contract, as JSON and as a page: public, like docs/api.md (it names no secret and no user).
        ApiRoute::new(Get, "/openapi.json", Public, openapi::document),
        ApiRoute::new(Get, "/docs", Public, docs::page),
    ]
}

/// What every ops route gets, innermost first: the 405 problem for a known path called with another method, the
/// body limit, and a panic answered as a 500 problem; the ops router layers its [`time_limit`] around these. (The
/// API router composes the same layers into its one stack: [`api_router`].)
fn handled(routes: Router<AppState>, requests: RequestLimits) -> Router<AppState> {
    routes
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(requests.body_limit))
        .layer(CatchPanicLayer::custom(problem::panic_response))
}

/// [`time_limited`] as a middleware.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    time_limited(limit, next.run(request)).await
}

/// Answers 503 (with `Retry-After`) when `answer` takes longer than `limit` (HTTP_REQUEST_TIMEOUT); its work
/// is dropped. Every dependency call has its own, shorter timeout: this is the backstop.
pub async fn time_limited(limit: Duration, answer: impl Future<Output = Response>) -> Response {
    match tokio::time::timeout(limit, answer).await {
        Ok(response) => response,
        Err(_) => timed_out(limit),
    }
}

/// The answer to a request that took longer than `limit` (logged as a warning): 503 `timeout`, `Retry-After: 1`.
pub fn timed_out(limit: Duration) -> Response {
    tracing::warn!(timeout = ?limit, "request timed out");
    let mut problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "Request timed out")
        .detail("the request took longer than the server allows; retry later");
    problem.retry_after = Some(1);
    problem.into_response()
}

/// Every metric of the process in the Prometheus text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses(
        (status = 200, description = "Every metric (docs/metrics.md)", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 503, response = openapi::Unavailable),
    ))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        infra::telemetry::prometheus::render(&state.metrics),
    )
}
