//! The service's identity and how it reports: log format and level, where traces go, how many are kept.
//!
//! The OpenTelemetry variables keep the names and meanings of the OpenTelemetry specification
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_TRACES_SAMPLER`, ...) so an operator's existing knowledge applies.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::EnvFilter;

use crate::config::{Masked, Reader, Sensitivity, Unit, check_url, redact_url};

/// The samplers of the OpenTelemetry specification's `OTEL_TRACES_SAMPLER`.
pub const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors (the default).
    Json,
    /// Multi-line, coloured, for a human at a terminal.
    Pretty,
}

/// Where spans are exported (`OTEL_EXPORTER_OTLP_*`); absent when no endpoint is configured.
#[derive(Clone)]
pub struct OtlpConfig {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's gRPC address (`http://collector:4317`).
    pub endpoint: String,
    /// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs sent with every export (authentication); values are
    /// secrets.
    pub headers: Vec<(String, SecretString)>,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`: the bound on one export call, and on the final flush at shutdown.
    pub timeout: Duration,
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("OtlpConfig")
            .field("endpoint", &redact_url(&self.endpoint))
            .field("header_names", &header_names)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The service's identity in logs and traces, and the settings of its logs and traces.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// `OTEL_SERVICE_NAME`.
    pub name: String,
    /// `OTEL_SERVICE_VERSION`: by default the binary's own version (`CARGO_PKG_VERSION`, what `--version` prints
    /// and the image is tagged with), so logs and traces name the release that wrote them.
    pub version: String,
    /// `OTEL_LOG_VERBOSITY`: 0 warn, 1 info (default), 2 debug, 3 trace.
    pub log_verbosity: u8,
    /// `LOG_FORMAT`: json (default) or pretty.
    pub log_format: LogFormat,
    /// `RUST_LOG`, else `LOG_LEVEL`: a full filter (`info,infra=debug`) that overrides `OTEL_LOG_VERBOSITY`.
    pub log_filter: Option<String>,
    /// The trace exporter, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    pub otlp: Option<OtlpConfig>,
    /// `OTEL_TRACES_SAMPLER`: one of [`SAMPLERS`].
    pub sampler: &'static str,
    /// `OTEL_TRACES_SAMPLER_ARG`: the ratio of the ratio samplers, 0.0–1.0.
    pub sampler_ratio: f64,
}

impl ServiceConfig {
    /// Reads the service and telemetry settings, recording problems in `r`.
    pub fn read(r: &mut Reader<'_>) -> Self {
        ServiceConfig {
            name: r.string("OTEL_SERVICE_NAME", "rust-app"),
            version: r.string("OTEL_SERVICE_VERSION", env!("CARGO_PKG_VERSION")),
            log_verbosity: r.int("OTEL_LOG_VERBOSITY", 1, 0, 3),
            log_format: match r.choice("LOG_FORMAT", "json", &["json", "pretty"]) {
                "pretty" => LogFormat::Pretty,
                _ => LogFormat::Json,
            },
            log_filter: read_log_filter(r),
            otlp: read_otlp(r),
            sampler: r.choice("OTEL_TRACES_SAMPLER", "parentbased_always_on", &SAMPLERS),
            sampler_ratio: r.parsed("OTEL_TRACES_SAMPLER_ARG", Sensitivity::Plain, 1.0, parse_ratio),
        }
    }

    /// The log filter in force: `RUST_LOG` / `LOG_LEVEL` when set, else the mapping of `OTEL_LOG_VERBOSITY`.
    pub fn effective_log_filter(&self) -> String {
        self.log_filter.clone().unwrap_or_else(|| filter_for_verbosity(self.log_verbosity))
    }
}

/// `RUST_LOG` wins over `LOG_LEVEL`; both are checked, so a typo in either is reported at start.
fn read_log_filter(r: &mut Reader<'_>) -> Option<String> {
    let rust_log = r.parsed("RUST_LOG", Sensitivity::Plain, String::new(), check_filter);
    let log_level = r.parsed("LOG_LEVEL", Sensitivity::Plain, String::new(), check_filter);
    [rust_log, log_level].into_iter().find(|filter| !filter.is_empty())
}

fn check_filter(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    EnvFilter::builder().parse(raw).map(|_| raw.to_string()).map_err(|err| {
        format!("must be a level (error, warn, info, debug, trace) or a filter such as info,infra=debug ({err})")
    })
}

fn read_otlp(r: &mut Reader<'_>) -> Option<OtlpConfig> {
    let endpoint = r.parsed("OTEL_EXPORTER_OTLP_ENDPOINT", Sensitivity::Url, String::new(), |raw| {
        let raw = raw.trim();
        let ok = raw.is_empty() || check_url(raw, &["http", "https"]).is_ok_and(|url| url.username().is_empty());
        ok.then(|| raw.to_string()).ok_or_else(|| "must be the collector's URL, like http://collector:4317".to_string())
    });
    let headers = r.parsed("OTEL_EXPORTER_OTLP_HEADERS", Sensitivity::Secret, Masked::default(), |raw| {
        parse_headers(raw).map(|_| Masked(SecretString::from(raw.to_string())))
    });
    let timeout = r.duration("OTEL_EXPORTER_OTLP_TIMEOUT", Duration::from_secs(10), Unit::Seconds, false);
    let headers = parse_headers(headers.0.expose_secret()).unwrap_or_default();
    (!endpoint.is_empty()).then_some(OtlpConfig { endpoint, headers, timeout })
}

/// Parses the specification's `key1=value1,key2=value2` with percent-encoded values. The rule broken never
/// quotes a value: values are credentials.
fn parse_headers(raw: &str) -> Result<Vec<(String, SecretString)>, String> {
    let rule = "must be comma-separated key=value pairs with header-name keys (values percent-encoded)";
    raw.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or(rule)?;
            let key = key.trim();
            let value = percent_encoding::percent_decode_str(value.trim()).decode_utf8().map_err(|_| rule)?;
            let key_ok = !key.is_empty() && key.bytes().all(is_token_byte);
            let value_ok = value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            if key_ok && value_ok {
                Ok((key.to_ascii_lowercase(), SecretString::from(value.into_owned())))
            } else {
                Err(rule.to_string())
            }
        })
        .collect()
}

/// An HTTP token character (RFC 9110 §5.6.2): what a header name may consist of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_ratio(raw: &str) -> Result<f64, String> {
    let rule = "must be a number from 0 to 1 (the fraction of traces kept)";
    let ratio: f64 = raw.trim().parse().map_err(|_| rule)?;
    if (0.0..=1.0).contains(&ratio) { Ok(ratio) } else { Err(rule.to_string()) }
}

/// The log filter for a verbosity level: 0 warn, 1 info, 2 debug, 3 trace. Dependencies stay at warn below
/// trace so debugging the service does not drown in driver chatter.
pub fn filter_for_verbosity(verbosity: u8) -> String {
    match verbosity {
        0 => "warn".to_string(),
        1 => "info".to_string(),
        2 => "warn,infra=debug,app=debug,rust_app=debug".to_string(),
        _ => "trace".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_decoded_and_keys_lowercased() {
        let headers = parse_headers("Authorization=Basic%20dXNlcjpwYXNz, x-tenant = blue").expect("valid");
        let shown: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.expose_secret())).collect();
        assert_eq!(shown, [("authorization", "Basic dXNlcjpwYXNz"), ("x-tenant", "blue")]);
    }

    #[test]
    fn malformed_headers_are_refused_without_quoting_values() {
        for raw in ["no-equals-sign", "bad key=secret-value", "k=%0Asecret-value", "=secret-value"] {
            let rule = parse_headers(raw).expect_err(raw);
            assert!(!rule.contains("secret-value"), "{rule}");
        }
    }

    #[test]
    fn ratio_must_be_a_fraction() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("half").is_err());
    }
}
