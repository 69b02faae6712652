//! Health checks: one [`HealthCheck`] per dependency, aggregated by a [`HealthRegistry`].
//!
//! The registry runs checks concurrently, cuts each at a timeout and caches results briefly, so a storm of
//! probes from load balancers and orchestrators never turns into a storm of queries against the dependencies.

mod registry;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

pub use registry::{Criticality, HealthRegistry};

use crate::config::{Reader, Unit};

/// Details a check reports about its dependency (pool sizes, partitions, server version...).
pub type Details = serde_json::Map<String, serde_json::Value>;

/// A probe of one dependency. Implementations do one cheap round trip; timeouts and caching are the
/// registry's job, so a check may simply await its dependency.
#[async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// The component's name, as used in `/health/{name}`.
    fn name(&self) -> &'static str;

    /// Probes the dependency once: details on success, the reason on failure.
    async fn check(&self) -> Result<Details, CheckFailure>;
}

/// Why a dependency is considered down. The message is shown to operators: it must never contain a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailure(pub String);

impl CheckFailure {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        CheckFailure(message.into())
    }
}

/// The health of one component or of the whole service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Working.
    Up,
    /// Working without an optional dependency (only for the aggregate).
    Degraded,
    /// Not working.
    Down,
}

/// The result of checking one component.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentHealth {
    /// Up or down.
    pub status: Status,
    /// How long the check took, in milliseconds.
    pub latency_ms: f64,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the check reported.
    #[serde(skip_serializing_if = "Details::is_empty")]
    pub details: Details,
}

/// Settings of the health registry.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// `HEALTH_CHECK_TIMEOUT`: a check still running after this is reported down.
    pub check_timeout: Duration,
    /// `HEALTH_CACHE_TTL`: results younger than this are served from cache (0 disables the cache).
    pub cache_ttl: Duration,
}

impl HealthConfig {
    /// Reads the health settings.
    pub fn read(r: &mut Reader<'_>) -> Self {
        HealthConfig {
            check_timeout: r.duration("HEALTH_CHECK_TIMEOUT", Duration::from_secs(2), Unit::Seconds, false),
            cache_ttl: r.duration("HEALTH_CACHE_TTL", Duration::from_secs(1), Unit::Seconds, true),
        }
    }
}
