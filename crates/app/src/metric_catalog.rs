//! What `/metrics` says of every metric the service itself registers (type, unit, `# HELP`), and the build
//! information series. Described at start by [`describe`], after the infra crate's own table
//! (`infra::telemetry::catalog::INFRA_METRICS`).
//!
//! **Adding a metric to the service**: its name as a `pub const` beside the code that records it, its
//! [`Description`] in [`APP_METRICS`] below, and a line in docs/metrics.md. The `/metrics` test
//! (tests/api/metrics.rs) fails for any series without HELP, and the unit test below checks every table
//! against Prometheus' naming rules and the docs.

use infra::telemetry::catalog::{Description, describe as describe_all};
use metrics::Unit;

use crate::events::retention::PRUNED_METRIC;
use crate::http::observe::{REQUEST_DURATION, REQUESTS_TOTAL};
use crate::outbox::metrics::names as outbox;
use crate::serve::{CONNECTIONS_CLOSED, CONNECTIONS_OPEN};
use crate::users::password::REJECTIONS;

/// Gauge, always 1: the running build, as labels (`version`). Join it onto other series to tell versions
/// apart during a rollout.
pub const BUILD_INFO: &str = "rust_app_build_info";

/// Every metric of the service (the infra crate's are in `infra::telemetry::catalog::INFRA_METRICS`).
pub const APP_METRICS: &[Description] = &[
    // HTTP (`app::http`, `app::serve`)
    Description::counter(REQUESTS_TOTAL, Unit::Count, "HTTP requests handled, by method, route template and status."),
    Description::histogram(
        REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request duration from arrival to response, by method, route template and status.",
    ),
    Description::gauge(CONNECTIONS_OPEN, Unit::Count, "Client connections open now."),
    Description::counter(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "Client connections the server closed before the client did, by reason.",
    ),
    Description::counter(
        REJECTIONS,
        Unit::Count,
        "Registrations, logins and password changes refused with 503 because password hashing was saturated.",
    ),
    // Outbox relay (`app::outbox`)
    Description::gauge(outbox::PENDING, Unit::Count, "Outbox events committed and not yet acknowledged by Kafka."),
    Description::gauge(
        outbox::OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest pending outbox event in seconds (0 when none is pending).",
    ),
    Description::counter(outbox::PUBLISHED, Unit::Count, "Outbox events acknowledged by Kafka."),
    Description::counter(
        outbox::PUBLISH_FAILURES,
        Unit::Count,
        "Outbox sends Kafka did not acknowledge (each retry counts).",
    ),
    Description::counter(outbox::PRUNED, Unit::Count, "Sent outbox events deleted once older than OUTBOX_RETENTION."),
    Description::gauge(
        outbox::PARKED,
        Unit::Count,
        "Outbox events parked after OUTBOX_MAX_ATTEMPTS rejections, waiting for an operator.",
    ),
    Description::counter(outbox::PARKED_TOTAL, Unit::Count, "Outbox events parked (each once, when parked)."),
    // Event log (`app::events`)
    Description::counter(
        PRUNED_METRIC,
        Unit::Count,
        "Consumed events deleted from the event log once older than EVENT_LOG_RETENTION.",
    ),
    // Build (`app::metric_catalog`)
    Description::gauge(BUILD_INFO, Unit::Count, "Always 1: the running build of rust-app, by version."),
];

/// Describes the service's metrics to the installed recorder and sets [`BUILD_INFO`]. Call it after
/// `infra::telemetry::prometheus::install` (which describes the infra crate's).
pub fn describe() {
    describe_all(APP_METRICS);
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use infra::telemetry::catalog::{INFRA_METRICS, Kind};

    use super::*;

    fn every_description() -> impl Iterator<Item = &'static Description> {
        INFRA_METRICS.iter().chain(APP_METRICS)
    }

    /// The naming rules `promtool check metrics` applies, and a few of this project's own.
    fn problems(description: &Description) -> Vec<String> {
        let Description { name, kind, unit, help } = *description;
        let mut found = Vec::new();
        let mut require = |ok: bool, rule: &str| {
            if !ok {
                found.push(format!("{name}: {rule}"));
            }
        };
        require((kind == Kind::Counter) == name.ends_with("_total"), "counters, and only they, end in _total");
        require((unit == Unit::Seconds) == name.contains("_seconds"), "seconds, and only they, are named _seconds");
        require((unit == Unit::Bytes) == name.contains("_bytes"), "bytes, and only they, are named _bytes");
        require(!name.contains("_milli") && !name.contains("_kilo"), "base units only");
        require(!["_bucket", "_sum", "_count"].iter().any(|s| name.ends_with(s)), "no reserved histogram suffix");
        require(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "snake_case");
        require(help.len() > 10 && help.ends_with('.') && !help.contains('\n'), "one sentence of help");
        found
    }

    #[test]
    fn every_description_follows_the_naming_rules_once() {
        let mut seen = BTreeSet::new();
        let mut found: Vec<String> = every_description().flat_map(problems).collect();
        found.extend(every_description().filter(|d| !seen.insert(d.name)).map(|d| format!("{}: twice", d.name)));
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn the_rules_catch_a_misnamed_metric() {
        let misnamed = Description::counter("request_latency_milliseconds", Unit::Milliseconds, "Latency.");
        assert_eq!(problems(&misnamed).len(), 3, "{:?}", problems(&misnamed));
    }

    #[test]
    fn every_described_metric_is_documented() {
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md")).expect("docs");
        let missing: Vec<&str> =
            every_description().map(|d| d.name).filter(|name| !docs.contains(&format!("| `{name}` |"))).collect();
        assert!(missing.is_empty(), "described but not in docs/metrics.md: {missing:?}");
    }
}
