//! `/ops`: one HTML page for the people running the service — every dependency's status and check latency,
//! the circuit breakers, the connection pools, the consumer's partitions and lag, the outbox backlog, the
//! dead-letter topic's depth, the version and the uptime. It refreshes itself, needs no JavaScript and loads
//! nothing from elsewhere (its Content-Security-Policy forbids it), so it works from a jump host and in any
//! browser.
//!
//! It is on the ops router, beside `/health` and `/metrics`, without sign-in: it must work while Redis, which
//! holds the sessions, is down. Expose the ops router only on an internal network (docs/observability.md). It
//! shows no secrets (addresses are the redacted ones the clients log) and no personal data; every text is
//! escaped.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use infra::health::{ComponentHealth, HealthReport, PoolStats, Status};
use infra::kafka::{ConsumerSnapshot, ConsumerState, KafkaClient};
use infra::postgres::PostgresClient;
use infra::redis::RedisClient;
use infra::resilience::BreakerState;
use time::OffsetDateTime;
use time::macros::format_description;

use super::AppState;
use crate::outbox::relay::{Backlog, BacklogSnapshot};

/// How often the page reloads itself, in seconds.
pub const REFRESH_SECONDS: u32 = 10;

/// What the page reads besides the health registry: handles on the clients and on the workers' shared state,
/// read without a round trip (except the dead-letter topic's watermarks), so the page renders while a
/// dependency is down.
pub struct OpsSources {
    /// The service's name (OTEL_SERVICE_NAME).
    pub service: String,
    /// The service's version (OTEL_SERVICE_VERSION).
    pub version: String,
    /// When the service was built: the uptime's origin.
    pub started: Instant,
    /// Its pool and breaker.
    pub postgres: PostgresClient,
    /// Its pool and breaker.
    pub redis: RedisClient,
    /// Reads the dead-letter topic's watermarks.
    pub kafka: KafkaClient,
    /// KAFKA_DLQ_TOPIC.
    pub dlq_topic: String,
    /// Bounds the dead-letter topic's look-up (HEALTH_CHECK_TIMEOUT).
    pub dlq_timeout: Duration,
    /// The event consumer's group membership, assignment and lag.
    pub consumer: ConsumerState,
    /// The outbox relay's last backlog measurement.
    pub backlog: Backlog,
}

/// Everything the page shows, gathered at one moment.
pub struct OpsView {
    /// Service name.
    pub service: String,
    /// Service version.
    pub version: String,
    /// Time since start.
    pub uptime: Duration,
    /// When this view was gathered.
    pub now: OffsetDateTime,
    /// The health registry's report: aggregate status, and per component status, latency and error.
    pub health: HealthReport,
    /// Breaker state per dependency.
    pub breakers: Vec<(&'static str, BreakerState)>,
    /// Pool occupancy per dependency.
    pub pools: Vec<(&'static str, PoolStats)>,
    /// The event consumer.
    pub consumer: ConsumerSnapshot,
    /// The outbox backlog; `None` before the relay's first measurement or after a failed one.
    pub backlog: Option<BacklogSnapshot>,
    /// The dead-letter topic and the records it holds, or why they could not be counted.
    pub dlq: (String, Result<i64, String>),
}

impl OpsView {
    /// Checks every dependency (through the registry's cache) and reads the rest, concurrently.
    pub async fn gather(state: &AppState) -> OpsView {
        let sources = &state.ops;
        let dlq_count = async {
            let count = sources.kafka.topic_record_count(&sources.dlq_topic, sources.dlq_timeout);
            match tokio::time::timeout(sources.dlq_timeout, count).await {
                Ok(Ok(count)) => Ok(count),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!("no answer within {:?}", sources.dlq_timeout)),
            }
        };
        let (health, dlq) = tokio::join!(state.health.check_all(), dlq_count);
        OpsView {
            service: sources.service.clone(),
            version: sources.version.clone(),
            uptime: sources.started.elapsed(),
            now: OffsetDateTime::now_utc(),
            health,
            breakers: vec![
                ("postgres", sources.postgres.breaker().state()),
                ("redis", sources.redis.breaker().state()),
            ],
            pools: vec![("postgres", sources.postgres.pool_stats()), ("redis", sources.redis.pool_stats())],
            consumer: sources.consumer.snapshot(),
            backlog: sources.backlog.snapshot(),
            dlq: (sources.dlq_topic.clone(), dlq),
        }
    }
}

/// The page. Always 200: a page that reports an outage is working.
#[utoipa::path(get, path = "/ops", tag = "operations", security(()),
    responses(
        (status = 200, description = "The ops page: dependencies, breakers, pools, consumer lag, outbox, dead \
            letters, version and uptime; refreshes itself every 10 s. Internal only.",
            body = String, content_type = "text/html; charset=utf-8"),
    ))]
pub async fn page(State(state): State<AppState>) -> Response {
    let html = render(&OpsView::gather(&state).await);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Nothing but the page itself: no scripts, no images, fonts or styles from elsewhere.
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

/// `text` safe inside HTML elements and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole document.
pub fn render(view: &OpsView) -> String {
    let status = status_name(view.health.status);
    let mut html = String::with_capacity(8 * 1024);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{service} ops: {status}</title><style>{STYLE}</style></head><body>",
        service = escape(&view.service),
    );
    header_section(&mut html, view);
    html.push_str("<main>");
    dependencies_section(&mut html, &view.health);
    breakers_section(&mut html, &view.breakers);
    pools_section(&mut html, &view.pools);
    consumer_section(&mut html, &view.consumer);
    outbox_section(&mut html, view.backlog, view.now);
    dlq_section(&mut html, &view.dlq);
    html.push_str("</main></body></html>\n");
    html
}

fn header_section(html: &mut String, view: &OpsView) {
    let status = status_name(view.health.status);
    let now =
        view.now.format(format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC")).unwrap_or_default();
    let _ = write!(
        html,
        "<header><h1>{service} <span class=\"badge {status}\">{status}</span></h1>\
         <dl class=\"facts\"><div><dt>Version</dt><dd>{version}</dd></div>\
         <div><dt>Uptime</dt><dd>{uptime}</dd></div>\
         <div><dt>Rendered</dt><dd>{now}</dd></div>\
         <div><dt>Refresh</dt><dd>every {REFRESH_SECONDS} s</dd></div></dl></header>",
        service = escape(&view.service),
        version = escape(&view.version),
        uptime = format_uptime(view.uptime),
    );
}

fn dependencies_section(html: &mut String, health: &HealthReport) {
    html.push_str(
        "<section class=\"wide\"><h2>Dependencies</h2><table><thead><tr><th>Component</th><th>Status</th>\
         <th class=\"num\">Check latency</th><th>Detail</th></tr></thead><tbody>",
    );
    for (name, component) in &health.components {
        let status = status_name(component.status);
        let _ = write!(
            html,
            "<tr><td>{name}</td><td><span class=\"badge {status}\">{status}</span></td>\
             <td class=\"num\">{latency:.1} ms</td><td class=\"detail\">{detail}</td></tr>",
            name = escape(name),
            latency = component.latency_ms,
            detail = escape(&component_detail(component)),
        );
    }
    html.push_str("</tbody></table></section>");
}

/// Why a component is down, else where it is.
fn component_detail(component: &ComponentHealth) -> String {
    match &component.error {
        Some(error) => error.clone(),
        None => component.details.get("address").and_then(|a| a.as_str()).unwrap_or_default().to_string(),
    }
}

fn breakers_section(html: &mut String, breakers: &[(&'static str, BreakerState)]) {
    html.push_str(
        "<section><h2>Circuit breakers</h2><table><thead><tr><th>Guards</th><th>State</th></tr></thead><tbody>",
    );
    for (name, state) in breakers {
        let (text, class) = match state {
            BreakerState::Closed => ("closed", "up"),
            BreakerState::HalfOpen => ("half-open", "degraded"),
            BreakerState::Open => ("open", "down"),
        };
        let _ = write!(html, "<tr><td>{name}</td><td><span class=\"badge {class}\">{text}</span></td></tr>");
    }
    html.push_str("</tbody></table></section>");
}

fn pools_section(html: &mut String, pools: &[(&'static str, PoolStats)]) {
    html.push_str(
        "<section><h2>Connection pools</h2><table><thead><tr><th>Pool</th><th class=\"num\">In use</th>\
         <th class=\"num\">Idle</th><th class=\"num\">Max</th><th>Usage</th></tr></thead><tbody>",
    );
    for (name, pool) in pools {
        let in_use = pool.size.saturating_sub(pool.idle);
        let percent = if pool.max_size == 0 { 0 } else { (in_use * 100).div_ceil(pool.max_size).min(100) };
        let _ = write!(
            html,
            "<tr><td>{name}</td><td class=\"num\">{in_use}</td><td class=\"num\">{idle}</td>\
             <td class=\"num\">{max}</td><td class=\"nowrap\"><span class=\"bar\"><span style=\"width:{percent}%\"></span></span> \
             {percent}%</td></tr>",
            idle = pool.idle,
            max = pool.max_size,
        );
    }
    html.push_str("</tbody></table></section>");
}

fn consumer_section(html: &mut String, consumer: &ConsumerSnapshot) {
    let membership = match (consumer.closed, consumer.member) {
        (true, _) => ("left the group", "down"),
        (false, true) => ("member", "up"),
        (false, false) => ("joining", "degraded"),
    };
    let group = format!("{} / {}", consumer.group_state, consumer.join_state);
    let _ = write!(
        html,
        "<section><h2>Kafka consumer</h2><dl class=\"facts\"><div><dt>Topic</dt><dd>{topic}</dd></div>\
         <div><dt>Group</dt><dd><span class=\"badge {class}\">{text}</span> {group}</dd></div>\
         <div><dt>Total lag</dt><dd>{total}</dd></div></dl>\
         <table><thead><tr><th>Assigned partition</th><th class=\"num\">Lag (records)</th></tr></thead><tbody>",
        topic = escape(&consumer.topic),
        class = membership.1,
        text = membership.0,
        group = escape(&group),
        total = consumer.total_lag,
    );
    if consumer.assigned_partitions.is_empty() {
        html.push_str("<tr><td colspan=\"2\" class=\"muted\">no partition assigned</td></tr>");
    }
    for partition in &consumer.assigned_partitions {
        let lag = consumer.lag.get(partition).map_or_else(|| "unknown".to_string(), i64::to_string);
        let _ = write!(html, "<tr><td>{partition}</td><td class=\"num\">{lag}</td></tr>");
    }
    html.push_str("</tbody></table></section>");
}

fn outbox_section(html: &mut String, backlog: Option<BacklogSnapshot>, now: OffsetDateTime) {
    html.push_str("<section><h2>Outbox</h2><dl class=\"facts\">");
    match backlog {
        Some(snapshot) => {
            let _ = write!(
                html,
                "<div><dt>Pending events</dt><dd>{pending}</dd></div>\
                 <div><dt>Oldest pending</dt><dd>{age}</dd></div>\
                 <div><dt>Parked (<code>rust-app outbox parked</code>)</dt><dd>{parked}</dd></div>",
                pending = snapshot.pending,
                age = format_uptime(snapshot.oldest_age(now)),
                parked = match snapshot.parked {
                    0 => "0".to_string(),
                    parked => format!("<span class=\"attention\">{parked}</span>"),
                },
            );
        }
        None => html.push_str(
            "<div><dt>Pending events</dt><dd class=\"muted\">unknown (not measured yet, or PostgreSQL unreachable)</dd></div>",
        ),
    }
    html.push_str("</dl></section>");
}

fn dlq_section(html: &mut String, (topic, count): &(String, Result<i64, String>)) {
    let depth = match count {
        Ok(0) => "0".to_string(),
        Ok(count) => format!("<span class=\"attention\">{count}</span>"),
        Err(error) => format!("<span class=\"muted\">unknown: {}</span>", escape(error)),
    };
    let _ = write!(
        html,
        "<section><h2>Dead-letter topic</h2><dl class=\"facts\"><div><dt>Topic</dt><dd>{topic}</dd></div>\
         <div><dt>Records held</dt><dd>{depth}</dd></div></dl>\
         <p class=\"muted\">Inspect with <code>rust-app dlq list</code>, replay with <code>rust-app dlq replay</code>.</p>\
         </section>",
        topic = escape(topic),
    );
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Up => "up",
        Status::Degraded => "degraded",
        Status::Down => "down",
    }
}

/// `3d 4h 5m 6s`, leading zero units left out.
fn format_uptime(duration: Duration) -> String {
    let total = duration.as_secs();
    let parts = [(total / 86_400, "d"), (total / 3_600 % 24, "h"), (total / 60 % 60, "m"), (total % 60, "s")];
    let first = parts.iter().position(|(value, _)| *value > 0).unwrap_or(parts.len() - 1);
    parts[first..].iter().map(|(value, unit)| format!("{value}{unit}")).collect::<Vec<_>>().join(" ")
}

/// The page's look: system fonts, cards on a grid, coloured status badges.
const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#1f2933;background:#eef1f5}\
header{background:#1f2933;color:#f5f7fa;padding:18px 28px}\
h1{margin:0 0 10px;font-size:24px;font-weight:600}\
header .facts dt{color:#9aa5b1}\
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));align-items:start;gap:18px;padding:22px 28px}\
section{background:#fff;border-radius:8px;padding:14px 18px;box-shadow:0 1px 3px rgba(0,0,0,.12)}\
section.wide{grid-column:1/-1}\
h2{margin:0 0 10px;font-size:16px;font-weight:600;color:#323f4b}\
table{width:100%;border-collapse:collapse}\
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e4e7eb;vertical-align:top}\
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#616e7c;font-weight:600;white-space:nowrap}\
.nowrap{white-space:nowrap}\
.attention{color:#c92a2a;font-weight:700}\
.num{text-align:right;font-variant-numeric:tabular-nums}\
.detail{color:#52606d;word-break:break-word}\
.facts{display:flex;flex-wrap:wrap;gap:8px 28px;margin:0 0 10px}\
.facts div{display:flex;flex-direction:column}\
dt{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#616e7c}\
dd{margin:0;font-weight:500}\
.badge{display:inline-block;min-width:64px;text-align:center;padding:1px 9px;border-radius:10px;font-size:13px;font-weight:600;color:#fff;vertical-align:middle}\
.badge.up{background:#2f9e44}.badge.degraded{background:#e67700}.badge.down{background:#c92a2a}\
.bar{display:inline-block;width:80px;height:9px;background:#e4e7eb;border-radius:5px;overflow:hidden;vertical-align:middle}\
.bar span{display:block;height:100%;background:#3b82c4}\
.muted{color:#7b8794}\
code{font:13px ui-monospace,'DejaVu Sans Mono',monospace;background:#f0f4f8;padding:1px 4px;border-radius:3px}";

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn view(health: HealthReport) -> OpsView {
        OpsView {
            service: "rust-app".into(),
            version: "1.2.3".into(),
            uptime: Duration::from_secs(3_725),
            now: OffsetDateTime::UNIX_EPOCH,
            health,
            breakers: vec![("postgres", BreakerState::Closed), ("redis", BreakerState::Open)],
            pools: vec![("postgres", PoolStats { size: 4, idle: 1, max_size: 10 })],
            consumer: ConsumerSnapshot {
                topic: "events".into(),
                member: true,
                assigned_partitions: vec![0, 2],
                lag: BTreeMap::from([(0, 5), (2, 0)]),
                total_lag: 5,
                ..ConsumerSnapshot::default()
            },
            backlog: None,
            dlq: ("events.dlq".into(), Err("broker <down> & \"gone\"".into())),
        }
    }

    fn component(status: Status, error: Option<&str>) -> ComponentHealth {
        ComponentHealth { status, latency_ms: 1.25, error: error.map(String::from), details: Default::default() }
    }

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape(r#"<script>alert('x') & "y"</script>"#),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        assert_eq!(escape("plain text"), "plain text");
    }

    #[test]
    fn every_text_from_outside_is_escaped() {
        let health = HealthReport {
            status: Status::Degraded,
            components: BTreeMap::from([("redis", component(Status::Down, Some("<img src=x onerror=alert(1)>")))]),
        };
        let html = render(&view(health));
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("broker &lt;down&gt; &amp; &quot;gone&quot;"));
        assert!(!html.contains("<script"), "no script at all");
    }

    #[test]
    fn the_page_shows_each_section_and_refreshes_itself() {
        let health = HealthReport {
            status: Status::Up,
            components: BTreeMap::from([("postgres", component(Status::Up, None))]),
        };
        let html = render(&view(health));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        for text in [
            "Dependencies",
            "Circuit breakers",
            "Connection pools",
            "Kafka consumer",
            "Outbox",
            "Dead-letter topic",
            "1h 2m 5s",
            "1.2.3",
        ] {
            assert!(html.contains(text), "{text} in {html}");
        }
        assert!(html.contains("<td>0</td><td class=\"num\">5</td>"), "partition 0's lag");
        assert!(html.contains(">open</span>"), "the Redis breaker");
        assert!(html.contains("width:30%"), "3 of 10 postgres connections in use");
    }

    #[test]
    fn uptime_leaves_out_leading_zero_units() {
        assert_eq!(format_uptime(Duration::from_secs(0)), "0s");
        assert_eq!(format_uptime(Duration::from_secs(61)), "1m 1s");
        assert_eq!(format_uptime(Duration::from_secs(90_061)), "1d 1h 1m 1s");
    }
}
