//! Test helpers: the app spawned in-process on a random port, the binary spawned as a process, private Redis
//! servers the tests may kill, and fake dependencies (a closed port, a black hole that never answers).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use app::startup::Application;
use infra::config::{Config, Sources};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A name no other test uses (topics, groups...).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// The service running in this process, stopped when dropped.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts the service on a random loopback port against the local stack, with `overrides` applied on top of
/// the defaults. Every app gets its own Kafka topic unless the test names one.
pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    let topic = unique("health-test");
    let mut env: Vec<(String, String)> = vec![("KAFKA_TOPIC".into(), topic)];
    env.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_sources(&Sources::from_maps(env, [])).expect("test configuration is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = Application::build_with_listener(config, listener).await.expect("app builds");
    let address = format!("http://{}", app.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp { address, client: reqwest::Client::new(), stop: Some(stop), handle: Some(handle) }
}

impl TestApp {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).send().await.expect("request sent")
    }

    /// GET `path` and decode the JSON body, returning the status too.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// Polls `path` until `done` accepts the answer, for at most `limit`.
    pub async fn eventually<F>(&self, path: &str, limit: Duration, done: F) -> (u16, serde_json::Value)
    where
        F: Fn(u16, &serde_json::Value) -> bool,
    {
        let deadline = Instant::now() + limit;
        loop {
            let (status, body) = self.get_json(path).await;
            if done(status, &body) || Instant::now() >= deadline {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the app the way SIGTERM would and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("app task").expect("app stopped cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A private redis-server on a free loopback port, killed when dropped. For tests that stop Redis: the
/// shared stack's server is never touched.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/stack up installs it)");
        let server = RedisServer { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.command::<String>(&mut redis::cmd("PING")).is_err() {
            assert!(Instant::now() < deadline, "private redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs one command on a fresh connection.
    pub fn command<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        cmd.query(&mut conn)
    }

    /// How many times the server has executed `command` (from INFO commandstats).
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.command(redis::cmd("INFO").arg("commandstats")).expect("INFO");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP server that accepts connections and never answers: a dependency that hangs.
pub struct BlackHole {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        BlackHole { addr, task }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `rust-app` binary with a clean environment (only PATH and HOME kept) and a private working directory,
/// so neither the developer's environment nor a `.env` in the repository leaks into the test.
pub fn binary(env: &[(&str, &str)], workdir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rust-app"));
    command.env_clear().current_dir(workdir);
    for keep in ["PATH", "HOME"] {
        if let Ok(value) = std::env::var(keep) {
            command.env(keep, value);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique("rust-app-test"));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
