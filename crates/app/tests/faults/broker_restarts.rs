//! The broker killed (-9) and restarted again and again while the service registers users — each
//! registration an outbox event the relay publishes and the consumer applies. The local broker keeps nothing
//! across a restart: it comes back without topics, groups or producer ids, which is what made librdkafka's
//! idempotent producer fail for good and the relay stop publishing (docs/reliability.md, "Broker restarts and
//! the librdkafka crash"). The service must neither crash nor stay stuck: after the last restart, events
//! written before and after it are published and consumed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use test_support::kafka::PrivateKafka;
use test_support::postgres::TestDb;
use test_support::{eventually, free_port, unique};

/// Broker restarts in one run (the crash showed about once in a dozen).
const RESTARTS: u32 = 50;
/// After the last restart: the relay's backoff, a group join and the topic's re-creation fit many times in it.
const RECOVERED_WITHIN: Duration = Duration::from_secs(90);

/// `rust-app serve` as a process of its own, killed if still running when dropped.
struct Service {
    child: Child,
    address: String,
    workdir: test_support::fakes::TempDir,
}

impl Service {
    /// Starts the binary with a clean environment plus `env`, in a working directory of its own (where a core
    /// dump would land), and waits until it answers `/livez`.
    async fn start(env: &[(&str, &str)]) -> Service {
        let port = free_port().to_string();
        let workdir = test_support::fakes::TempDir::new();
        // Core dumps on: a crash leaves its core file and backtrace behind (`test_support::crash`).
        let mut command = test_support::crash::command_with_core_dumps(Path::new(env!("CARGO_BIN_EXE_rust-app")));
        command.arg("serve").env_clear().current_dir(&workdir.0);
        if let Ok(path) = std::env::var("PATH") {
            command.env("PATH", path);
        }
        command.envs([("APP_HOST", "127.0.0.1"), ("APP_PORT", port.as_str())]).envs(env.iter().copied());
        // To a file, not a pipe: the logs of 50 outages would fill a pipe nobody reads and block the service.
        let log = std::fs::File::create(workdir.0.join("service.log")).expect("log file");
        let stderr = log.try_clone().expect("log file");
        let child = command.stdout(Stdio::from(log)).stderr(Stdio::from(stderr)).spawn().expect("spawn rust-app");
        let service = Service { child, address: format!("http://127.0.0.1:{port}"), workdir };
        let live = async || reqwest::get(format!("{}/livez", service.address)).await.is_ok_and(|r| r.status() == 200);
        assert!(eventually(Duration::from_secs(30), live).await, "rust-app did not start");
        service
    }

    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGTERM, the exit (bounded), and everything it printed.
    async fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.exit_status() {
                break status;
            }
            assert!(Instant::now() < deadline, "rust-app did not exit within 30 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (status, self.output())
    }

    /// Everything it printed so far.
    fn output(&self) -> String {
        std::fs::read_to_string(self.workdir.0.join("service.log")).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Registers a user; its id when the service answered 201.
async fn register(http: &reqwest::Client, address: &str, n: usize) -> Option<String> {
    let email = format!("{}@example.com", unique(&format!("restart-{n}")));
    let body = serde_json::json!({"name": format!("User {n}"), "email": email, "password": "correct horse battery"});
    let response = http.post(format!("{address}/users")).json(&body).send().await.ok()?;
    if response.status() != 201 {
        return None;
    }
    let user: serde_json::Value = response.json().await.ok()?;
    user["id"].as_str().map(str::to_string)
}

/// Registrations in a loop until `stop`: the outbox fills while the broker comes and goes.
fn spawn_load(address: String, stop: Arc<AtomicBool>, registered: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            if register(&http, &address, n).await.is_some() {
                registered.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Keeps the service's log past the test (its working directory is removed) for a failure to point at.
fn keep_log(output: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}.log", unique("broker-restarts")));
    match std::fs::write(&path, output) {
        Ok(()) => path.display().to_string(),
        Err(err) => format!("not kept: {err}"),
    }
}

fn count(db: &TestDb, query: &str) -> i64 {
    db.query(query).trim().parse().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_broker_restarts_under_load_neither_crash_the_service_nor_stop_its_events() {
    let _alone = crate::ONE_AT_A_TIME.lock().await;
    let db = TestDb::create();
    let port = free_port();
    let mut broker = PrivateKafka::start(port).await;
    let (dsn, brokers, topic, group) = (db.dsn(), broker.brokers(), unique("restarts"), unique("restarts-group"));
    let service = Service::start(&[
        ("POSTGRES_DSN", dsn.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        ("KAFKA_SESSION_TIMEOUT", "6"),
        ("KAFKA_DELIVERY_TIMEOUT", "5s"),
        ("OUTBOX_POLL_INTERVAL", "100ms"),
        ("RATE_LIMIT_RPS", "1000000"),
        ("RATE_LIMIT_BURST", "1000000"),
    ])
    .await;
    let mut service = service;
    let (stop_load, registered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let load = spawn_load(service.address.clone(), stop_load.clone(), registered.clone());

    let started = Instant::now();
    for restart in 1..=RESTARTS {
        // Up for 0.3–1.5 s (varied, so the kill lands in different phases: joining, producing, idle), down
        // for 0–200 ms.
        tokio::time::sleep(Duration::from_millis(300 + u64::from(restart * 373 % 1200))).await;
        drop(broker);
        tokio::time::sleep(Duration::from_millis(u64::from(restart % 3) * 100)).await;
        broker = PrivateKafka::start(port).await;
        if let Some(status) = service.exit_status() {
            let log = keep_log(&service.output());
            let crash =
                test_support::crash::report(status, Path::new(env!("CARGO_BIN_EXE_rust-app")), &service.workdir.0);
            panic!("rust-app died after broker restart {restart}: {status}{crash}; its log: {log}");
        }
    }
    let restarts_took = started.elapsed();
    stop_load.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    assert!(registered.load(Ordering::Relaxed) > 0, "no registration succeeded during the restarts");

    // After the last restart: a new user's event is published by the relay and applied by the consumer, and
    // so is every event written during the restarts.
    let recovery = Instant::now();
    let http = reqwest::Client::new();
    let user = register(&http, &service.address, 0).await.expect("registered after the last restart");
    let applied = format!("SELECT count(*) FROM user_activity WHERE user_id = '{user}'");
    let consumed = eventually(RECOVERED_WITHIN, async || count(&db, &applied) >= 1).await;
    let consumed_after = recovery.elapsed();
    let pending = "SELECT count(*) FROM outbox WHERE sent_at IS NULL";
    let drained = eventually(RECOVERED_WITHIN, async || count(&db, pending) == 0).await;
    eprintln!(
        "{RESTARTS} broker restarts in {restarts_took:?}, {} registrations; a new event consumed {consumed_after:?} \
         after the last restart, outbox drained after {:?}",
        registered.load(Ordering::Relaxed),
        recovery.elapsed()
    );
    let (status, output) = service.stop().await;
    let log = if consumed && drained { String::new() } else { keep_log(&output) };
    assert!(consumed, "the event of a user registered after the last restart was not consumed; log: {log}");
    assert!(drained, "{} event(s) still pending after the last restart; log: {log}", count(&db, pending));
    assert!(status.success(), "rust-app exited with {status}");
    assert!(!output.contains("panicked"), "a panic:\n{output}");
    drop(broker);
}
