//! Telemetry of the running binary: one trace from an HTTP request to the consumer's database write, exported
//! over OTLP to an in-test receiver; log lines carrying the trace and request ids; an unreachable collector
//! neither failing requests nor flooding the logs.

use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::otlp::{OtlpReceiver, ReceivedSpan};

use crate::helpers::{ServeProcess, free_port, sign_up_at, unique};

/// The batch processor's standard knob: export every 100 ms instead of every 5 s.
const EXPORT_OFTEN: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

/// The JSON log lines of `logs` (the service logs JSON by default).
fn json_lines(logs: &str) -> Vec<Value> {
    logs.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// Polls `receiver` until `done` accepts the spans of `trace_id`, for at most `limit`.
async fn spans_of(
    receiver: &OtlpReceiver,
    trace_id: &str,
    done: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans: Vec<ReceivedSpan> = receiver.spans().into_iter().filter(|s| s.trace_id == trace_id).collect();
        if done(&spans) || Instant::now() >= deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find<'a>(spans: &'a [ReceivedSpan], what: &str, matches: impl Fn(&ReceivedSpan) -> bool) -> &'a ReceivedSpan {
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    spans.iter().find(|s| matches(s)).unwrap_or_else(|| panic!("no {what} span among {names:?}"))
}

/// `span`'s value of each attribute in `expected` (`None` = present, any value), and what is missing or differs.
fn mismatches(span: &ReceivedSpan, expected: &[(&str, Option<&str>)]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, value) in expected {
        match (span.attributes.get(*name), value) {
            (None, _) => found.push(format!("{}: no {name}", span.name)),
            (Some(actual), Some(value)) if actual != value => found.push(format!("{}: {name} = {actual:?}", span.name)),
            _ => {}
        }
    }
    found
}

/// The attribute names (and well-known values) of OpenTelemetry's stable HTTP and database conventions and of
/// its messaging conventions for Kafka, on a captured span of each kind; and none of the names they replaced.
fn assert_conventions(
    server: &ReceivedSpan,
    send: &ReceivedSpan,
    process: &ReceivedSpan,
    redis: &ReceivedSpan,
    insert: &ReceivedSpan,
) {
    let any = None;
    let mut found = mismatches(
        server,
        &[
            ("http.request.method", Some("POST")),
            ("http.route", Some("/events")),
            ("url.path", Some("/events")),
            ("url.scheme", Some("http")),
            ("client.address", Some("127.0.0.1")),
            ("user_agent.original", Some("telemetry-test/1.0")),
            ("http.response.status_code", Some("202")),
        ],
    );
    let database = [("db.namespace", any), ("server.address", any), ("server.port", any)];
    found.extend(mismatches(insert, &[("db.system.name", Some("postgresql")), ("db.query.text", any)]));
    found.extend(mismatches(insert, &[("db.response.returned_rows", any)]));
    found.extend(mismatches(insert, &database));
    found.extend(mismatches(redis, &[("db.operation.name", any)]));
    found.extend(mismatches(redis, &database));
    let kafka = [
        ("messaging.system", Some("kafka")),
        ("messaging.destination.name", any),
        ("messaging.destination.partition.id", any),
        ("messaging.kafka.offset", any),
        ("server.address", any),
        ("server.port", Some("9092")),
    ];
    found.extend(mismatches(
        send,
        &[("messaging.operation.type", Some("send")), ("messaging.operation.name", Some("send"))],
    ));
    found.extend(mismatches(send, &kafka));
    found.extend(mismatches(
        process,
        &[("messaging.operation.type", Some("process")), ("messaging.consumer.group.name", any)],
    ));
    found.extend(mismatches(process, &kafka));
    let replaced = [
        "db.system",
        "db.operation",
        "db.statement",
        "db.name",
        "db.response.rows",
        "db.redis.key",
        "db.redis.database_index",
        "messaging.kafka.destination.partition",
        "messaging.kafka.message.offset",
        "messaging.kafka.message.key",
    ];
    for span in [server, send, process, redis, insert] {
        found.extend(
            replaced
                .iter()
                .filter(|old| span.attributes.contains_key(**old))
                .map(|old| format!("{}: {old}", span.name)),
        );
    }
    assert!(found.is_empty(), "spans off the conventions: {found:#?}");
    let text = insert.attributes["db.query.text"].as_str();
    assert!(text.starts_with("INSERT") && text.contains("$1"), "parameterised SQL, never values: {text}");
}

#[tokio::test]
async fn one_request_is_one_trace_from_http_through_redis_and_kafka_to_the_consumers_database_write() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_SERVICE_NAME", "rust-app-e2e"), EXPORT_OFTEN];
    let service = ServeProcess::start(&env).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request_id = unique("e2e-request");

    // Publishing needs a session; signing up and in are requests (and traces) of their own.
    let publisher = sign_up_at(&service.address, "Tracer").await;

    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/events", service.address))
        .bearer_auth(&publisher.token)
        .header("user-agent", "telemetry-test/1.0")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("x-request-id", &request_id)
        .json(&serde_json::json!({"type": "user.created", "key": "user-1", "data": {"name": "Ada"}}))
        .send()
        .await
        .expect("POST /events");
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], request_id.as_str());
    let published: Value = response.json().await.expect("JSON");

    // Spans arrive as they end, in batches: wait for all of them, not just the last one to start.
    let recorded = |spans: &[ReceivedSpan]| {
        spans.iter().any(|s| s.attributes.get("db.operation.name").is_some_and(|o| o == "INSERT"))
            && spans.iter().any(|s| s.name == "POST /events")
            && spans.iter().any(|s| s.name.starts_with("send "))
            && spans.iter().any(|s| s.name.starts_with("process "))
    };
    let spans = spans_of(&receiver, trace_id, recorded).await;
    let server = find(&spans, "HTTP server", |s| s.name == "POST /events");
    assert_eq!(server.parent_span_id, "00f067aa0ba902b7", "the caller's trace continues");
    assert_eq!(server.attributes.get("http.route").map(String::as_str), Some("/events"));
    assert_eq!(server.attributes.get("http.response.status_code").map(String::as_str), Some("202"));
    assert_eq!(server.attributes.get("request_id"), Some(&request_id));
    assert_eq!(server.service_name, "rust-app-e2e");
    let redis = find(&spans, "Redis", |s| s.attributes.get("db.system.name").is_some_and(|v| v == "redis"));
    let publish = find(&spans, "Kafka send", |s| s.name.starts_with("send "));
    let process = find(&spans, "Kafka process", |s| s.name.starts_with("process "));
    let insert =
        find(&spans, "PostgreSQL INSERT", |s| s.attributes.get("db.operation.name").is_some_and(|o| o == "INSERT"));
    assert_eq!(redis.parent_span_id, server.span_id, "the rate limiter and the session check run inside the request");
    assert_eq!(publish.parent_span_id, server.span_id, "publishing runs inside the request");
    assert_eq!(process.parent_span_id, publish.span_id, "the consumer continues the producer's span");
    assert_eq!(insert.parent_span_id, process.span_id, "the event log write runs inside the processing");
    assert_eq!(process.attributes.get("correlation_id"), Some(&request_id), "the request id travels as correlation id");
    assert_conventions(server, publish, process, redis, insert);
    for span in &spans {
        let leaked = span.attributes.iter().find(|(_, value)| value.contains(publisher.token.as_str()));
        assert!(leaked.is_none(), "the session id reached span {}: {leaked:?}", span.name);
    }
    assert_eq!(
        process.attributes.get("messaging.kafka.offset").map(String::as_str),
        Some(published["offset"].to_string().as_str())
    );

    let logs = service.stop().await;
    let lines = json_lines(&logs);
    let finished = lines
        .iter()
        .find(|l| l["message"] == "request finished" && l["span"]["request_id"] == request_id.as_str())
        .unwrap_or_else(|| panic!("no request log line:\n{logs}"));
    assert_eq!(finished["trace_id"], trace_id);
    assert_eq!(finished["service.name"], "rust-app-e2e");
    // The service's relay may also publish other tests' user events from the shared database: pick this one.
    let consumed = lines
        .iter()
        .find(|l| l["message"] == "event recorded" && l["event_id"] == published["id"])
        .unwrap_or_else(|| panic!("no consumer log:\n{logs}"));
    assert_eq!(consumed["trace_id"], trace_id, "the consumer's log line belongs to the request's trace");
}

#[tokio::test]
async fn an_unreachable_collector_fails_no_request_and_is_reported_once() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let token = "0tlp-t0ken-must-not-leak";
    let headers = format!("authorization=Bearer%20{token}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", closed.as_str()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1"),
        ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
        EXPORT_OFTEN,
    ];
    let service = ServeProcess::start(&env).await;
    let client = reqwest::Client::new();
    for n in 0..30 {
        let response = client.get(format!("{}/livez", service.address)).send().await.expect("request");
        assert_eq!(response.status(), 200, "request {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several export rounds (every 100 ms) have failed by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = service.stop().await;
    assert_eq!(logs.matches("cannot export traces").count(), 1, "reported once:\n{logs}");
    assert!(!logs.contains(token), "the exporter's credentials reached the logs:\n{logs}");
}
