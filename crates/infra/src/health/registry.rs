//! The set of registered checks, with per-component caching and timeouts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::check::{Details, HealthCheck};
use super::config::HealthConfig;

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

/// Whether the service can serve traffic without a component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Criticality {
    /// Down ⇒ the service is down and not ready (e.g. the primary database).
    Required,
    /// Down ⇒ the service is degraded but still ready (e.g. a cache, an event bus).
    Optional,
}

/// The aggregate health of the service.
#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    /// Up when every component is up; degraded when only optional ones are down; down otherwise.
    pub status: Status,
    /// Each component's result, by name.
    pub components: BTreeMap<&'static str, ComponentHealth>,
}

struct Component {
    check: Arc<dyn HealthCheck>,
    criticality: Criticality,
    // The lock doubles as single-flight: concurrent callers queue behind the one running the check and then
    // find its fresh result in the cache.
    cache: Mutex<Option<(Instant, ComponentHealth)>>,
}

/// Runs registered checks concurrently, each cut at `check_timeout`, results cached for `cache_ttl`.
pub struct HealthRegistry {
    components: Vec<Component>,
    config: HealthConfig,
}

impl HealthRegistry {
    /// An empty registry.
    pub fn new(config: HealthConfig) -> Self {
        HealthRegistry { components: Vec::new(), config }
    }

    /// Adds a check; its name must be unique.
    pub fn register(&mut self, check: Arc<dyn HealthCheck>, criticality: Criticality) -> &mut Self {
        self.components.push(Component { check, criticality, cache: Mutex::new(None) });
        self
    }

    /// Names of the registered components, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.components.iter().map(|c| c.check.name())
    }

    /// Checks every component (concurrently) and aggregates.
    pub async fn check_all(&self) -> HealthReport {
        self.report(self.components.iter()).await
    }

    /// Checks the components the service cannot run without: the basis of readiness.
    pub async fn check_required(&self) -> HealthReport {
        self.report(self.components.iter().filter(|c| c.criticality == Criticality::Required)).await
    }

    /// Checks one component by name; `None` when no such component is registered.
    pub async fn check_one(&self, name: &str) -> Option<ComponentHealth> {
        let component = self.components.iter().find(|c| c.check.name() == name)?;
        Some(self.probe(component).await)
    }

    async fn report<'a>(&'a self, components: impl Iterator<Item = &'a Component>) -> HealthReport {
        let components: Vec<&Component> = components.collect();
        let results = futures::future::join_all(components.iter().map(|c| self.probe(c))).await;
        let mut status = Status::Up;
        let mut by_name = BTreeMap::new();
        for (component, result) in components.iter().zip(results) {
            if result.status == Status::Down {
                status = match (component.criticality, status) {
                    (Criticality::Required, _) | (_, Status::Down) => Status::Down,
                    (Criticality::Optional, _) => Status::Degraded,
                };
            }
            by_name.insert(component.check.name(), result);
        }
        HealthReport { status, components: by_name }
    }

    async fn probe(&self, component: &Component) -> ComponentHealth {
        let mut cache = component.cache.lock().await;
        if let Some((at, result)) = cache.as_ref()
            && at.elapsed() < self.config.cache_ttl
        {
            return result.clone();
        }
        let result = self.run(component.check.as_ref()).await;
        let previous = cache.as_ref().map(|(_, r)| r.status);
        log_transition(component.check.name(), previous, &result);
        *cache = Some((Instant::now(), result.clone()));
        result
    }

    async fn run(&self, check: &dyn HealthCheck) -> ComponentHealth {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.config.check_timeout, check.check()).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, error, details) = match outcome {
            Ok(Ok(details)) => (Status::Up, None, details),
            Ok(Err(failure)) => (Status::Down, Some(failure.0), Details::new()),
            Err(_) => (Status::Down, Some(timeout_message(self.config.check_timeout)), Details::new()),
        };
        ComponentHealth { status, latency_ms, error, details }
    }
}

fn timeout_message(timeout: Duration) -> String {
    format!("check timed out after {}", humantime::format_duration(timeout))
}

fn log_transition(name: &str, previous: Option<Status>, result: &ComponentHealth) {
    if previous == Some(result.status) {
        return;
    }
    match result.status {
        Status::Down => {
            tracing::warn!(component = name, error = result.error.as_deref().unwrap_or(""), "dependency is down")
        }
        _ if previous.is_some() => tracing::info!(component = name, "dependency is up again"),
        _ => tracing::debug!(component = name, "dependency is up"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::health::check::CheckFailure;

    /// A check whose behaviour the test chooses, counting how often it runs.
    struct FakeCheck {
        name: &'static str,
        behaviour: Behaviour,
        runs: AtomicUsize,
    }

    #[derive(Clone, Copy)]
    enum Behaviour {
        Up,
        Down,
        Hang,
        Slow(Duration),
    }

    impl FakeCheck {
        fn new(name: &'static str, behaviour: Behaviour) -> Arc<Self> {
            Arc::new(FakeCheck { name, behaviour, runs: AtomicUsize::new(0) })
        }
        fn runs(&self) -> usize {
            self.runs.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl HealthCheck for FakeCheck {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn check(&self) -> Result<Details, CheckFailure> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            match self.behaviour {
                Behaviour::Up => Ok(Details::new()),
                Behaviour::Down => Err(CheckFailure::new("connection refused")),
                Behaviour::Hang => std::future::pending().await,
                Behaviour::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    Ok(Details::new())
                }
            }
        }
    }

    fn registry(ttl: Duration, checks: &[(Arc<FakeCheck>, Criticality)]) -> HealthRegistry {
        let mut registry = HealthRegistry::new(HealthConfig { check_timeout: Duration::from_secs(2), cache_ttl: ttl });
        for (check, criticality) in checks {
            registry.register(check.clone(), *criticality);
        }
        registry
    }

    #[tokio::test(start_paused = true)]
    async fn aggregate_status_follows_criticality() {
        use Behaviour::*;
        use Criticality::*;
        let cases =
            [(Up, Up, Status::Up), (Up, Down, Status::Degraded), (Down, Up, Status::Down), (Down, Down, Status::Down)];
        for (required, optional, expected) in cases {
            let db = FakeCheck::new("postgres", required);
            let cache = FakeCheck::new("redis", optional);
            let report = registry(Duration::ZERO, &[(db, Required), (cache, Optional)]).check_all().await;
            assert_eq!(report.status, expected);
            assert_eq!(report.components.len(), 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_looks_only_at_required_components() {
        let db = FakeCheck::new("postgres", Behaviour::Up);
        let cache = FakeCheck::new("redis", Behaviour::Down);
        let registry = registry(Duration::ZERO, &[(db, Criticality::Required), (cache.clone(), Criticality::Optional)]);
        let report = registry.check_required().await;
        assert_eq!(report.status, Status::Up);
        assert_eq!(report.components.keys().copied().collect::<Vec<_>>(), ["postgres"]);
        assert_eq!(cache.runs(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_is_cut_at_the_timeout_and_reported_down() {
        let hang = FakeCheck::new("kafka", Behaviour::Hang);
        let registry = registry(Duration::ZERO, &[(hang, Criticality::Optional)]);
        let started = Instant::now();
        let result = registry.check_one("kafka").await.expect("registered");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(result.status, Status::Down);
        assert_eq!(result.error.as_deref(), Some("check timed out after 2s"));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_probes_within_the_ttl_run_each_check_once() {
        let db = FakeCheck::new("postgres", Behaviour::Slow(Duration::from_millis(50)));
        let cache = FakeCheck::new("redis", Behaviour::Up);
        let registry = registry(
            Duration::from_secs(1),
            &[(db.clone(), Criticality::Required), (cache.clone(), Criticality::Optional)],
        );
        let reports = futures::future::join_all((0..50).map(|_| registry.check_all())).await;
        assert!(reports.iter().all(|r| r.status == Status::Up));
        assert_eq!((db.runs(), cache.runs()), (1, 1));

        tokio::time::advance(Duration::from_millis(500)).await;
        registry.check_all().await;
        assert_eq!((db.runs(), cache.runs()), (1, 1), "still within the TTL");

        tokio::time::advance(Duration::from_secs(1)).await;
        registry.check_all().await;
        assert_eq!((db.runs(), cache.runs()), (2, 2), "TTL expired: checked again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_ttl_disables_the_cache() {
        let db = FakeCheck::new("postgres", Behaviour::Up);
        let registry = registry(Duration::ZERO, &[(db.clone(), Criticality::Required)]);
        for _ in 0..3 {
            registry.check_one("postgres").await;
        }
        assert_eq!(db.runs(), 3);
        assert!(registry.check_one("nope").await.is_none());
    }
}
