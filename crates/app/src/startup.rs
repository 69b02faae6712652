//! Wiring: builds the clients, the event consumer and the HTTP server from the configuration, runs them until
//! told to stop, then stops them in order within SHUTDOWN_TIMEOUT.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use infra::health::{Criticality, HealthRegistry};
use infra::kafka::{ConsumerState, KafkaClient, KafkaConfig, KafkaConsumer, KafkaHealth, KafkaProducer};
use infra::postgres::{PostgresClient, PostgresHealth};
use infra::redis::{ClientCache, RateLimiter, RedisClient, RedisHealth, WhenUnavailable};
use infra::supervisor::{Supervisor, TasksHealth};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::EventProjection;
use crate::events::kafka::{EventLogHandler, KafkaEventPublisher};
use crate::events::postgres::PostgresEventLog;
use crate::events::retention::EventLogRetention;
use crate::http::ops::OpsSources;
use crate::http::sessions::CookieSettings;
use crate::http::{self, AppState, Limits, RequestLimits, Services, rate_limit};
use crate::outbox::health::KafkaWithOutboxHealth;
use crate::outbox::relay::OutboxRelay;
use crate::outbox::topics::EventTopics;
use crate::serve::ServerLimits;
use crate::settings::Settings;
use crate::users::activity::{UserActivity, postgres::PostgresActivityRecorder};
use crate::users::cache::UserCacheInvalidation;
use crate::users::postgres::PostgresUsers;
use crate::users::redis::{RedisSessions, RedisUserCache, SESSION_KEY_PREFIX, USER_KEY_PREFIX};
use crate::users::{CachedUserRepository, Users};

/// How often histogram samples are folded into buckets.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// The least time the consumer and the producer get at shutdown, even when draining HTTP used up the rest.
const MIN_STOP_TIME: Duration = Duration::from_secs(1);

/// What the service runs besides the HTTP server, stopped in order on shutdown. The background tasks run under
/// `supervisor`: restarted when they end or panic before shutdown.
struct Workers {
    postgres: PostgresClient,
    producer: KafkaProducer,
    /// The first consumer; a restart builds a new one from `kafka`, reporting to the same state.
    consumer: KafkaConsumer,
    kafka: KafkaConfig,
    handler: EventLogHandler,
    metrics: PrometheusHandle,
    relay: OutboxRelay,
    /// Cancelled once the event topics were created (or creating them failed): the relay waits for it.
    topics: CancellationToken,
    event_log_retention: EventLogRetention,
    supervisor: Supervisor,
}

/// A built, not yet running, service: the listener is bound, the clients exist (connected lazily).
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    server_limits: ServerLimits,
    workers: Workers,
    shutdown_timeout: Duration,
}

impl Application {
    /// Binds `APP_HOST:APP_PORT` and builds everything.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let address = SocketAddr::new(settings.config.server.host, settings.config.server.port);
        let listener = TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
        Self::build_with_listener(settings, listener).await
    }

    /// Builds everything around an already bound listener (tests bind port 0). Applies the migrations first
    /// when POSTGRES_MIGRATE_ON_START is set.
    pub async fn build_with_listener(settings: Settings, listener: TcpListener) -> anyhow::Result<Self> {
        let config = &settings.config;
        // Before the clients: they register their metrics when built.
        let metrics = infra::telemetry::prometheus::install()?;
        crate::metric_catalog::describe();
        let postgres = PostgresClient::connect_lazy(&config.postgres)?;
        if config.postgres.migrate_on_start {
            crate::migrations::apply(&postgres).await.context("applying migrations at start")?;
        }
        let redis = RedisClient::connect_lazy(&config.redis)?;
        // Users and sessions read on every request are kept in memory while Redis tracks their keys.
        let client_cache = ClientCache::start(&config.redis, &[USER_KEY_PREFIX, SESSION_KEY_PREFIX]);
        let kafka = KafkaClient::connect_lazy(&config.kafka)?;
        let event_topics = Arc::new(EventTopics::new(kafka.clone(), &config.kafka));
        let topics = spawn_ensure_topics(event_topics.clone());
        let producer = KafkaProducer::connect_lazy(&config.kafka)?;
        let consumer = KafkaConsumer::connect_lazy(&config.kafka, producer.clone())?;
        let event_log = Arc::new(PostgresEventLog::new(postgres.clone()));
        // The one consumer logs every event, keeps each user's audit trail from the user events, and invalidates
        // the cached user of each update or deletion again (waiting for Redis when it is down).
        let user_activity = UserActivity::new(Arc::new(PostgresActivityRecorder::new(postgres.clone())));
        let cache =
            RedisUserCache::new(redis.clone(), settings.users.cache_ttl).with_client_cache(client_cache.clone());
        let user_cache = UserCacheInvalidation::new(Arc::new(cache));
        let handler = EventLogHandler::new(event_log.clone())
            .with_projection(Arc::new(user_activity))
            .with_projection(Arc::new(user_cache));
        let relay =
            OutboxRelay::new(postgres.clone(), producer.clone(), config.kafka.topic.clone(), settings.outbox.clone())
                .with_topics(event_topics);

        let ops = OpsSources {
            service: config.service.name.clone(),
            version: config.service.version.clone(),
            started: Instant::now(),
            postgres: postgres.clone(),
            redis: redis.clone(),
            kafka: kafka.clone(),
            dlq_topic: config.kafka.dlq_topic.clone(),
            dlq_timeout: config.health.check_timeout,
            consumer: consumer.state(),
            backlog: relay.backlog(),
        };
        let supervisor = Supervisor::new();
        let mut health = HealthRegistry::new(config.health.clone());
        health
            .register(Arc::new(PostgresHealth::new(postgres.clone())), Criticality::Required)
            .register(Arc::new(RedisHealth::new(redis.clone())), Criticality::Optional)
            .register(
                // The metadata request gets 3/4 of the check's time: it fails with its cause (refused, a TLS
                // certificate that does not verify...) before the wrapper cuts it at 9/10 without one.
                Arc::new(KafkaWithOutboxHealth::new(
                    KafkaHealth::new(kafka, config.kafka.topic.clone(), config.health.check_timeout * 3 / 4)
                        .with_consumer(consumer.state()),
                    relay.backlog(),
                    config.health.check_timeout,
                )),
                Criticality::Optional,
            )
            .register(Arc::new(TasksHealth::new(supervisor.clone())), Criticality::Optional);
        let when_unavailable = WhenUnavailable::from_config(&config.redis);
        let state = AppState::new(Services {
            health: Arc::new(health),
            metrics: metrics.clone(),
            events: Arc::new(KafkaEventPublisher::new(producer.clone(), config.kafka.topic.clone())),
            event_log: event_log.clone(),
            publish_limiter: RateLimiter::new(redis.clone(), "rate:events", when_unavailable),
            users: users(&settings, &postgres, &redis, &client_cache),
            limits: Limits {
                per_ip: rate_limit::per_ip_limiter(
                    RateLimiter::new(redis.clone(), "rate", when_unavailable),
                    rate_limit::per_ip_limit(settings.http.rate_limit_rps, settings.http.rate_limit_burst),
                ),
                login_limiter: RateLimiter::new(redis.clone(), "rate", WhenUnavailable::Deny),
                login: rate_limit::login_limit(settings.sessions.login_attempts_per_minute),
                login_per_account: rate_limit::login_limit(settings.sessions.account_login_attempts_per_minute),
                trusted_proxies: settings.http.trusted_proxies.clone(),
            },
            cookie: CookieSettings {
                name: settings.sessions.cookie_name.clone(),
                secure: settings.sessions.cookie_secure,
                ttl: settings.sessions.ttl,
            },
            requests: RequestLimits { body_limit: settings.http.body_limit, timeout: settings.http.request_timeout },
            ops,
        });
        tracing::info!(
            service = %config.service.name,
            version = %config.service.version,
            postgres = %postgres.address(),
            redis = %config.redis.redacted_addr(),
            kafka = %config.kafka.bootstrap_servers(),
            topic = %config.kafka.topic,
            "rust-app built"
        );
        Ok(Application {
            listener,
            router: http::router(state),
            server_limits: settings.http.server,
            workers: Workers {
                event_log_retention: EventLogRetention::new(postgres.clone(), settings.event_log.retention),
                postgres,
                producer,
                consumer,
                kafka: config.kafka.clone(),
                handler,
                metrics,
                relay,
                topics,
                supervisor,
            },
            shutdown_timeout: config.server.shutdown_timeout,
        })
    }

    /// Also hands every consumed event to `projection`, after the service's own projections: a read model of a
    /// domain built on the service, or a test's probe.
    pub fn with_projection(mut self, projection: Arc<dyn EventProjection>) -> Self {
        self.workers.handler = self.workers.handler.with_projection(projection);
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves, consumes and relays the outbox until `stop` resolves. Then, within SHUTDOWN_TIMEOUT: stops
    /// accepting and lets in-flight requests finish (abandoning them when time runs out), stops the consumer (the
    /// record in hand is finished and its offset committed) and the outbox relay (its round finished or
    /// abandoned, nothing lost), flushes the producer, closes the pools.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let address = self.local_addr()?;
        let Application { listener, router, server_limits, workers, shutdown_timeout } = self;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let graceful = async move {
            let _ = stop_rx.wait_for(|stopping| *stopping).await;
        };
        let mut server = tokio::spawn(crate::serve::serve(listener, router, server_limits, graceful));
        let supervisor = workers.supervisor.clone();
        let stop_upkeep = CancellationToken::new();
        let upkeep = spawn_metrics_upkeep(&supervisor, workers.metrics.clone(), stop_upkeep.clone());
        let stop_consuming = CancellationToken::new();
        let consuming = Consuming {
            state: workers.consumer.state(),
            first: Some(workers.consumer),
            kafka: workers.kafka,
            dead_letters: workers.producer.clone(),
            handler: Arc::new(workers.handler),
        };
        let mut consumer = spawn_consumer(&supervisor, consuming, stop_consuming.clone(), shutdown_timeout);
        let stop_relaying = CancellationToken::new();
        let mut relay = spawn_relay(&supervisor, workers.relay, workers.topics, stop_relaying.clone());
        // Pruning the event log is upkeep like the relay's: it stops with it.
        let retention = workers.event_log_retention;
        let stop_pruning = stop_relaying.clone();
        let mut pruning = supervisor
            .spawn("event-log-retention", stop_relaying.clone(), move || retention.clone().run(stop_pruning.clone()));
        tracing::info!(%address, "listening");

        tokio::select! {
            ended = &mut server => {
                stop_upkeep.cancel();
                upkeep.abort();
                stop_relaying.cancel();
                ended.context("HTTP server task failed")?.context("HTTP server failed")?;
                anyhow::bail!("HTTP server stopped unexpectedly");
            }
            () = stop => {}
        }
        let deadline = Instant::now() + shutdown_timeout;
        tracing::info!(timeout = ?shutdown_timeout, "draining in-flight requests");
        let _ = stop_tx.send(true);
        match tokio::time::timeout_at(deadline.into(), &mut server).await {
            Ok(ended) => ended.context("HTTP server task failed")?.context("HTTP server failed")?,
            Err(_) => {
                tracing::warn!(timeout = ?shutdown_timeout, "requests still in flight after SHUTDOWN_TIMEOUT; abandoning them");
                server.abort();
            }
        }
        // The relay stops beside the consumer; its records are acknowledged before the producer is flushed.
        stop_relaying.cancel();
        stop_consuming.cancel();
        if tokio::time::timeout(remaining(deadline), &mut consumer).await.is_err() {
            tracing::warn!("the event consumer did not stop within SHUTDOWN_TIMEOUT; abandoning it");
            consumer.abort();
        }
        if tokio::time::timeout(remaining(deadline), &mut relay).await.is_err() {
            tracing::warn!("the outbox relay did not stop within SHUTDOWN_TIMEOUT; abandoning its round");
            relay.abort();
        }
        if tokio::time::timeout(remaining(deadline), &mut pruning).await.is_err() {
            pruning.abort();
        }
        if let Err(err) = workers.producer.flush(remaining(deadline)).await {
            tracing::warn!(error = %err, "records still unacknowledged at shutdown");
        }
        stop_upkeep.cancel();
        upkeep.abort();
        if tokio::time::timeout(remaining(deadline), workers.postgres.close()).await.is_err() {
            tracing::warn!("PostgreSQL pool did not close within SHUTDOWN_TIMEOUT; leaving it");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The users use cases over PostgreSQL (users, outbox) and Redis (cache, sessions), hits served from
/// `client_cache` when it is on.
pub(crate) fn users(
    settings: &Settings,
    postgres: &PostgresClient,
    redis: &RedisClient,
    client_cache: &ClientCache,
) -> Users {
    let cache = RedisUserCache::new(redis.clone(), settings.users.cache_ttl).with_client_cache(client_cache.clone());
    let sessions = RedisSessions::new(redis.clone(), settings.sessions.ttl, settings.sessions.max_lifetime)
        .with_client_cache(client_cache.clone());
    Users::new(Arc::new(CachedUserRepository::new(PostgresUsers::new(postgres.clone()), cache)), Arc::new(sessions))
        .with_hashing_limits(settings.users.hashing)
}

/// Time left until `deadline`, but at least [`MIN_STOP_TIME`]: the consumer must get a chance to commit, the
/// outbox relay to mark what Kafka acknowledged, the producer to flush, the pool to close. Past the deadline each
/// step gets that minimum: a shutdown that ran out of time still ends within SHUTDOWN_TIMEOUT + 4 × MIN_STOP_TIME.
fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(MIN_STOP_TIME)
}

/// What the consumer task needs to start, and to start again after it ended or panicked: the first consumer
/// (built with the service), then new ones reporting to the same state.
struct Consuming {
    first: Option<KafkaConsumer>,
    state: ConsumerState,
    kafka: KafkaConfig,
    dead_letters: KafkaProducer,
    handler: Arc<EventLogHandler>,
}

impl Consuming {
    /// The first consumer, else a new one. A consumer that cannot be built ends the task (restarted later).
    fn consumer(&mut self) -> Option<KafkaConsumer> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        KafkaConsumer::connect_lazy_reporting_to(&self.kafka, self.dead_letters.clone(), self.state.clone())
            .inspect_err(|err| tracing::error!(error = %err, "cannot create the Kafka consumer again"))
            .ok()
    }
}

/// Consumes the event topic until `stop` is cancelled, under supervision; closing the consumer is bounded by
/// `close_timeout`.
fn spawn_consumer(
    supervisor: &Supervisor,
    mut consuming: Consuming,
    stop: CancellationToken,
    close_timeout: Duration,
) -> JoinHandle<()> {
    let token = stop.clone();
    supervisor.spawn("event-consumer", stop, move || {
        let (consumer, handler, stop) = (consuming.consumer(), consuming.handler.clone(), token.clone());
        async move {
            if let Some(consumer) = consumer {
                consumer.consume(handler.as_ref(), stop, close_timeout).await;
            }
        }
    })
}

/// The outbox relay, under supervision.
fn spawn_relay(
    supervisor: &Supervisor,
    relay: OutboxRelay,
    topics: CancellationToken,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let (relay, token) = (Arc::new(relay), stop.clone());
    supervisor
        .spawn("outbox-relay", stop, move || relay_once_topics_exist(relay.clone(), topics.clone(), token.clone()))
}

/// Folds recorded histogram samples into their buckets even when nobody scrapes `/metrics`, so memory stays
/// bounded between scrapes.
fn spawn_metrics_upkeep(supervisor: &Supervisor, metrics: PrometheusHandle, stop: CancellationToken) -> JoinHandle<()> {
    let token = stop.clone();
    supervisor.spawn("metrics-upkeep", stop, move || {
        let (metrics, stop) = (metrics.clone(), token.clone());
        async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
            while tokio::select! { () = stop.cancelled() => false, _ = every.tick() => true } {
                metrics.run_upkeep();
            }
        }
    })
}

/// How long the relay waits for the event topics to be created before it starts anyway (with the broker down,
/// creating them takes KAFKA_DIAL_TIMEOUT per topic; the relay's pruning and backlog must not wait that long).
const TOPICS_WAIT: Duration = Duration::from_secs(5);

/// Runs the relay once the event topics exist (or after [`TOPICS_WAIT`]). Its first record would otherwise make a
/// broker that creates topics on first use do so with its own partition count (tansu: 4, Kafka:
/// `num.partitions`) before the service asked for its own — as soon as an instance starts with events pending.
async fn relay_once_topics_exist(relay: Arc<OutboxRelay>, topics: CancellationToken, stop: CancellationToken) {
    tokio::select! {
        _ = tokio::time::timeout(TOPICS_WAIT, topics.cancelled()) => relay.run(stop).await,
        () = stop.cancelled() => {}
    }
}

/// Creates the event topic and its dead-letter topic when missing and KAFKA_CREATE_TOPICS is on. The returned
/// token is cancelled once that is done (or failed).
fn spawn_ensure_topics(topics: Arc<EventTopics>) -> CancellationToken {
    let done = CancellationToken::new();
    let ensured = done.clone().drop_guard();
    tokio::spawn(async move {
        let _ensured = ensured;
        topics.create_at_start().await;
    });
    done
}
