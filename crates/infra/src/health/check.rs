//! What one check is: the probe of a dependency, and what it reports.

use async_trait::async_trait;

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

/// A connection pool's occupancy, as every pooled client reports it (`pool_stats()`), in health details and
/// logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open now.
    pub size: usize,
    /// Open connections doing nothing (for a multiplexed Redis connection: no command in flight).
    pub idle: usize,
    /// The most connections the pool may open.
    pub max_size: usize,
}
