//! Per-request observability: the request id, the server span (continuing the caller's W3C trace), the HTTP
//! metrics, and one log line per request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::header::USER_AGENT;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use infra::telemetry::propagation;
use ipnet::IpNet;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_semantic_conventions::attribute::{
    CLIENT_ADDRESS, ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE, URL_PATH, URL_SCHEME,
    USER_AGENT_ORIGINAL,
};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::Empty;
use tracing::instrument::Instrumented;

use super::client_ip::{client_ip, is_trusted_proxy};

/// The header carrying the request id, in and out.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Counter of handled requests by `method`, `route` and `status`.
pub const REQUESTS_TOTAL: &str = "http_requests_total";
/// Histogram of request durations by `method`, `route` and `status`.
pub const REQUEST_DURATION: &str = "http_request_duration_seconds";

/// The longest request id taken from a caller; longer ones are replaced (they would bloat every log line).
const MAX_REQUEST_ID_LEN: usize = 128;

/// Marks the answer of a route polled by machines (probes, scrapers): its request is logged at debug so it does
/// not drown the request log. The router layers [`mark_polled`] onto those routes; observe never compares paths.
#[derive(Clone, Copy, Debug)]
pub struct Polled;

/// Marks `response` as [`Polled`]; for `axum::middleware::map_response`.
pub async fn mark_polled(mut response: Response) -> Response {
    response.extensions_mut().insert(Polled);
    response
}

/// The `route` label of requests no route matched (metrics only: their span has no `http.route`).
pub const UNMATCHED: &str = "unmatched";

/// The longest `user_agent.original` recorded; longer ones are cut (a header may be kilobytes).
const MAX_USER_AGENT_LEN: usize = 256;

/// What [`Observe`] needs: the trusted proxies and the HTTP metrics' handles.
#[derive(Debug)]
struct Observer {
    /// The peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (HTTP_TRUSTED_PROXIES), as for rate
    /// limiting.
    proxies: Vec<IpNet>,
    metrics: RequestMetrics,
}

impl Observer {
    /// An observer believing `proxies`.
    fn new(proxies: &[IpNet]) -> Arc<Self> {
        Arc::new(Observer { proxies: proxies.to_vec(), metrics: RequestMetrics::default() })
    }
}

/// The handles of `http_requests_total` and `http_request_duration_seconds` by route, method and status, created
/// on first use: a request records with two atomic operations instead of building labels and looking them up in
/// the registry (which cost about a microsecond per request). Routes are the router's patterns, so the map is
/// bounded like the series themselves.
#[derive(Debug, Default)]
struct RequestMetrics {
    by_route: RwLock<HashMap<String, Vec<Series>>>,
}

#[derive(Debug)]
struct Series {
    method: &'static str,
    status: u16,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

impl RequestMetrics {
    fn record(&self, method: &'static str, route: &str, status: u16, elapsed: f64) {
        let known = |series: &&Series| series.method == method && series.status == status;
        {
            let by_route = self.by_route.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = by_route.get(route).and_then(|all| all.iter().find(known)) {
                series.requests.increment(1);
                series.duration.record(elapsed);
                return;
            }
        }
        let labels = [("method", method.to_string()), ("route", route.to_string()), ("status", status.to_string())];
        let series = Series {
            method,
            status,
            requests: metrics::counter!(REQUESTS_TOTAL, &labels),
            duration: metrics::histogram!(REQUEST_DURATION, &labels),
        };
        series.requests.increment(1);
        series.duration.record(elapsed);
        let mut by_route = self.by_route.write().unwrap_or_else(PoisonError::into_inner);
        let all = by_route.entry(route.to_string()).or_default();
        if !all.iter().any(|series| known(&series)) {
            all.push(series);
        }
    }
}

/// The observe middleware (request id, server span, HTTP metrics, one log line per request) as a `tower` layer.
///
/// Written as a service rather than with `axum::middleware::from_fn`: it wraps every request, and `from_fn` costs
/// a boxed future, a boxed clone of the inner service and a boxed `Next` per request; this one answers with the
/// inner future wrapped in place ([`ObservedResponse`]).
#[derive(Clone, Debug)]
pub struct ObserveLayer(Arc<Observer>);

impl ObserveLayer {
    /// Observes requests, believing `X-Forwarded-For` / `X-Forwarded-Proto` from `proxies` (HTTP_TRUSTED_PROXIES).
    pub fn new(proxies: &[IpNet]) -> Self {
        ObserveLayer(Observer::new(proxies))
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, observer: Arc::clone(&self.0) }
    }
}

/// `inner` with every request observed (see [`ObserveLayer`]).
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    observer: Arc<Observer>,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObservedResponse<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    /// Takes `x-request-id` from the caller (or makes one), and runs the request inside its span with the id as
    /// correlation id. (The inner service's `call` only builds its future — axum's routes do — so the work runs
    /// where the span and the id are in place: when the future is polled.)
    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let request_id = match caller_request_id(&request) {
            Some(theirs) => theirs,
            None => {
                let id = new_request_id();
                request.headers_mut().insert(REQUEST_ID.clone(), id.clone());
                id
            }
        };
        // Checked visible ASCII (the caller's) or a UUID's text (ours).
        let request_id_text = request_id.to_str().unwrap_or_default();
        let method = method_label(request.method());
        let route = request.extensions().get::<MatchedPath>().cloned();
        let matched = route.as_ref().map(MatchedPath::as_str);
        let span = server_span(&request, method, matched, request_id_text, &self.observer.proxies);
        propagation::continue_trace(&span, &HeaderExtractor(request.headers()));
        let correlation: Arc<str> = Arc::from(request_id_text);
        let answer = propagation::correlated(correlation, self.inner.call(request)).instrument(span);
        let finish = Finish { observer: Arc::clone(&self.observer), method, route, started, request_id };
        ObservedResponse { answer, finish: Some(finish) }
    }
}

pin_project_lite::pin_project! {
    /// The answer of an [`Observe`]d request: the inner future inside the request's span and correlation id, then
    /// the span's status, the metrics, the log line and the `x-request-id` header once it is ready.
    pub struct ObservedResponse<F> {
        #[pin]
        answer: Instrumented<TaskLocalFuture<Arc<str>, F>>,
        finish: Option<Finish>,
    }
}

/// What is recorded once the answer is ready.
struct Finish {
    observer: Arc<Observer>,
    method: &'static str,
    route: Option<MatchedPath>,
    started: Instant,
    request_id: HeaderValue,
}

impl<F> Future for ObservedResponse<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Ok(mut response) = ready!(this.answer.as_mut().poll(cx));
        // Polled again after `Ready` would be a caller's bug; answering it with a fresh 500 beats a panic.
        let Some(Finish { observer, method, route, started, request_id }) = this.finish.take() else {
            return Poll::Ready(Ok(axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()));
        };
        let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        finish(this.answer.span(), &observer.metrics, method, route, &response, started);
        response.headers_mut().insert(REQUEST_ID.clone(), request_id);
        Poll::Ready(Ok(response))
    }
}

/// A fresh request id: a random UUID's hyphenated text, encoded without an intermediate `String`.
fn new_request_id() -> HeaderValue {
    let mut text = [0_u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The server span on OpenTelemetry's stable HTTP conventions (names from `opentelemetry-semantic-conventions`):
/// `METHOD /route`, or `METHOD` alone when no route matched (a raw path would make span names unbounded), and
/// `HTTP` for a method outside the standard ones. `client.address` is the client as rate limiting sees it.
fn server_span(
    request: &Request,
    method: &'static str,
    route: Option<&str>,
    request_id: &str,
    proxies: &[IpNet],
) -> tracing::Span {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let client = peer.map(|peer| client_ip(peer, request.headers(), proxies));
    let name = SpanName { method: if method == OTHER_METHOD { "HTTP" } else { method }, route };
    let user_agent = request.headers().get(USER_AGENT).and_then(|value| value.to_str().ok()).map(bounded_user_agent);
    tracing::info_span!(
        "http.request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        { HTTP_REQUEST_METHOD } = method,
        { HTTP_ROUTE } = route,
        { URL_PATH } = request.uri().path(),
        { URL_SCHEME } = scheme(request, peer, proxies),
        { CLIENT_ADDRESS } = client.map(tracing::field::display),
        { USER_AGENT_ORIGINAL } = user_agent,
        { HTTP_RESPONSE_STATUS_CODE } = Empty,
        { ERROR_TYPE } = Empty,
        request_id = %request_id,
    )
}

/// A server span's name, written when a layer records it (no `String` per request).
struct SpanName<'a> {
    method: &'static str,
    route: Option<&'a str>,
}

impl std::fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.route {
            Some(route) => write!(f, "{} {route}", self.method),
            None => f.write_str(self.method),
        }
    }
}

/// `https` when a trusted proxy says so (`X-Forwarded-Proto`), else `http`: the service itself serves plain
/// HTTP, TLS ends at the proxy or ingress in front of it.
fn scheme(request: &Request, peer: Option<IpAddr>, proxies: &[IpNet]) -> &'static str {
    let forwarded = request.headers().get("x-forwarded-proto").and_then(|value| value.to_str().ok());
    let vouched = peer.is_some_and(|peer| is_trusted_proxy(peer, proxies));
    match forwarded {
        Some(proto) if vouched && proto.trim().eq_ignore_ascii_case("https") => "https",
        _ => "http",
    }
}

/// At most [`MAX_USER_AGENT_LEN`] bytes of `agent`, cut at a character boundary.
fn bounded_user_agent(agent: &str) -> &str {
    let mut end = agent.len().min(MAX_USER_AGENT_LEN);
    while !agent.is_char_boundary(end) {
        end -= 1;
    }
    &agent[..end]
}

fn finish(
    span: &tracing::Span,
    metrics: &RequestMetrics,
    method: &'static str,
    route: &str,
    response: &Response,
    started: Instant,
) {
    let elapsed = started.elapsed();
    let status = response.status();
    span.record(HTTP_RESPONSE_STATUS_CODE, status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
        // The conventions' error type of a server error without an exception: the status code.
        span.record(ERROR_TYPE, status.as_str());
    }
    metrics.record(method, route, status.as_u16(), elapsed.as_secs_f64());
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    // The span as the line's explicit parent: its fields and trace are the line's without entering it again.
    if response.extensions().get::<Polled>().is_some() {
        tracing::debug!(parent: span, status = status.as_u16(), duration_ms, "request finished");
    } else {
        tracing::info!(parent: span, status = status.as_u16(), duration_ms, "request finished");
    }
}

/// The caller's request id when it is reasonable: 1–128 visible ASCII characters without quotes or spaces.
/// Anything else is replaced rather than trusted into every log line.
fn caller_request_id(request: &Request) -> Option<HeaderValue> {
    let value = request.headers().get(&REQUEST_ID)?;
    let raw = value.as_bytes();
    let ok = !raw.is_empty()
        && raw.len() <= MAX_REQUEST_ID_LEN
        && raw.iter().all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    ok.then(|| value.clone())
}

/// The `method` label and `http.request.method` of a method outside the standard ones (OpenTelemetry's value).
const OTHER_METHOD: &str = "_OTHER";

/// The method as a bounded label: the standard methods, or `_OTHER` (OpenTelemetry's convention).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => OTHER_METHOD,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn request_with_id(id: &str) -> Request {
        Request::builder().header("x-request-id", id).body(axum::body::Body::empty()).expect("request")
    }

    #[test]
    fn sane_caller_ids_are_kept_and_others_replaced() {
        assert_eq!(
            caller_request_id(&request_with_id("abc-123_x.y:z")),
            Some(HeaderValue::from_static("abc-123_x.y:z"))
        );
        assert_eq!(caller_request_id(&request_with_id(&"a".repeat(129))), None);
        assert_eq!(caller_request_id(&request_with_id("has space")), None);
        assert_eq!(caller_request_id(&request_with_id("quote\"d")), None);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"PURGE").expect("method")), "_OTHER");
    }

    /// The level of every "request finished" line logged while serving `path` with `router`.
    async fn finished_levels(router: axum::Router, path: &str) -> Vec<tracing::Level> {
        use std::sync::Mutex;
        use tower::ServiceExt;
        use tracing_subscriber::layer::{Context, SubscriberExt};

        struct Finished(Arc<Mutex<Vec<tracing::Level>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Finished {
            fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
                let mut message = String::new();
                event.record(&mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                    if field.name() == "message" {
                        message = format!("{value:?}");
                    }
                });
                if message == "request finished" {
                    self.0.lock().expect("levels").push(*event.metadata().level());
                }
            }
        }
        let levels = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Finished(levels.clone()));
        let _default = tracing::subscriber::set_default(subscriber);
        let request = Request::get(path).body(axum::body::Body::empty()).expect("request");
        router.oneshot(request).await.expect("answered");
        levels.lock().expect("levels").clone()
    }

    #[tokio::test]
    async fn routes_marked_polled_are_logged_at_debug_and_every_other_at_info() {
        use axum::routing::get;
        let polled = axum::Router::new()
            .route("/probe", get(|| async { "up" }))
            .route_layer(axum::middleware::map_response(mark_polled));
        let router = polled.route("/api", get(|| async { "data" })).layer(ObserveLayer::new(&[]));
        assert_eq!(finished_levels(router.clone(), "/probe").await, [tracing::Level::DEBUG]);
        assert_eq!(finished_levels(router.clone(), "/api").await, [tracing::Level::INFO]);
        assert_eq!(finished_levels(router, "/nowhere").await, [tracing::Level::INFO]);
    }

    /// The fields of the `http.request` span of each request sent to `router` (`peer` as the TCP peer), as text.
    async fn server_spans(router: axum::Router, requests: Vec<Request>, peer: &str) -> Vec<BTreeMap<String, String>> {
        use std::sync::Mutex;
        use tower::ServiceExt;
        use tracing::field::{Field, Visit};
        use tracing::span::{Attributes, Id, Record};
        use tracing_subscriber::layer::{Context, SubscriberExt};
        use tracing_subscriber::registry::LookupSpan;

        type Spans = Arc<Mutex<Vec<(Id, BTreeMap<String, String>)>>>;
        struct Text<'a>(&'a mut BTreeMap<String, String>);
        impl Visit for Text<'_> {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_string(), format!("{value:?}"));
            }
            fn record_str(&mut self, field: &Field, value: &str) {
                self.0.insert(field.name().to_string(), value.to_string());
            }
        }
        struct Server(Spans);
        impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Server {
            fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
                if attrs.metadata().name() == "http.request" {
                    let mut fields = BTreeMap::new();
                    attrs.record(&mut Text(&mut fields));
                    self.0.lock().expect("spans").push((id.clone(), fields));
                }
            }
            fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
                let mut spans = self.0.lock().expect("spans");
                if let Some((_, fields)) = spans.iter_mut().find(|(known, _)| known == id) {
                    values.record(&mut Text(fields));
                }
            }
        }
        let spans: Spans = Arc::default();
        let subscriber = tracing_subscriber::registry().with(Server(spans.clone()));
        let _default = tracing::subscriber::set_default(subscriber);
        let peer: SocketAddr = peer.parse().expect("peer");
        for mut request in requests {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request).await.expect("answered");
        }
        let spans = spans.lock().expect("spans");
        spans.iter().map(|(_, fields)| fields.clone()).collect()
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).expect("request")
    }

    fn traced_router(proxies: &[&str]) -> axum::Router {
        use axum::http::StatusCode;
        use axum::routing::get;
        let proxies: Vec<IpNet> = proxies.iter().map(|net| net.parse().expect("net")).collect();
        axum::Router::new()
            .route("/boom/{id}", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
            .route("/ok", get(|| async { "ok" }))
            .layer(ObserveLayer::new(&proxies))
    }

    fn field<'a>(span: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
        span.get(name).map(String::as_str)
    }

    #[tokio::test]
    async fn server_spans_carry_the_stable_http_attributes_and_error_type_on_5xx() {
        let requests = vec![request("GET", "/boom/7", &[("user-agent", "probe/1.0")]), request("GET", "/ok", &[])];
        let spans = server_spans(traced_router(&[]), requests, "203.0.113.9:40000").await;
        let [boom, ok] = spans.as_slice() else { panic!("two server spans: {spans:?}") };
        assert_eq!(field(boom, "otel.name"), Some("GET /boom/{id}"));
        assert_eq!(field(boom, "http.request.method"), Some("GET"));
        assert_eq!(field(boom, "http.route"), Some("/boom/{id}"));
        assert_eq!(field(boom, "url.path"), Some("/boom/7"));
        assert_eq!(field(boom, "url.scheme"), Some("http"));
        assert_eq!(field(boom, "client.address"), Some("203.0.113.9"));
        assert_eq!(field(boom, "user_agent.original"), Some("probe/1.0"));
        assert_eq!(field(boom, "http.response.status_code"), Some("500"));
        assert_eq!(field(boom, "error.type"), Some("500"));
        assert_eq!(field(boom, "otel.status_code"), Some("ERROR"));
        assert_eq!(field(ok, "http.response.status_code"), Some("200"));
        assert_eq!(field(ok, "error.type"), None, "no error type below 500");
        assert_eq!(field(ok, "user_agent.original"), None);
    }

    #[tokio::test]
    async fn an_unmatched_path_is_named_by_its_method_alone_and_has_no_route() {
        let requests = vec![request("GET", "/no/such/path", &[]), request("PURGE", "/ok", &[])];
        let spans = server_spans(traced_router(&[]), requests, "203.0.113.9:40000").await;
        let [unmatched, purge] = spans.as_slice() else { panic!("two server spans: {spans:?}") };
        assert_eq!(field(unmatched, "otel.name"), Some("GET"));
        assert_eq!(field(unmatched, "http.route"), None);
        assert_eq!(field(unmatched, "url.path"), Some("/no/such/path"));
        assert_eq!(field(purge, "http.request.method"), Some("_OTHER"));
        assert!(field(purge, "otel.name").is_some_and(|name| name.starts_with("HTTP")), "{purge:?}");
    }

    #[tokio::test]
    async fn forwarded_client_and_scheme_are_believed_from_trusted_proxies_only() {
        let forwarded = [("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "https")];
        let via_proxy =
            server_spans(traced_router(&["10.0.0.0/8"]), vec![request("GET", "/ok", &forwarded)], "10.0.0.2:1").await;
        assert_eq!(field(&via_proxy[0], "client.address"), Some("198.51.100.7"));
        assert_eq!(field(&via_proxy[0], "url.scheme"), Some("https"));
        let direct = server_spans(traced_router(&[]), vec![request("GET", "/ok", &forwarded)], "203.0.113.9:1").await;
        assert_eq!(field(&direct[0], "client.address"), Some("203.0.113.9"));
        assert_eq!(field(&direct[0], "url.scheme"), Some("http"));
    }

    #[test]
    fn long_user_agents_are_cut_at_a_character_boundary() {
        let agent = "é".repeat(200);
        let cut = bounded_user_agent(&agent);
        assert!(cut.len() <= MAX_USER_AGENT_LEN && agent.starts_with(cut) && !cut.is_empty());
    }
}
