//! Per-request observability: the request id, the server span (continuing the caller's W3C trace), the HTTP
//! metrics, and one log line per request.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use infra::telemetry::propagation;
use opentelemetry_http::HeaderExtractor;
use tracing::Instrument;
use tracing::field::Empty;

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

/// Wraps every request: takes `x-request-id` from the caller (or makes one), runs the request inside its
/// span with the id as correlation id, and returns the id in the response.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = caller_request_id(&request).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = Empty,
        request_id = %request_id,
    );
    propagation::continue_trace(&span, &HeaderExtractor(request.headers()));
    let id_header = HeaderValue::from_str(&request_id).ok();
    if let Some(value) = &id_header {
        request.headers_mut().insert(REQUEST_ID.clone(), value.clone());
    }
    let correlation: Arc<str> = Arc::from(request_id.as_str());
    let mut response = propagation::with_correlation_id(correlation, next.run(request)).instrument(span.clone()).await;
    if let Some(value) = id_header {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    finish(&span, method, &route, &response, started);
    response
}

fn finish(span: &tracing::Span, method: &'static str, route: &str, response: &Response, started: Instant) {
    let elapsed = started.elapsed();
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let labels =
        [("method", method.to_string()), ("route", route.to_string()), ("status", status.as_u16().to_string())];
    metrics::counter!(REQUESTS_TOTAL, &labels).increment(1);
    metrics::histogram!(REQUEST_DURATION, &labels).record(elapsed.as_secs_f64());
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if response.extensions().get::<Polled>().is_some() {
            tracing::debug!(status = status.as_u16(), duration_ms, "request finished");
        } else {
            tracing::info!(status = status.as_u16(), duration_ms, "request finished");
        }
    });
}

/// The caller's request id when it is reasonable: 1–128 visible ASCII characters without quotes or spaces.
/// Anything else is replaced rather than trusted into every log line.
fn caller_request_id(request: &Request) -> Option<String> {
    let raw = request.headers().get(&REQUEST_ID)?.to_str().ok()?;
    let ok = !raw.is_empty()
        && raw.len() <= MAX_REQUEST_ID_LEN
        && raw.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    ok.then(|| raw.to_string())
}

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
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with_id(id: &str) -> Request {
        Request::builder().header("x-request-id", id).body(axum::body::Body::empty()).expect("request")
    }

    #[test]
    fn sane_caller_ids_are_kept_and_others_replaced() {
        assert_eq!(caller_request_id(&request_with_id("abc-123_x.y:z")), Some("abc-123_x.y:z".to_string()));
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
        let router = polled.route("/api", get(|| async { "data" })).layer(axum::middleware::from_fn(observe));
        assert_eq!(finished_levels(router.clone(), "/probe").await, [tracing::Level::DEBUG]);
        assert_eq!(finished_levels(router.clone(), "/api").await, [tracing::Level::INFO]);
        assert_eq!(finished_levels(router, "/nowhere").await, [tracing::Level::INFO]);
    }
}
