//! Health checks: one [`HealthCheck`] per dependency, aggregated by a [`HealthRegistry`].
//!
//! The registry runs checks concurrently, cuts each at a timeout and caches results briefly, so a storm of
//! probes from load balancers and orchestrators never turns into a storm of queries against the dependencies.

mod check;
mod config;
mod registry;

pub use check::{CheckFailure, Details, HealthCheck, PoolStats};
pub use config::HealthConfig;
pub use registry::{ComponentHealth, Criticality, HealthRegistry, HealthReport, Status};
