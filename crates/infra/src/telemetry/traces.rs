//! The OpenTelemetry tracer: resource, sampler, and the OTLP gRPC exporter behind a batch processor.
//!
//! Spans are exported from the batch processor's own thread: a slow or unreachable collector fills (then
//! overflows) the processor's queue; it never holds up a request. Export failures are reported once per
//! outage by [`ReportingExporter`], not once per batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use secrecy::ExposeSecret;

use super::config::{OtlpConfig, ServiceConfig};
use super::error::TelemetryError;

/// Builds the tracer provider. Without an OTLP endpoint spans are still created — logs carry their trace
/// ids and outgoing requests and records carry `traceparent` — but nothing is exported.
///
/// With an endpoint it must run inside a Tokio runtime: the gRPC channel's connection task is spawned on it.
pub(super) fn provider(service: &ServiceConfig) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(service.name.clone())
        .with_attribute(KeyValue::new("service.version", service.version.clone()))
        .build();
    let builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler(service.sampler, service.sampler_ratio));
    let builder = match &service.otlp {
        Some(otlp) => builder.with_batch_exporter(ReportingExporter::new(otlp_exporter(otlp)?, &otlp.endpoint)),
        None => builder,
    };
    Ok(builder.build())
}

/// The sampler named by `OTEL_TRACES_SAMPLER` (names checked when the configuration was read).
fn sampler(name: &str, ratio: f64) -> Sampler {
    match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
        _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    }
}

fn otlp_exporter(otlp: &OtlpConfig) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &otlp.headers {
        // Checked when the configuration was read; a failure here names the header, never its value.
        let invalid = || TelemetryError::Exporter(format!("OTEL_EXPORTER_OTLP_HEADERS: invalid header {name}"));
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
        let mut value = http::HeaderValue::from_str(value.expose_secret()).map_err(|_| invalid())?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(otlp.endpoint.clone())
        .with_timeout(otlp.timeout)
        .with_metadata(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers))
        .build()
        .map_err(|err| TelemetryError::Exporter(err.to_string()))
}

/// Wraps the OTLP exporter to report the first failure of an outage, and the recovery, as one log line each.
/// The SDK's own per-batch error logging is compiled out (`internal-logs` off), so a collector that is down
/// for an hour costs two log lines, not one per batch.
#[derive(Debug)]
pub(super) struct ReportingExporter<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E> ReportingExporter<E> {
    pub(super) fn new(inner: E, endpoint: &str) -> Self {
        ReportingExporter { inner, endpoint: endpoint.to_string(), failing: AtomicBool::new(false) }
    }

    fn report(&self, result: &OTelSdkResult) {
        match result {
            Err(err) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                endpoint = %self.endpoint,
                error = %err,
                "cannot export traces to the OTLP collector; spans are dropped until it is reachable \
                 (reported once per outage)"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "trace export to the OTLP collector recovered");
            }
            _ => {}
        }
    }
}

impl<E: SpanExporter> SpanExporter for ReportingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.report(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkError;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    /// An exporter whose outcome the test decides.
    #[derive(Debug, Default)]
    struct Scripted {
        fail: Arc<AtomicBool>,
        calls: Arc<AtomicUsize>,
    }

    impl SpanExporter for Scripted {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.fail.load(Ordering::Relaxed) {
                Err(OTelSdkError::InternalFailure("refused".into()))
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn an_outage_is_reported_once_and_its_end_once() {
        let fail = Arc::new(AtomicBool::new(true));
        let exporter = ReportingExporter::new(Scripted { fail: fail.clone(), ..Default::default() }, "http://c:4317");
        let logs = test_support_logs::capture(|| {
            for _ in 0..5 {
                assert!(futures::executor::block_on(exporter.export(Vec::new())).is_err());
            }
            fail.store(false, Ordering::Relaxed);
            for _ in 0..3 {
                assert!(futures::executor::block_on(exporter.export(Vec::new())).is_ok());
            }
        });
        assert_eq!(logs.matches("cannot export traces").count(), 1, "{logs}");
        assert_eq!(logs.matches("recovered").count(), 1, "{logs}");
    }

    /// A minimal capture of this thread's log output (the test-support crate depends on infra, so it cannot be
    /// used from infra's unit tests).
    mod test_support_logs {
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);

        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        pub(super) fn capture(body: impl FnOnce()) -> String {
            let buffer = Buffer::default();
            let writer = buffer.clone();
            let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).finish();
            tracing::subscriber::with_default(subscriber, body);
            let bytes = buffer.0.lock().map(|bytes| bytes.clone()).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}
