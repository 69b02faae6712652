//! The JSON log layer: one object per event, written straight into a reused buffer.
//!
//! Written here rather than taken from a crate: json-subscriber (used before) and tracing-subscriber's JSON
//! formatter build a `serde_json::Value` for every field of the event and of each enclosing span, per line, and
//! look the trace ids up through the global dispatcher. Measured on the service's hot path
//! (`cargo bench -p app --bench users_get`, docs/benchmarks.md) that cost 10–12 µs per access-log line, a
//! fifth of a cached request's CPU. Here a span's fields are rendered to JSON text once, when they are
//! recorded; a line copies that text, so an event costs a timestamp, a few escapes and one write.
//!
//! The line's shape is the one json-subscriber wrote (docs/observability.md): `timestamp`, `level`,
//! `target`, the event's fields flattened (`message` among them), `span` (the fields of every enclosing span,
//! innermost first wins, with the innermost span's `name`), `trace_id` / `span_id` when an OpenTelemetry
//! layer is installed, and `service.name` when given.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::ops::Range;

use opentelemetry::trace::TraceContextExt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Keys the line itself uses: an event field of the same name is left out rather than written twice.
const RESERVED_KEYS: [&str; 7] = ["timestamp", "level", "target", "span", "trace_id", "span_id", "service.name"];

/// A line longer than this is not kept for the next one (a huge event should not pin its buffer).
const REUSED_BUFFER_LIMIT: usize = 16 * 1024;

thread_local! {
    /// Each thread's line buffer, reused across events.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// The layer writing JSON lines to `writer`; see the module documentation for the shape.
pub struct JsonLog<W> {
    writer: W,
    /// `,"service.name":"…"` ready to copy, or empty.
    service_name: String,
}

impl<W> JsonLog<W> {
    /// Lines to `writer`, carrying `service.name` when `service_name` is given.
    pub fn new(writer: W, service_name: Option<&str>) -> Self {
        let mut rendered = Vec::new();
        if let Some(name) = service_name {
            rendered.extend_from_slice(b",\"service.name\":");
            write_json_str(&mut rendered, name);
        }
        JsonLog { writer, service_name: String::from_utf8(rendered).unwrap_or_default() }
    }
}

/// A span's fields as JSON text (`"k":v,"k2":v2`), rendered when they are recorded; kept in the span's
/// extensions.
#[derive(Default)]
struct SpanFields {
    json: Vec<u8>,
    /// Each field's key and where its `"k":v` text is in `json`.
    keys: Vec<(&'static str, Range<usize>)>,
}

impl SpanFields {
    /// The fields a span is created with (each field once: nothing to replace).
    fn of(attributes: &Attributes<'_>) -> Self {
        let mut fields = SpanFields { json: Vec::with_capacity(256), keys: Vec::with_capacity(16) };
        attributes.record(&mut JsonFields(FieldWriter { out: &mut fields, replace: false }));
        fields
    }

    /// Adds the fields recorded later, replacing earlier values.
    fn record(&mut self, values: &Record<'_>) {
        values.record(&mut JsonFields(FieldWriter { out: self, replace: true }));
    }

    fn remove(&mut self, key: &str) {
        let Some(index) = self.keys.iter().position(|(known, _)| *known == key) else { return };
        let (_, range) = self.keys.remove(index);
        let removed = range.len();
        self.json.drain(range.clone());
        for (_, later) in self.keys.iter_mut().filter(|(_, later)| later.start >= range.end) {
            *later = later.start - removed..later.end - removed;
        }
    }
}

/// Renders each recorded field into a span's [`SpanFields`].
struct FieldWriter<'a> {
    out: &'a mut SpanFields,
    /// Whether a field may already have a value.
    replace: bool,
}

impl FieldSink for FieldWriter<'_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Vec<u8>)) {
        if self.replace {
            self.out.remove(field.name());
        }
        let json = &mut self.out.json;
        if !json.is_empty() {
            json.push(b',');
        }
        let start = json.len();
        write_json_str(json, field.name());
        json.push(b':');
        value(json);
        let end = json.len();
        self.out.keys.push((field.name(), start..end));
    }
}

/// Where a visited field's `"key":value` goes: a span's [`SpanFields`] or an event's line.
trait FieldSink {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Vec<u8>));
}

/// Visits fields as JSON into a [`FieldSink`]: one `Visit` for spans and events.
struct JsonFields<T>(T);

impl<T: FieldSink> Visit for JsonFields<T> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.field(field, |out| write_json_debug(out, value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.field(field, |out| write_json_str(out, value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.field(field, |out| write_json_number(out, value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.field(field, |out| write_json_number(out, value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.field(field, |out| write_json_number(out, value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.field(field, |out| out.extend_from_slice(if value { b"true" } else { b"false" }));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.field(field, |out| write_json_display(out, value));
    }
}

/// Writes an event's fields flat into the line, leaving out [`RESERVED_KEYS`].
struct EventWriter<'a> {
    line: &'a mut Vec<u8>,
}

impl FieldSink for EventWriter<'_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Vec<u8>)) {
        if RESERVED_KEYS.contains(&field.name()) {
            return;
        }
        self.line.push(b',');
        write_json_str(self.line, field.name());
        self.line.push(b':');
        value(self.line);
    }
}

impl<S, W> tracing_subscriber::Layer<S> for JsonLog<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        span.extensions_mut().insert(SpanFields::of(attrs));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<SpanFields>() {
            fields.record(values);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => self.write_line(&mut line, event, &ctx),
            // An event logged while this thread writes a line (from a writer or a Debug impl): its own buffer.
            Err(_) => self.write_line(&mut Vec::new(), event, &ctx),
        });
    }
}

impl<W> JsonLog<W>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fn write_line<S>(&self, line: &mut Vec<u8>, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        line.clear();
        let metadata = event.metadata();
        line.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(line);
        line.extend_from_slice(b"\",\"level\":\"");
        line.extend_from_slice(metadata.level().as_str().as_bytes());
        line.extend_from_slice(b"\",\"target\":");
        write_json_str(line, metadata.target());
        event.record(&mut JsonFields(EventWriter { line }));
        if let Some(scope) = ctx.event_scope(event) {
            write_span_fields(line, scope);
        }
        write_trace_ids(line, event);
        line.extend_from_slice(self.service_name.as_bytes());
        line.extend_from_slice(b"}\n");
        // A log line that cannot be written has nowhere to be reported.
        let _ = self.writer.make_writer_for(metadata).write_all(line);
        if line.capacity() > REUSED_BUFFER_LIMIT {
            *line = Vec::with_capacity(1024);
        }
    }
}

/// `,"span":{…}`: the fields of every span in `scope` (innermost first; a key already written is skipped) and
/// the innermost span's `name`.
fn write_span_fields<S>(line: &mut Vec<u8>, scope: tracing_subscriber::registry::Scope<'_, S>)
where
    S: for<'a> LookupSpan<'a>,
{
    line.extend_from_slice(b",\"span\":{\"name\":");
    let mut written: Vec<&'static str> = Vec::new();
    let mut spans = scope.peekable();
    let mut innermost = true;
    while let Some(span) = spans.next() {
        if innermost {
            write_json_str(line, span.name());
        }
        let extensions = span.extensions();
        let Some(fields) = extensions.get::<SpanFields>() else { continue };
        if innermost && spans.peek().is_none() {
            // One span (an HTTP request's): its fields as they are, no key to compare.
            if !fields.json.is_empty() {
                line.push(b',');
                line.extend_from_slice(&fields.json);
            }
            break;
        }
        innermost = false;
        for (key, range) in &fields.keys {
            if *key == "name" || written.contains(key) {
                continue;
            }
            line.push(b',');
            line.extend_from_slice(&fields.json[range.clone()]);
            written.push(key);
        }
    }
    line.push(b'}');
}

/// `,"trace_id":…,"span_id":…` of the OpenTelemetry span the event belongs to. Without an explicit parent
/// that is the context the OpenTelemetry layer activated when the current span was entered — client spans
/// included (a line written while handling a Kafka record carries that record's trace) — read from a
/// thread-local, with no span lookup.
fn write_trace_ids(line: &mut Vec<u8>, event: &Event<'_>) {
    let context = match event.parent() {
        // The global dispatcher: a scoped one is not reachable from inside its own callbacks.
        Some(id) => tracing::dispatcher::get_default(|dispatch| tracing_opentelemetry::get_otel_context(id, dispatch)),
        None => Some(opentelemetry::Context::current()),
    };
    let Some(context) = context else { return };
    let span = context.span();
    let ids = span.span_context();
    if ids.is_valid() {
        let _ = write!(line, ",\"trace_id\":\"{}\",\"span_id\":\"{}\"", ids.trace_id(), ids.span_id());
    }
}

/// The current time as RFC 3339 in UTC with microseconds (`2026-12-01T18:19:07.566358Z`). The text up to the
/// seconds is kept per thread and reformatted only when the second changes: calendar arithmetic and `write!`
/// on every line cost more than the rest of the line.
fn write_timestamp(line: &mut Vec<u8>) {
    thread_local! {
        static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (seconds, micros) = (since_epoch.as_secs(), since_epoch.subsec_micros());
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != seconds {
            *cached = (seconds, format_second(seconds));
        }
        line.extend_from_slice(&cached.1);
    });
    let mut fraction = *b".000000Z";
    let mut rest = micros;
    for digit in fraction[1..7].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    line.extend_from_slice(&fraction);
}

/// `YYYY-MM-DDTHH:MM:SS` of `seconds` since the Unix epoch, in UTC.
fn format_second(seconds: u64) -> [u8; 19] {
    let mut text = [0_u8; 19];
    let at = i64::try_from(seconds)
        .ok()
        .and_then(|seconds| time::OffsetDateTime::from_unix_timestamp(seconds).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let formatted = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    let bytes = formatted.as_bytes();
    let length = bytes.len().min(text.len());
    text[..length].copy_from_slice(&bytes[..length]);
    text
}

/// A JSON number; serde_json writes non-finite floats as `null`.
fn write_json_number(out: &mut Vec<u8>, value: impl serde::Serialize) {
    if serde_json::to_writer(&mut *out, &value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// `value` as a JSON string.
fn write_json_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    escape_into(out, value);
    out.push(b'"');
}

/// `value`'s `Debug` text as a JSON string (a `%value` field or a message is `Display` through `Debug`).
fn write_json_debug(out: &mut Vec<u8>, value: &dyn fmt::Debug) {
    out.push(b'"');
    let _ = write!(Escaping(out), "{value:?}");
    out.push(b'"');
}

/// `value`'s `Display` text as a JSON string.
fn write_json_display(out: &mut Vec<u8>, value: &dyn fmt::Display) {
    out.push(b'"');
    let _ = write!(Escaping(out), "{value}");
    out.push(b'"');
}

/// A `fmt::Write` escaping what it is given for the inside of a JSON string.
struct Escaping<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        escape_into(self.0, text);
        Ok(())
    }
}

/// Appends `text` escaped for the inside of a JSON string: `"` and `\` backslashed, control characters as
/// `\n`, `\t`… or `\u00XX`. Runs of plain bytes are found eight at a time ([`plain_prefix`]) and copied at once.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    let mut rest = text.as_bytes();
    loop {
        let plain = plain_prefix(rest);
        out.extend_from_slice(&rest[..plain]);
        let Some(&byte) = rest.get(plain) else { return };
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            control => {
                let _ = write!(out, "\\u{control:04x}");
            }
        }
        rest = &rest[plain + 1..];
    }
}

/// Whether `byte` is written as is inside a JSON string.
fn is_plain(byte: u8) -> bool {
    byte >= 0x20 && byte != b'"' && byte != b'\\'
}

/// The length of `bytes`' longest prefix of plain bytes ([`is_plain`]). Log values are mostly plain, so eight
/// bytes are tested at once with the usual bit tricks: for a word `x` and `L` = 0x01 in every byte, `H` = 0x80
/// in every byte, `(x - n·L) & !x & H` is non-zero exactly when some byte of `x` is below `n` (for `n` ≤ 0x80),
/// and a byte equal to `c` is a byte of `x ^ c·L` below 1. Written here because serde_json keeps its escaper
/// private and this is its hot loop: a log line escapes every string it carries.
fn plain_prefix(bytes: &[u8]) -> usize {
    const LOW: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |word: u64, bound: u8| word.wrapping_sub(LOW * u64::from(bound)) & !word & HIGH;
    let mut start = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
        let special =
            below(word, 0x20) | below(word ^ (LOW * u64::from(b'"')), 1) | below(word ^ (LOW * u64::from(b'\\')), 1);
        if special != 0 {
            break;
        }
        start += 8;
    }
    start + bytes[start..].iter().position(|&byte| !is_plain(byte)).unwrap_or(bytes.len() - start)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Lines written by a [`JsonLog`] layer, for assertions.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn parsed(&self) -> Vec<Value> {
            let text = String::from_utf8(self.0.lock().expect("lines").clone()).expect("UTF-8 lines");
            assert!(text.ends_with('\n'), "every line ends with a newline: {text:?}");
            text.lines().map(|line| serde_json::from_str(line).expect("each line is one JSON object")).collect()
        }
    }

    fn logged(service: Option<&str>, body: impl FnOnce()) -> Vec<Value> {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(JsonLog::new(move || writer.clone(), service));
        tracing::subscriber::with_default(subscriber, body);
        lines.parsed()
    }

    #[test]
    fn a_line_has_timestamp_level_target_message_and_the_events_fields_flat() {
        let lines = logged(Some("svc \"quoted\""), || {
            tracing::warn!(count = 3_u64, delta = -2_i64, ratio = 0.5, ok = true, who = "x", shown = %"d", "hello {}", 7);
        });
        let [line] = lines.as_slice() else { panic!("one line: {lines:?}") };
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["message"], "hello 7");
        assert_eq!(line["count"], 3);
        assert_eq!(line["delta"], -2);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["who"], "x");
        assert_eq!(line["shown"], "d");
        assert_eq!(line["service.name"], "svc \"quoted\"");
        assert!(line.get("span").is_none(), "no span, no span object: {line}");
        let timestamp = line["timestamp"].as_str().expect("timestamp");
        let parsed =
            time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339).expect("RFC 3339");
        assert!((time::OffsetDateTime::now_utc() - parsed).whole_seconds().abs() < 60, "{timestamp}");
        assert_eq!(timestamp.len(), "2026-12-01T18:19:07.566358Z".len(), "{timestamp}");
    }

    #[test]
    fn the_second_is_formatted_as_rfc_3339_in_utc() {
        assert_eq!(&format_second(0), b"1970-01-01T00:00:00");
        assert_eq!(&format_second(1_796_149_147), b"2026-12-01T18:19:07");
        assert_eq!(&format_second(951_868_799), b"2000-02-29T23:59:59", "a leap day");
    }

    #[test]
    fn span_fields_recorded_later_are_on_the_line_and_the_innermost_span_wins() {
        let lines = logged(None, || {
            let outer =
                tracing::info_span!("outer", request_id = "r-1", shared = "outer", late = tracing::field::Empty);
            let _outer = outer.enter();
            outer.record("late", 404_u64);
            let inner = tracing::info_span!("inner", shared = "inner", step = 2_u64);
            let _inner = inner.enter();
            inner.record("step", 3_u64);
            tracing::info!("inside");
        });
        let [line] = lines.as_slice() else { panic!("one line: {lines:?}") };
        let span = &line["span"];
        assert_eq!(span["name"], "inner");
        assert_eq!(span["request_id"], "r-1");
        assert_eq!(span["shared"], "inner");
        assert_eq!(span["late"], 404);
        assert_eq!(span["step"], 3, "a field recorded again replaces its value: {span}");
        assert!(line.get("service.name").is_none());
    }

    #[test]
    fn escaping_matches_serde_json_wherever_the_special_byte_falls() {
        let specials = ['"', '\\', '\n', '\r', '\t', '\u{1}', '\u{1f}', '\u{7f}', 'é', '€', ' ', '!', '#', '[', ']'];
        for length in 0..20 {
            for position in 0..length {
                for special in specials {
                    let text: String = (0..length).map(|index| if index == position { special } else { 'a' }).collect();
                    let mut escaped = Vec::new();
                    escape_into(&mut escaped, &text);
                    let expected = serde_json::to_string(&text).expect("json");
                    assert_eq!(format!("\"{}\"", String::from_utf8(escaped).expect("utf-8")), expected, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn strings_are_escaped_and_reserved_keys_are_not_duplicated() {
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
        let lines = logged(None, || {
            let span = tracing::info_span!("s", path = nasty);
            let _entered = span.enter();
            tracing::info!(level = "forged", detail = ?nasty, "{nasty}");
        });
        let [line] = lines.as_slice() else { panic!("one line: {lines:?}") };
        assert_eq!(line["message"], nasty);
        assert_eq!(line["span"]["path"], nasty);
        assert_eq!(line["detail"], format!("{nasty:?}"));
        assert_eq!(line["level"], "INFO", "an event field cannot replace the line's own keys");
    }

    #[test]
    fn lines_carry_the_opentelemetry_trace_of_their_span() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(JsonLog::new(move || writer.clone(), None));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("traced");
            let _entered = span.enter();
            tracing::info!("inside");
        });
        let lines = lines.parsed();
        let [line] = lines.as_slice() else { panic!("one line: {lines:?}") };
        let trace_id = line["trace_id"].as_str().expect("trace_id");
        let span_id = line["span_id"].as_str().expect("span_id");
        assert_eq!((trace_id.len(), span_id.len()), (32, 16), "{line}");
        assert!(trace_id.bytes().all(|b| b.is_ascii_hexdigit()) && trace_id != "0".repeat(32));
    }
}
