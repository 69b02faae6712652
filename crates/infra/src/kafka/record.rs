//! A consumed record, and the record headers this layer adds on every send: the trace context and the
//! correlation id of the work that produced the record (with the carrier that writes them and the reader that
//! continues the trace from a consumed record).

use opentelemetry::propagation::{Extractor, Injector};
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::telemetry::propagation;

/// A consumed record, detached from librdkafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The topic it was read from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Milliseconds since the epoch (create or log-append time), when the broker gave one.
    pub timestamp: Option<i64>,
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The value, if any (a tombstone has none).
    pub value: Option<Vec<u8>>,
    /// The headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_slice())
    }

    /// Copies a message out of librdkafka (headers parsed): what the handler gets. Public so code driving its
    /// own rdkafka consumer (the benchmark's raw side) can pay exactly the same cost.
    pub fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect()
            })
            .unwrap_or_default();
        Record {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}

/// Header names of the trace context (W3C Trace Context, as OpenTelemetry's Kafka conventions use them).
pub mod headers {
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
    if !has(headers::TRACEPARENT) {
        let mut carrier = Carrier(Vec::new());
        propagation::inject(span, &mut carrier);
        added.extend(carrier.0);
    }
    if !has(headers::CORRELATION_ID)
        && let Some(id) = propagation::correlation_id()
    {
        added.push((headers::CORRELATION_ID, id.to_string()));
    }
    added
}

/// Collects what the propagator injects; only the W3C names are kept (the propagator writes no others).
struct Carrier(Vec<(&'static str, String)>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            headers::TRACEPARENT => self.0.push((headers::TRACEPARENT, value)),
            headers::TRACESTATE => self.0.push((headers::TRACESTATE, value)),
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
