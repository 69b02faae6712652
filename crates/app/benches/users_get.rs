//! `GET /users/{id}` answered from the Redis cache by the real service, against a bare axum handler serving the
//! same bytes from memory.
//!
//! Run: `scripts/stack up && cargo bench -p app --bench users_get`.
//!
//! The service runs in this process on 127.0.0.1:0 against the local stack, as `tests/api/helpers.rs` starts
//! it (its own Kafka topic and group), with RATE_LIMIT_RPS and RATE_LIMIT_BURST at 1 000 000 so the per-IP
//! limiter never refuses — it still runs as in production, leasing tokens from Redis (64 per lease at that rate)
//! and spending them in process. The requests come from
//! a loopback address of the run's own (127.x.y.z), so the limiter's state for 127.0.0.1, which every test
//! against the local stack shares, is left alone. One user is created, signed in, and reads itself once to fill
//! the cache; every request carries its session as `Authorization: Bearer` (GET /users/{id} needs one), and the
//! bare server answers the same route with that user's bytes.
//!
//! Method: a load generator on its own runtime keeps BENCH_CONCURRENCY (32) keep-alive HTTP/1.1 connections
//! per server busy (hyper's client, one request in flight on each) for BENCH_SECONDS (3) per round. The sides
//! take turns, order reversed every round (bare, app, app, bare...), BENCH_ROUNDS (4) rounds each, after a
//! 1 s warm-up each: on this 2-core machine unpaired runs swing ±20 %. A side's req/s is its requests over its
//! rounds' total time; p50/p99 are over every request of its rounds. Every answer must be 200 with the
//! expected body, else the bench fails. The service's `/metrics` must show every cache lookup a hit: two per
//! request for the app (the caller's record when the session is checked, then the user read).
//!
//! Where the time goes: each round's CPU time is split into the server runtime's threads, the load
//! generator's, the rest of the process (librdkafka...) and redis-server (`INFO cpu`), per request.
//! BENCH_SIDES adds servers made of the bare one plus one of the service's layers (default `bare,app`):
//! - `server`: served by the service's own accept loop (`app::serve::serve`: connection clocks for the header
//!   read and keep-alive timeouts, the connection cap) instead of `axum::serve`;
//! - `observe`: the service's `observe` middleware (request id, span, HTTP metrics, one log line);
//! - `limiter`: the service's per-IP limit and request time limit layer (a leased token, a GCRA lease in Redis
//!   when the lease is spent, RateLimit-* headers, the request's timer);
//! - `cache`: the handler reading the user through the service's `Users::get` (its client-side cache, or a Redis
//!   GET and JSON decoding with REDIS_CLIENT_CACHE=false).
//!
//! REDIS_CLIENT_CACHE=false runs the service without its client-side cache (the users and sessions read from Redis
//! on every request, as before it existed).
//!
//! BENCH_TELEMETRY: `json` (default: the service's JSON log layer at INFO, output discarded), `service` (that
//! plus the OpenTelemetry layer, as `rust-app serve` installs them, nothing exported), `registry` (spans
//! tracked, nothing formatted), `off`. BENCH_CLIENT_THREADS: the load generator's threads (default 2).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::http::extract::IdPath;
use app::http::rate_limit;
use app::http::users::UserBody;
use app::settings::Settings;
use app::startup::Application;
use app::users::postgres::PostgresUsers;
use app::users::redis::{RedisSessions, RedisUserCache, USER_KEY_PREFIX};
use app::users::{CachedUserRepository, Users};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use infra::config::Sources;
use infra::postgres::PostgresClient;
use infra::redis::{ClientCache, RateLimiter, RedisClient, WhenUnavailable};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;

/// As the `rust-app` binary: the service measured here runs on the allocator it ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const WARM_UP: Duration = Duration::from_secs(1);
/// Thread names (at most 15 bytes: the kernel truncates them) telling the CPU of each part apart.
const SERVER_THREAD: &str = "bench-server";
const CLIENT_THREAD: &str = "bench-loadgen";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Bare,
    Server,
    Observe,
    Limiter,
    Cache,
    App,
}

impl Side {
    fn parse(name: &str) -> Option<Side> {
        Some(match name.trim() {
            "bare" => Side::Bare,
            "server" => Side::Server,
            "observe" => Side::Observe,
            "limiter" => Side::Limiter,
            "cache" => Side::Cache,
            "app" => Side::App,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Side::Bare => "bare",
            Side::Server => "bare+server",
            Side::Observe => "bare+observe",
            Side::Limiter => "bare+limiter",
            Side::Cache => "bare+cache",
            Side::App => "app",
        }
    }

    /// How many user cache lookups (counted in `redis_cache_lookups_total`) each of its GETs makes: the app
    /// reads the caller's record to check the session, then the user asked for.
    fn cache_lookups(self) -> u64 {
        match self {
            Side::App => 2,
            Side::Cache => 1,
            Side::Bare | Side::Server | Side::Observe | Side::Limiter => 0,
        }
    }
}

struct Options {
    concurrency: usize,
    seconds: f64,
    rounds: usize,
    client_threads: usize,
    sides: Vec<Side>,
}

impl Options {
    fn from_env() -> Options {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(raw) => raw.parse().unwrap_or_else(|_| panic!("{name}={raw:?} is not valid")),
                Err(_) => default,
            }
        }
        let sides = var("BENCH_SIDES", "bare,app".to_string());
        let mut sides: Vec<Side> = sides
            .split(',')
            .map(|name| Side::parse(name).unwrap_or_else(|| panic!("BENCH_SIDES: unknown side {name:?}")))
            .collect();
        // The ratios are against the bare server: it always runs, first.
        sides.retain(|side| *side != Side::Bare);
        sides.insert(0, Side::Bare);
        sides.dedup();
        Options {
            concurrency: var("BENCH_CONCURRENCY", 32usize).max(1),
            seconds: var("BENCH_SECONDS", 3.0f64),
            rounds: var("BENCH_ROUNDS", 4usize).max(1),
            client_threads: var("BENCH_CLIENT_THREADS", 2usize).max(1),
            sides,
        }
    }
}

/// Installs the global subscriber chosen by BENCH_TELEMETRY and returns its name.
fn install_subscriber() -> String {
    use tracing_subscriber::layer::SubscriberExt;
    let mode = std::env::var("BENCH_TELEMETRY").unwrap_or_else(|_| "json".into());
    let info = || tracing_subscriber::EnvFilter::new("info");
    let log_filter = || infra::telemetry::LogFilter::parse("info").expect("filter");
    let result = match mode.as_str() {
        "off" => return mode,
        "registry" => tracing::subscriber::set_global_default(tracing_subscriber::registry().with(info())),
        "service" => {
            // As infra::telemetry::init without OTEL_EXPORTER_OTLP_ENDPOINT: spans made, nothing exported.
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
            let subscriber = tracing_subscriber::registry()
                .with(infra::telemetry::trace_layer(&provider))
                .with(infra::telemetry::log_layer(Some("rust-app"), log_filter(), std::io::sink));
            tracing::subscriber::set_global_default(subscriber)
        }
        _ => tracing::subscriber::set_global_default(tracing_subscriber::registry().with(infra::telemetry::log_layer(
            Some("rust-app"),
            log_filter(),
            std::io::sink,
        ))),
    };
    result.expect("subscriber");
    mode
}

/// The service, running on the server runtime until `stop` is sent.
struct RunningApp {
    address: SocketAddr,
    settings: Settings,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_app() -> RunningApp {
    let mut env: Vec<(String, String)> = vec![
        ("KAFKA_TOPIC".into(), test_support::unique("bench-users")),
        ("KAFKA_CONSUMER_GROUP".into(), test_support::unique("bench-users-group")),
        // tansu makes a group join wait half the session timeout.
        ("KAFKA_SESSION_TIMEOUT".into(), "6".into()),
        ("RATE_LIMIT_RPS".into(), "1000000".into()),
        ("RATE_LIMIT_BURST".into(), "1000000".into()),
    ];
    // REDIS_CLIENT_CACHE=false measures the service without its client-side cache (every read a round trip).
    if let Ok(enabled) = std::env::var("REDIS_CLIENT_CACHE") {
        env.push(("REDIS_CLIENT_CACHE".into(), enabled));
    }
    let settings = Settings::from_sources(&Sources::from_maps(env, [])).expect("bench configuration is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = Application::build_with_listener(settings.clone(), listener).await.expect("app builds");
    let address = app.local_addr().expect("app address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    RunningApp { address, settings, stop, task }
}

/// Serves `router` on a random loopback port, with the peer address as the service has it.
async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.expect("serve");
    });
    address
}

async fn bare(State(body): State<Bytes>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The bare route, as the service routes it.
fn bare_router(body: Bytes) -> Router {
    Router::new().route("/users/{id}", get(bare)).with_state(body)
}

/// The service's handler body without its state: the user through `Users::get`, as JSON.
async fn cached(State(users): State<Users>, IdPath(id): IdPath) -> Response {
    match users.get(id).await {
        Ok(user) => axum::Json(UserBody::from(user)).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// Starts the server of `side` (the app, at `app`, is already running) and returns its address.
async fn start_side(side: Side, app: SocketAddr, settings: Settings, body: Bytes) -> SocketAddr {
    let config = &settings.config;
    match side {
        Side::App => app,
        Side::Bare => serve(bare_router(body)).await,
        Side::Server => {
            // The service's accept loop (connection clocks, cap, graceful shutdown) instead of `axum::serve`.
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            let served = app::serve::serve(listener, bare_router(body), settings.http.server, std::future::pending());
            tokio::spawn(served);
            address
        }
        Side::Observe => {
            // No trusted proxies, as by default.
            serve(bare_router(body).layer(app::http::observe::ObserveLayer::new(&[]))).await
        }
        Side::Limiter => {
            let redis = RedisClient::connect_lazy(&config.redis).expect("redis client");
            let limiter = RateLimiter::new(redis, "bench-rate", WhenUnavailable::from_config(&config.redis));
            let per_ip = rate_limit::per_ip_limit(settings.http.rate_limit_rps, settings.http.rate_limit_burst);
            let timeout = settings.http.request_timeout;
            let limits = rate_limit::LimitLayer::new(rate_limit::per_ip_limiter(limiter, per_ip), &[], timeout);
            serve(bare_router(body).layer(limits)).await
        }
        Side::Cache => {
            let redis = RedisClient::connect_lazy(&config.redis).expect("redis client");
            let postgres = PostgresClient::connect_lazy(&config.postgres).expect("postgres client");
            // As the service reads users: through its client-side cache when REDIS_CLIENT_CACHE is on.
            let client_cache = ClientCache::start(&config.redis, &[USER_KEY_PREFIX]);
            let cache = RedisUserCache::new(redis.clone(), settings.users.cache_ttl).with_client_cache(client_cache);
            let users = Users::new(
                Arc::new(CachedUserRepository::new(PostgresUsers::new(postgres), cache)),
                Arc::new(RedisSessions::new(redis, settings.sessions.ttl, settings.sessions.max_lifetime)),
            );
            serve(Router::new().route("/users/{id}", get(cached)).with_state(users)).await
        }
    }
}

/// A loopback address of this run's own, the requests' source: the per-IP limiter keys its state by the client
/// address, and 127.0.0.1's is shared with every test running against the local stack. Each request moves that
/// state forward by 1 ms at RATE_LIMIT_RPS=1000000 (the limiter counts whole milliseconds), so 100 000 requests
/// from 127.0.0.1 would leave every other client on 127.0.0.1 refused for 100 s.
fn source_address() -> IpAddr {
    let [a, b, c, ..] = *uuid::Uuid::new_v4().as_bytes();
    IpAddr::from([127, 1 + a % 254, b, 1 + c % 254])
}

/// One keep-alive HTTP/1.1 connection from `source`.
async fn connect(source: IpAddr, address: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let socket = TcpSocket::new_v4().map_err(|err| format!("socket: {err}"))?;
    socket.bind(SocketAddr::new(source, 0)).map_err(|err| format!("bind {source}: {err}"))?;
    let stream = socket.connect(address).await.map_err(|err| format!("connect: {err}"))?;
    stream.set_nodelay(true).map_err(|err| format!("nodelay: {err}"))?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|err| format!("handshake: {err}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One GET; anything but 200 with exactly `expected` is an error.
async fn fetch(sender: &mut SendRequest<Empty<Bytes>>, target: &Target) -> Result<(), String> {
    sender.ready().await.map_err(|err| format!("connection: {err}"))?;
    let request = Request::get(&target.path)
        .header(header::HOST, &target.host)
        .header(header::AUTHORIZATION, &target.authorization)
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("request: {err}"))?;
    let response = sender.send_request(request).await.map_err(|err| format!("send: {err}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|err| format!("body: {err}"))?.to_bytes();
    if status != StatusCode::OK || body.len() != target.expected.len() || body != target.expected {
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("{status}, {} bytes (expected {}): {shown}", body.len(), target.expected.len()));
    }
    Ok(())
}

struct Target {
    source: IpAddr,
    address: SocketAddr,
    host: String,
    path: String,
    /// `Bearer <session id>`, sent to every side alike.
    authorization: String,
    expected: Bytes,
}

/// What one connection did in a round.
#[derive(Default)]
struct Tally {
    latencies: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }
}

/// Keeps every connection of `pool` busy for `length`; returns the tallies and the round's wall time.
async fn round(
    target: &Arc<Target>,
    pool: &mut Vec<Option<SendRequest<Empty<Bytes>>>>,
    length: Duration,
) -> (Tally, Duration) {
    let started = Instant::now();
    let deadline = started + length;
    let tasks: Vec<_> = pool
        .drain(..)
        .map(|mut connection| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let sender = match connection.as_mut() {
                        Some(sender) => sender,
                        None => match connect(target.source, target.address).await {
                            Ok(sender) => connection.insert(sender),
                            Err(err) => {
                                tally.error(err);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    let sent = Instant::now();
                    match fetch(sender, &target).await {
                        Ok(()) => tally.latencies.push(sent.elapsed().as_nanos() as u64),
                        Err(err) => {
                            tally.error(err);
                            connection = None;
                        }
                    }
                }
                (connection, tally)
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let (connection, tally) = task.await.expect("load task");
        pool.push(connection);
        total.latencies.extend(tally.latencies);
        total.errors += tally.errors;
        if let Some(err) = tally.first_error {
            total.first_error.get_or_insert(err);
        }
    }
    (total, started.elapsed())
}

/// CPU time so far: the server runtime's threads, the load generator's, the rest of this process, and
/// redis-server (seconds, `None` when it cannot be asked).
#[derive(Clone, Copy, Default)]
struct Cpu {
    server: Duration,
    client: Duration,
    other: Duration,
    redis: Option<f64>,
}

impl Cpu {
    async fn now(redis: &mut Option<redis::aio::MultiplexedConnection>) -> Cpu {
        let mut cpu = Cpu::default();
        if let Ok(threads) = std::fs::read_dir("/proc/self/task") {
            for thread in threads.flatten() {
                let path = thread.path();
                let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                // schedstat: time on CPU (ns), time waiting to run (ns), time slices.
                let on_cpu = std::fs::read_to_string(path.join("schedstat"))
                    .ok()
                    .and_then(|stat| stat.split_whitespace().next().and_then(|ns| ns.parse().ok()))
                    .map_or(Duration::ZERO, Duration::from_nanos);
                match name.trim() {
                    SERVER_THREAD => cpu.server += on_cpu,
                    CLIENT_THREAD => cpu.client += on_cpu,
                    _ => cpu.other += on_cpu,
                }
            }
        }
        if let Some(conn) = redis {
            let info: Option<String> = redis::cmd("INFO").arg("cpu").query_async(conn).await.ok();
            cpu.redis = info.map(|info| {
                info.lines()
                    .filter_map(|line| {
                        line.strip_prefix("used_cpu_user:").or_else(|| line.strip_prefix("used_cpu_sys:"))
                    })
                    .filter_map(|value| value.trim().parse::<f64>().ok())
                    .sum()
            });
        }
        cpu
    }

    /// What was used from `before` to `self` (threads that ended meanwhile took their time with them).
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            server: self.server.saturating_sub(before.server),
            client: self.client.saturating_sub(before.client),
            other: self.other.saturating_sub(before.other),
            redis: self.redis.zip(before.redis).map(|(after, before)| (after - before).max(0.0)),
        }
    }

    fn add(&mut self, more: Cpu) {
        self.server += more.server;
        self.client += more.client;
        self.other += more.other;
        self.redis = self.redis.zip(more.redis).map(|(a, b)| a + b);
    }
}

/// One side's results over its rounds.
struct Results {
    side: Side,
    target: Arc<Target>,
    pool: Vec<Option<SendRequest<Empty<Bytes>>>>,
    busy: Duration,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<u64>,
    per_round: Vec<f64>,
    cpu: Cpu,
}

impl Results {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.busy.as_secs_f64()
    }

    /// The `q` quantile of the latencies, in milliseconds (the latencies sorted).
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1] as f64 / 1e6
    }
}

/// The sum of `redis_cache_lookups_total{result=...}` in a `/metrics` page.
fn lookups(metrics: &str, result: &str) -> f64 {
    let label = format!("result=\"{result}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with("redis_cache_lookups_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()))
        .sum()
}

async fn scrape(client: &reqwest::Client, app: SocketAddr) -> String {
    let response = client.get(format!("http://{app}/metrics")).send().await.expect("GET /metrics");
    response.text().await.expect("metrics page")
}

/// The bench's user, signed in: its id, session id, and the body of `GET /users/{id}` as the user reads itself.
struct BenchUser {
    id: String,
    token: String,
    body: Bytes,
}

const BENCH_PASSWORD: &str = "correct horse battery staple";

/// Creates the bench's user, signs it in, and reads it twice (the first read fills the cache).
async fn create_user(client: &reqwest::Client, app: SocketAddr) -> BenchUser {
    let email = format!("{}@bench.example.com", test_support::unique("users-get"));
    let created = client
        .post(format!("http://{app}/users"))
        .json(&serde_json::json!({"name": "Bench User", "email": email, "password": BENCH_PASSWORD}))
        .send()
        .await
        .expect("POST /users");
    let status = created.status();
    let created: serde_json::Value = created.json().await.expect("POST /users body");
    assert_eq!(status, 201, "POST /users: {created}");
    let id = created["id"].as_str().expect("user id").to_string();
    let token = sign_in(client, app, &email).await;
    let mut body = Bytes::new();
    for _ in 0..2 {
        let response =
            client.get(format!("http://{app}/users/{id}")).bearer_auth(&token).send().await.expect("GET /users/{id}");
        assert_eq!(response.status(), 200, "GET /users/{id}");
        body = response.bytes().await.expect("user body");
    }
    BenchUser { id, token, body }
}

/// Signs the bench's user in; its session id (the session cookie's value).
async fn sign_in(client: &reqwest::Client, app: SocketAddr, email: &str) -> String {
    let response = client
        .post(format!("http://{app}/sessions"))
        .json(&serde_json::json!({"email": email, "password": BENCH_PASSWORD}))
        .send()
        .await
        .expect("POST /sessions");
    assert_eq!(response.status(), 201, "POST /sessions");
    let cookie = response.headers().get(header::SET_COOKIE).expect("session cookie").to_str().expect("ASCII");
    let pair = cookie.split(';').next().and_then(|pair| pair.split_once('='));
    pair.map(|(_, value)| value.to_string()).expect("session cookie value")
}

fn main() {
    let options = Options::from_env();
    let telemetry = install_subscriber();
    // The service's runtime as `rust-app serve` builds it (one worker per core), and the load generator's.
    let server = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .expect("server runtime");
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.client_threads)
        .thread_name(CLIENT_THREAD)
        .enable_all()
        .build()
        .expect("load generator runtime");
    let app = server.block_on(start_app());
    let failed = client_runtime.block_on(bench(&options, &telemetry, &server, &app));
    let RunningApp { stop, task, .. } = app;
    let _ = stop.send(());
    match server.block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await }) {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => eprintln!("the app stopped with an error: {err:#}"),
        Ok(Err(err)) => eprintln!("the app task failed: {err}"),
        Err(_) => eprintln!("the app did not stop within 20 s"),
    }
    server.shutdown_timeout(Duration::from_secs(1));
    if failed {
        std::process::exit(1);
    }
}

/// Runs the rounds and prints the tables; true when the bench failed (errors, or GETs that missed the cache).
async fn bench(options: &Options, telemetry: &str, server: &Runtime, app: &RunningApp) -> bool {
    let source = source_address();
    let http = reqwest::Client::builder().local_address(source).build().expect("HTTP client");
    let BenchUser { id, token, body } = create_user(&http, app.address).await;
    let mut redis = match redis::Client::open(REDIS_URL) {
        Ok(client) => client.get_multiplexed_async_connection().await.ok(),
        Err(_) => None,
    };

    let mut sides = Vec::new();
    for &side in &options.sides {
        let started = server.spawn(start_side(side, app.address, app.settings.clone(), body.clone()));
        let address = started.await.expect("start server");
        let target = Arc::new(Target {
            source,
            address,
            host: address.to_string(),
            path: format!("/users/{id}"),
            authorization: format!("Bearer {token}"),
            expected: body.clone(),
        });
        let mut pool = Vec::with_capacity(options.concurrency);
        for _ in 0..options.concurrency {
            pool.push(Some(connect(source, address).await.expect("connect")));
        }
        let (warm, _) = round(&target, &mut pool, WARM_UP).await;
        if warm.errors > 0 {
            println!("warm-up of {}: {} errors, first: {:?}", side.name(), warm.errors, warm.first_error);
        }
        sides.push(Results {
            side,
            target,
            pool,
            busy: Duration::ZERO,
            requests: 0,
            errors: 0,
            first_error: None,
            latencies: Vec::new(),
            per_round: Vec::new(),
            cpu: Cpu { redis: Some(0.0), ..Cpu::default() },
        });
    }

    println!(
        "GET /users/{{id}} (Redis cache hit): rust-app vs a bare axum handler serving the same {} bytes",
        body.len()
    );
    println!(
        "{} keep-alive connections per side from {source}, {} s rounds, {} rounds per side alternating, \
         telemetry: {telemetry}, load generator: {} threads",
        options.concurrency, options.seconds, options.rounds, options.client_threads
    );
    let before = scrape(&http, app.address).await;
    let length = Duration::from_secs_f64(options.seconds);
    for round_index in 0..options.rounds {
        let order: Vec<usize> =
            if round_index % 2 == 0 { (0..sides.len()).collect() } else { (0..sides.len()).rev().collect() };
        for index in order {
            let results = &mut sides[index];
            let cpu_before = Cpu::now(&mut redis).await;
            let (tally, wall) = round(&results.target, &mut results.pool, length).await;
            results.cpu.add(Cpu::now(&mut redis).await.since(cpu_before));
            let done = tally.latencies.len() as u64;
            results.per_round.push(done as f64 / wall.as_secs_f64());
            results.busy += wall;
            results.requests += done;
            results.errors += tally.errors;
            if results.first_error.is_none() {
                results.first_error = tally.first_error;
            }
            results.latencies.extend(tally.latencies);
        }
    }
    let after = scrape(&http, app.address).await;
    for results in &mut sides {
        results.latencies.sort_unstable();
    }

    // Per round: each side's req/s and its ratio to bare in the same round.
    print!("\n{:<6}", "round");
    for results in &sides {
        print!(" {:>14}", format!("{} req/s", results.side.name()));
    }
    for results in sides.iter().skip(1) {
        print!(" {:>18}", format!("{}/bare", results.side.name()));
    }
    println!();
    for round_index in 0..options.rounds {
        print!("{:<6}", round_index + 1);
        for results in &sides {
            print!(" {:>14.0}", results.per_round[round_index]);
        }
        for results in sides.iter().skip(1) {
            print!(" {:>18.3}", results.per_round[round_index] / sides[0].per_round[round_index]);
        }
        println!();
    }

    let bare_rate = sides[0].rate();
    println!(
        "\n{:<13} {:>9} {:>10} {:>8} {:>8} {:>7} {:>7}",
        "side", "requests", "req/s", "p50 ms", "p99 ms", "ratio", "errors"
    );
    for results in &sides {
        println!(
            "{:<13} {:>9} {:>10.0} {:>8.3} {:>8.3} {:>7.3} {:>7}",
            results.side.name(),
            results.requests,
            results.rate(),
            results.quantile_ms(0.50),
            results.quantile_ms(0.99),
            results.rate() / bare_rate,
            results.errors
        );
    }

    println!("\nCPU per request, µs (server runtime, load generator, rest of the process, redis-server):");
    println!("{:<13} {:>8} {:>8} {:>8} {:>8} {:>8}", "side", "server", "loadgen", "other", "redis", "total");
    for results in &sides {
        let per = |time: f64| time * 1e6 / results.requests.max(1) as f64;
        let redis = results.cpu.redis.map(per);
        let total = per(results.cpu.server.as_secs_f64() + results.cpu.client.as_secs_f64())
            + per(results.cpu.other.as_secs_f64())
            + redis.unwrap_or(0.0);
        println!(
            "{:<13} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>8.1}",
            results.side.name(),
            per(results.cpu.server.as_secs_f64()),
            per(results.cpu.client.as_secs_f64()),
            per(results.cpu.other.as_secs_f64()),
            redis.map_or("n/a".to_string(), |redis| format!("{redis:.1}")),
            total
        );
    }

    // Every GET through the cache must have been a hit.
    let through_cache: u64 = sides.iter().map(|r| r.side.cache_lookups() * r.requests).sum();
    let grew = |result: &str| lookups(&after, result) - lookups(&before, result);
    let (hits, others) = (grew("hit"), grew("miss") + grew("error") + grew("bypass"));
    println!(
        "\n/metrics: redis_cache_lookups_total{{result=\"hit\"}} grew by {hits:.0} for {through_cache} lookups of \
         GETs through the cache; miss+error+bypass grew by {others:.0}"
    );
    let mut failed = false;
    if hits != through_cache as f64 || others != 0.0 {
        println!("!!! NOT EVERY GET WAS A CACHE HIT: the app's figures do not measure the cached path");
        failed = true;
    }
    for results in &sides {
        if results.errors > 0 {
            println!(
                "!!! {} FAILED: {} of {} requests did not get 200 with the expected body; first: {}",
                results.side.name(),
                results.errors,
                results.errors + results.requests,
                results.first_error.as_deref().unwrap_or("?")
            );
            failed = true;
        }
    }

    let deleted = http.delete(format!("http://{}/users/{id}", app.address)).bearer_auth(&token).send().await;
    if !deleted.is_ok_and(|response| response.status() == 204) {
        println!("could not delete the bench user {id}");
    }
    if let Some(conn) = redis.as_mut() {
        // The limiters' state for this run's address (it would expire by itself within a few minutes).
        let keys = [format!("rate:ip:{source}"), format!("bench-rate:ip:{source}")];
        let _: Result<u64, _> = redis::cmd("DEL").arg(&keys).query_async(conn).await;
    }
    failed
}
