//! Wiring: builds the clients and the HTTP server from the configuration, runs it until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use infra::config::Config;
use infra::health::{Criticality, HealthRegistry};
use infra::kafka::{KafkaClient, KafkaHealth};
use infra::postgres::{PostgresClient, PostgresHealth};
use infra::redis::{RedisClient, RedisHealth};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::http::{self, AppState};

/// Partitions of the event topic when the service creates it.
const EVENT_TOPIC_PARTITIONS: i32 = 3;
/// How often histogram samples are folded into buckets.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Bound on closing the pools after the HTTP server stopped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The clients the service owns, closed on shutdown.
struct Resources {
    postgres: PostgresClient,
    metrics: PrometheusHandle,
}

impl Resources {
    async fn close(&self) {
        if tokio::time::timeout(CLOSE_TIMEOUT, self.postgres.close()).await.is_err() {
            tracing::warn!("PostgreSQL pool did not close within {CLOSE_TIMEOUT:?}; leaving it");
        }
    }
}

/// A built, not yet running, service: the listener is bound, the clients exist (connected lazily).
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    resources: Resources,
    shutdown_timeout: Duration,
}

impl Application {
    /// Binds `APP_HOST:APP_PORT` and builds everything.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let address = SocketAddr::new(config.server.host, config.server.port);
        let listener = TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
        Self::build_with_listener(config, listener).await
    }

    /// Builds everything around an already bound listener (tests bind port 0). Applies the migrations first
    /// when POSTGRES_MIGRATE_ON_START is set.
    pub async fn build_with_listener(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        // Before the clients: they register their metrics when built.
        let metrics = infra::telemetry::prometheus::install()?;
        let postgres = PostgresClient::connect_lazy(&config.postgres)?;
        if config.postgres.migrate_on_start {
            crate::migrations::apply(&postgres).await.context("applying migrations at start")?;
        }
        let redis = RedisClient::connect_lazy(&config.redis)?;
        let kafka = KafkaClient::new(&config.kafka)?;
        spawn_ensure_topic(kafka.clone(), config.kafka.topic.clone(), config.kafka.dial_timeout);

        let mut health = HealthRegistry::new(config.health.clone());
        health
            .register(Arc::new(PostgresHealth::new(postgres.clone())), Criticality::Required)
            .register(Arc::new(RedisHealth::new(redis)), Criticality::Optional)
            .register(
                Arc::new(KafkaHealth::new(kafka, config.kafka.topic.clone(), config.health.check_timeout)),
                Criticality::Optional,
            );
        let router = http::router(AppState { health: Arc::new(health), metrics: metrics.clone() });
        tracing::info!(
            service = %config.service.name,
            version = %config.service.version,
            postgres = %postgres.target(),
            redis = %config.redis.redacted_addr(),
            kafka = %config.kafka.bootstrap_servers(),
            "rust-app built"
        );
        Ok(Application {
            listener,
            router,
            resources: Resources { postgres, metrics },
            shutdown_timeout: config.server.shutdown_timeout,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` resolves, then stops accepting, lets in-flight requests finish within
    /// SHUTDOWN_TIMEOUT (abandoning them after it), and closes the pools.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let address = self.local_addr()?;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let graceful = async move {
            let _ = stop_rx.wait_for(|stopping| *stopping).await;
        };
        let service = self.router.into_make_service_with_connect_info::<SocketAddr>();
        let mut server =
            tokio::spawn(axum::serve(self.listener, service).with_graceful_shutdown(graceful).into_future());
        tracing::info!(%address, "listening");
        let upkeep = spawn_metrics_upkeep(self.resources.metrics.clone());

        tokio::select! {
            ended = &mut server => {
                ended.context("HTTP server task failed")?.context("HTTP server failed")?;
                anyhow::bail!("HTTP server stopped unexpectedly");
            }
            () = stop => {}
        }
        tracing::info!(timeout = ?self.shutdown_timeout, "draining in-flight requests");
        let _ = stop_tx.send(true);
        match tokio::time::timeout(self.shutdown_timeout, &mut server).await {
            Ok(ended) => ended.context("HTTP server task failed")?.context("HTTP server failed")?,
            Err(_) => {
                tracing::warn!(timeout = ?self.shutdown_timeout, "requests still in flight after SHUTDOWN_TIMEOUT; abandoning them");
                server.abort();
            }
        }
        upkeep.abort();
        self.resources.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Folds recorded histogram samples into their buckets even when nobody scrapes `/metrics`, so memory stays
/// bounded between scrapes.
fn spawn_metrics_upkeep(metrics: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            every.tick().await;
            metrics.run_upkeep();
        }
    })
}

fn spawn_ensure_topic(kafka: KafkaClient, topic: String, timeout: Duration) {
    tokio::spawn(async move {
        match kafka.ensure_topic(&topic, EVENT_TOPIC_PARTITIONS, timeout).await {
            Ok(()) => tracing::debug!(%topic, "event topic present"),
            Err(err) => tracing::warn!(%topic, error = %err, "cannot make sure the event topic exists"),
        }
    });
}
