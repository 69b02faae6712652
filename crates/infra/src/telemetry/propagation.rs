//! Trace context and correlation ids across process boundaries: W3C `traceparent` / `tracestate` in HTTP
//! headers and Kafka record headers, and a correlation id that follows the work of one request.
//!
//! The carriers (HTTP header maps, Kafka headers) implement OpenTelemetry's [`Injector`] / [`Extractor`]
//! where they live; this module only moves the context in and out of `tracing` spans.

use std::future::Future;
use std::sync::Arc;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::task::futures::TaskLocalFuture;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header carrying the correlation id on Kafka records.
pub const CORRELATION_ID_HEADER: &str = "correlation-id";

tokio::task_local! {
    static CORRELATION_ID: Arc<str>;
}

/// Writes `span`'s trace context (W3C `traceparent`, and `tracestate` when there is one) into `carrier`.
/// Writes nothing when no OpenTelemetry layer is installed (the span has no valid context).
pub fn inject(span: &tracing::Span, carrier: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(&span.context(), carrier);
}

/// Makes `span` a child of the trace context found in `carrier`, if any: the caller's trace continues here.
/// A carrier without (or with a malformed) `traceparent` leaves `span` a root.
pub fn continue_trace(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = TraceContextPropagator::new().extract(carrier);
    if parent.span().span_context().is_valid() {
        // Fails only once the span has been entered; callers set the parent right after creating it.
        let _ = span.set_parent(parent);
    }
}

/// `span`'s trace id in hex, when it has a valid one (an OpenTelemetry layer is installed).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// Runs `work` with `id` as the correlation id: records produced inside carry it.
pub async fn with_correlation_id<F: Future>(id: Arc<str>, work: F) -> F::Output {
    correlated(id, work).await
}

/// `work` with `id` as its correlation id, as a future of a nameable type: for a hand-written `tower` service
/// whose response future cannot be an `async` block without being boxed.
pub fn correlated<F: Future>(id: Arc<str>, work: F) -> TaskLocalFuture<Arc<str>, F> {
    CORRELATION_ID.scope(id, work)
}

/// The correlation id of the work in progress (an HTTP request's id, a consumed record's id), if any.
pub fn correlation_id() -> Option<Arc<str>> {
    CORRELATION_ID.try_with(Arc::clone).ok()
}
