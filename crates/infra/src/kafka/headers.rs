//! Record headers this layer adds: the trace context and correlation id of the work that produced a record,
//! and where a dead-lettered record came from and why.

use opentelemetry::propagation::{Extractor, Injector};

use super::consumer::Record;
use crate::telemetry::propagation;

/// Header names of the trace context (W3C Trace Context, as OpenTelemetry's Kafka conventions use them).
pub mod trace {
    /// `version-traceid-spanid-flags` of the producing span.
    pub const TRACEPARENT: &str = "traceparent";
    /// Vendor-specific trace state, when the trace has any.
    pub const TRACESTATE: &str = "tracestate";
    /// The id of the request (or record) whose work produced this record.
    pub const CORRELATION_ID: &str = crate::telemetry::propagation::CORRELATION_ID_HEADER;
}

/// The headers the producer adds to a record sent inside `span`: its trace context, and the correlation id
/// of the work in progress — each only when the caller's `given` headers do not carry it already (a relay
/// re-publishing a stored record keeps the original's).
pub(crate) fn context_headers(span: &tracing::Span, given: &[(&str, &[u8])]) -> Vec<(&'static str, String)> {
    let has = |name: &str| given.iter().any(|(key, _)| key.eq_ignore_ascii_case(name));
    let mut added = Vec::new();
    if !has(trace::TRACEPARENT) {
        let mut carrier = Carrier(Vec::new());
        propagation::inject(span, &mut carrier);
        added.extend(carrier.0);
    }
    if !has(trace::CORRELATION_ID)
        && let Some(id) = propagation::correlation_id()
    {
        added.push((trace::CORRELATION_ID, id.to_string()));
    }
    added
}

/// Collects what the propagator injects; only the W3C names are kept (the propagator writes no others).
struct Carrier(Vec<(&'static str, String)>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            trace::TRACEPARENT => self.0.push((trace::TRACEPARENT, value)),
            trace::TRACESTATE => self.0.push((trace::TRACESTATE, value)),
            _ => {}
        }
    }
}

/// A consumed record's headers, read by the propagator.
pub(crate) struct RecordHeaders<'a>(pub(crate) &'a Record);

impl Extractor for RecordHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// Header names on dead-lettered records.
pub mod dlq {
    /// The topic the record was consumed from.
    pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
    /// Its partition there.
    pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
    /// Its offset there.
    pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";
    /// Its timestamp there (milliseconds since the epoch), when it had one.
    pub const ORIGINAL_TIMESTAMP: &str = "dlq.original.timestamp";
    /// The handler's last error.
    pub const ERROR: &str = "dlq.error";
    /// How many times the handler was called.
    pub const ATTEMPTS: &str = "dlq.attempts";
    /// Every header this layer adds (replay strips them).
    pub const ALL: [&str; 6] =
        [ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, ORIGINAL_TIMESTAMP, ERROR, ATTEMPTS];
}

/// The headers added to a dead-lettered copy of `record`.
pub(crate) fn dead_letter_headers(record: &Record, error: &str, attempts: u32) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (dlq::ORIGINAL_TOPIC, record.topic.clone()),
        (dlq::ORIGINAL_PARTITION, record.partition.to_string()),
        (dlq::ORIGINAL_OFFSET, record.offset.to_string()),
        (dlq::ERROR, error.to_string()),
        (dlq::ATTEMPTS, attempts.to_string()),
    ];
    if let Some(timestamp) = record.timestamp {
        headers.push((dlq::ORIGINAL_TIMESTAMP, timestamp.to_string()));
    }
    headers
}
