//! `/metrics`: valid Prometheus text exposition, carrying every family docs/metrics.md documents once the
//! service has done the work that records them, and no unbounded label values.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use infra::config::Sources;
use infra::kafka::KafkaProducer;
use infra::settings::Config;
use serde_json::json;

use crate::helpers::{TestApp, spawn_admin_app, unique};

/// Families recorded only by features the service does not use yet, with the reason.
const NOT_USED_BY_THE_SERVICE: [(&str, &str); 0] = [];

/// One sample line: `name{label="value",...} value`. Returns the name and the label pairs.
fn parse_sample(line: &str) -> Result<(String, Vec<(String, String)>), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    let valid_name = name
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()));
    if name.is_empty() || !valid_name {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, value) = match line[name_end..].strip_prefix('{') {
        Some(rest) => {
            let close = rest.rfind('}').ok_or("unclosed labels")?;
            (parse_labels(&rest[..close])?, rest[close + 1..].trim())
        }
        None => (Vec::new(), line[name_end..].trim()),
    };
    let value = value.split(' ').next().unwrap_or_default();
    if !matches!(value, "+Inf" | "-Inf" | "NaN") && value.parse::<f64>().is_err() {
        return Err(format!("bad value {value:?}"));
    }
    Ok((name.to_string(), labels))
}

fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").ok_or(format!("bad label in {text:?}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => value.push(chars.next().ok_or("dangling escape")?.1),
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {text:?}")),
            }
        };
        labels.push((key.to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(labels)
}

/// The documented families: the first cell of every table row of docs/metrics.md.
fn documented_families() -> Vec<String> {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md")).expect("docs");
    docs.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(String::from)
        .collect()
}

async fn metrics_text(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ASCII").to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    response.text().await.expect("body")
}

/// Polls /metrics until `done` holds, for at most a minute.
async fn metrics_until(app: &TestApp, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics_text(app).await;
        if done(&text) || Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A service that has used every dependency (PostgreSQL, Redis's cache, Kafka's producer, consumer and
/// dead-letter topic, an HTTP 404), and its `/metrics` once the consumer has caught up. The event id it
/// published is returned too (it must never become a label).
async fn scrape_after_using_every_dependency() -> (TestApp, String, String) {
    let topic = unique("metrics");
    let overrides = [("KAFKA_TOPIC", topic.as_str()), ("KAFKA_MAX_RETRIES", "1"), ("KAFKA_RETRY_BACKOFF", "10ms")];
    let app = spawn_admin_app(&overrides).await;
    app.eventually("/health", Duration::from_secs(30), |status, _| status == 200).await;
    let event_id = uuid::Uuid::new_v4().to_string();
    let published = app
        .client
        .post(format!("{}/events", app.address))
        .json(&json!({"type": "metrics.test", "key": event_id, "data": {}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 202);
    // A record that is not an event: the consumer dead-letters it.
    let env = [("KAFKA_BROKERS", "127.0.0.1:9092"), ("KAFKA_TOPIC", topic.as_str())];
    let kafka = Config::from_sources(&Sources::from_env_pairs(&env)).expect("config").kafka;
    let producer = KafkaProducer::connect_lazy(&kafka).expect("producer");
    producer.produce(&topic, Some(b"poison"), b"not json", &[]).await.expect("poison delivered");
    app.get(&format!("/events/{}", uuid::Uuid::new_v4())).await;
    // A cache-aside read: GET /users/{id}.
    let user = app.create_user("metrics").await;
    app.get(&format!("/users/{}", user["id"].as_str().expect("id"))).await;

    let dead_lettered = format!("kafka_dead_lettered_total{{topic=\"{topic}\"}} 1");
    let text = metrics_until(&app, |text| text.contains(&dead_lettered) && text.contains("kafka_consumer_lag{")).await;
    (app, text, event_id)
}

#[tokio::test]
async fn metrics_are_valid_exposition_with_every_documented_family_and_bounded_labels() {
    let (app, text, event_id) = scrape_after_using_every_dependency().await;

    let mut names = BTreeSet::new();
    for line in text.lines().filter(|line| !line.trim().is_empty() && !line.starts_with('#')) {
        let (name, labels) = parse_sample(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        for (key, value) in &labels {
            assert!(!(key == "route" && value.contains(&event_id)), "a raw path became a label: {line}");
            assert!(value.len() <= 128, "an unbounded-looking label value: {line}");
        }
        names.insert(name);
    }
    let mut missing = Vec::new();
    for family in documented_families() {
        let present =
            [family.clone(), format!("{family}_bucket"), format!("{family}_count")].iter().any(|n| names.contains(n));
        let excused = NOT_USED_BY_THE_SERVICE.iter().any(|(name, _)| *name == family);
        if present == excused {
            missing.push(if excused { format!("{family} (excused but present: update the list)") } else { family });
        }
    }
    assert!(missing.is_empty(), "documented families missing from /metrics: {missing:?}\n{text}");
    assert!(
        text.contains(
            "http_request_duration_seconds_bucket{method=\"GET\",route=\"/events/{id}\",status=\"404\",le=\"0.005\"}"
        ),
        "{text}"
    );
    app.stop().await;
}

#[test]
fn every_metric_the_alert_rules_use_is_documented() {
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus/alerts.yml"))
        .expect("alert rules");
    let documented = documented_families();
    let mut used = BTreeSet::new();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        let prefixes =
            ["postgres_", "redis_", "kafka_", "http_", "outbox_", "circuit_breaker_", "process_", "rust_app_"];
        if prefixes.iter().any(|prefix| word.starts_with(prefix)) {
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| word.strip_suffix(s)).unwrap_or(word);
            used.insert(family.to_string());
        }
    }
    assert!(used.len() >= 10, "the rules use the service's metrics: {used:?}");
    let undocumented: Vec<&String> = used.iter().filter(|name| !documented.contains(name)).collect();
    assert!(undocumented.is_empty(), "alert rules use undocumented metrics: {undocumented:?}");
}

/// promtool, from Debian's prometheus package: scripts/check-alerts (run by scripts/test before the tests)
/// unpacks it there.
fn promtool() -> PathBuf {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.stack/bin/promtool"));
    assert!(path.exists(), "no {}: run scripts/check-alerts (scripts/test does) to fetch promtool", path.display());
    path
}

/// What `promtool check metrics` prints about `text` (its lint: HELP, units, counter names …), with its status.
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("scrape written to promtool");
    let output = child.wait_with_output().expect("promtool finished");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

/// The families of `text`'s samples that have no `# HELP` line with text (a histogram's `_bucket`, `_sum` and
/// `_count` belong to its family).
fn families_without_help(text: &str) -> BTreeSet<String> {
    let mut helped = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ')
                && !help.trim().is_empty()
            {
                helped.insert(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
            && matches!(kind, "histogram" | "summary")
        {
            histograms.insert(name.to_string());
        }
    }
    let samples = text.lines().filter(|line| !line.trim().is_empty() && !line.starts_with('#'));
    samples
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(|name| {
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix));
            match base {
                Some(base) if histograms.contains(base) => base.to_string(),
                _ => name.to_string(),
            }
        })
        .filter(|family| !helped.contains(family))
        .collect()
}

#[test]
fn a_series_without_help_is_found() {
    let text = "# HELP a_total Counted.\n# TYPE a_total counter\na_total 1\n# TYPE b_seconds histogram\n\
                b_seconds_bucket{le=\"+Inf\"} 1\nb_seconds_sum 1\nb_seconds_count 1\nc 2\n";
    assert_eq!(families_without_help(text), BTreeSet::from(["b_seconds".to_string(), "c".to_string()]));
}

#[test]
fn promtool_reports_a_metric_without_help() {
    let (_, printed) = promtool_check_metrics("# TYPE undescribed gauge\nundescribed 1\n");
    assert!(printed.contains("no help text"), "promtool's lint is what the live check relies on: {printed}");
}

#[tokio::test]
async fn a_live_scrape_has_help_on_every_family_and_passes_promtool_check_metrics_silently() {
    let (app, text, _) = scrape_after_using_every_dependency().await;
    let undescribed = families_without_help(&text);
    assert!(
        undescribed.is_empty(),
        "series without HELP: {undescribed:?}. Describe each in infra::telemetry::catalog::INFRA_METRICS or \
         app::metric_catalog::APP_METRICS (and document it in docs/metrics.md)"
    );
    for family in
        ["circuit_breaker_state", "process_cpu_seconds_total", "process_resident_memory_bytes", "rust_app_build_info"]
    {
        assert!(text.contains(&format!("# HELP {family} ")), "{family} is missing:\n{text}");
    }
    let build = format!("rust_app_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&build), "{build} missing");
    for state in ["closed", "open", "half_open"] {
        let series = format!("circuit_breaker_state{{name=\"postgres\",state=\"{state}\"}}");
        assert!(text.contains(&series), "{series} missing");
    }
    let (passed, printed) = promtool_check_metrics(&text);
    assert!(passed && printed.trim().is_empty(), "promtool check metrics:\n{printed}\n--- scrape ---\n{text}");
    app.stop().await;
}
