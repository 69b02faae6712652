//! Settings of the health registry.

use std::time::Duration;

use crate::config::{Reader, Unit};

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
