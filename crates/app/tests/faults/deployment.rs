//! A deployment of the service for fault tests: a private PostgreSQL, Redis and broker, each behind a TCP proxy the
//! test controls, and two `rust-app serve` processes on the one database, sharing one topic and consumer group.
//! Nothing of the shared stack is touched.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use test_support::fakes::{RedisServer, TempDir};
use test_support::kafka::PrivateKafka;
use test_support::postgres::PrivatePostgres;
use test_support::proxy::TcpProxy;
use test_support::{free_port, unique};

/// How long an instance may take to answer `/livez` after it was started.
const START_WITHIN: Duration = Duration::from_secs(60);

/// `rust-app serve` as a process of its own. Its output goes to a file (a pipe nobody reads would fill up under
/// load and block the service); killed and reaped if the test ends before it exited.
pub struct Instance {
    /// `http://127.0.0.1:port`.
    pub address: String,
    child: Child,
    env: Vec<(String, String)>,
    log: PathBuf,
    workdir: TempDir,
}

impl Instance {
    /// Starts the binary with `env` (a clean environment otherwise) and waits until it answers `/livez`.
    pub async fn start(env: Vec<(String, String)>) -> Instance {
        let workdir = TempDir::new();
        let log = workdir.0.join("output.log");
        let port = env.iter().find(|(name, _)| name == "APP_PORT").map(|(_, port)| port.clone()).expect("APP_PORT");
        let child = spawn(&env, &workdir.0, &log);
        let mut instance = Instance { address: format!("http://127.0.0.1:{port}"), child, env, log, workdir };
        instance.wait_live().await;
        instance
    }

    async fn wait_live(&mut self) {
        let deadline = Instant::now() + START_WITHIN;
        while !reqwest::get(format!("{}/livez", self.address)).await.is_ok_and(|r| r.status() == 200) {
            if let Some(status) = self.exited() {
                panic!("rust-app exited during startup ({status}):\n{}", self.output());
            }
            assert!(Instant::now() < deadline, "rust-app did not start:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts it again, same settings and port, after it exited; its output is appended to the same file.
    pub async fn start_again(&mut self) {
        assert!(self.exited().is_some(), "start_again needs the instance to have exited");
        self.child = spawn(&self.env, &self.workdir.0, &self.log);
        self.wait_live().await;
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Its exit status, if it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the exit, bounded.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(Instant::now() < deadline, "rust-app did not exit within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// For an instance that died of a signal: where its core file went and the backtrace of every thread.
    pub fn crash_report(&self, status: ExitStatus) -> String {
        test_support::crash::report(status, std::path::Path::new(env!("CARGO_BIN_EXE_rust-app")), &self.workdir.0)
    }

    /// Everything it printed so far (every run).
    pub fn output(&self) -> String {
        std::fs::read(&self.log).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(env: &[(String, String)], workdir: &std::path::Path, log: &std::path::Path) -> Child {
    let output = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("instance log");
    let errors: File = output.try_clone().expect("instance log");
    // Core dumps on: a crash leaves its core file and backtrace behind (see `crash_report`).
    let mut command =
        test_support::crash::command_with_core_dumps(std::path::Path::new(env!("CARGO_BIN_EXE_rust-app")));
    command.arg("serve").env_clear().current_dir(workdir);
    for keep in ["PATH", "HOME"] {
        if let Ok(value) = std::env::var(keep) {
            command.env(keep, value);
        }
    }
    command.envs(env.iter().map(|(name, value)| (name, value)));
    command.stdin(Stdio::null()).stdout(output).stderr(errors).spawn().expect("spawn rust-app")
}

/// The dependencies, their proxies and two instances.
pub struct Deployment {
    pub postgres: PrivatePostgres,
    pub redis: RedisServer,
    pub kafka: PrivateKafka,
    pub postgres_proxy: TcpProxy,
    pub redis_proxy: TcpProxy,
    pub kafka_proxy: TcpProxy,
    pub instances: Vec<Instance>,
}

impl Deployment {
    /// Starts everything; `extra` settings apply to both instances.
    pub async fn start(extra: &[(&str, &str)]) -> Deployment {
        let postgres = tokio::task::spawn_blocking(|| PrivatePostgres::start(&["max_connections = 200"], None))
            .await
            .expect("PostgreSQL starts");
        let redis = tokio::task::spawn_blocking(RedisServer::start).await.expect("Redis starts");
        let postgres_proxy = TcpProxy::start(loopback(postgres.port)).await;
        let redis_proxy = TcpProxy::start(loopback(redis.port)).await;
        // The broker advertises the proxy, so that all of the clients' traffic goes through it.
        let kafka_port = free_port();
        let kafka_proxy = TcpProxy::start(loopback(kafka_port)).await;
        let kafka = PrivateKafka::start_advertising(kafka_port, kafka_proxy.port()).await;
        let mut deployment =
            Deployment { postgres, redis, kafka, postgres_proxy, redis_proxy, kafka_proxy, instances: Vec::new() };
        let env = deployment.instance_env(extra);
        for _ in 0..2 {
            let mut own = env.clone();
            own.push(("APP_PORT".into(), free_port().to_string()));
            // One at a time: the first applies the migrations.
            deployment.instances.push(Instance::start(own).await);
        }
        deployment
    }

    fn instance_env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let dsn =
            format!("postgres://postgres:not-used@127.0.0.1:{}/postgres?sslmode=disable", self.postgres_proxy.port());
        let settings = [
            ("APP_HOST", "127.0.0.1".to_string()),
            ("POSTGRES_DSN", dsn),
            ("REDIS_ADDR", format!("127.0.0.1:{}", self.redis_proxy.port())),
            ("KAFKA_BROKERS", self.kafka.brokers()),
            ("KAFKA_TOPIC", unique("faults")),
            ("KAFKA_CONSUMER_GROUP", unique("faults-group")),
            // tansu makes a group join wait half the session timeout.
            ("KAFKA_SESSION_TIMEOUT", "6".to_string()),
            // The load comes from one address: only the faults may refuse requests.
            ("RATE_LIMIT_RPS", "1000000".to_string()),
            ("RATE_LIMIT_BURST", "1000000".to_string()),
            ("LOGIN_RATE_LIMIT", "10000".to_string()),
            ("LOGIN_ACCOUNT_RATE_LIMIT", "100000".to_string()),
            ("SHUTDOWN_TIMEOUT", "15".to_string()),
            // A send hung by a broker restart is given up (and the producer replaced) within 10 s rather than the
            // default 30 s: the matrix watches recovery for 45 s, and one hung round must not use most of that.
            ("KAFKA_DELIVERY_TIMEOUT", "10".to_string()),
            // Shorter than the load's client timeout: a request held by a fault is answered (503/504).
            ("HTTP_REQUEST_TIMEOUT", "8".to_string()),
            ("OTEL_SERVICE_NAME", "rust-app-faults".to_string()),
        ];
        let mut env: Vec<(String, String)> =
            settings.into_iter().map(|(name, value)| (name.to_string(), value)).collect();
        env.extend(extra.iter().map(|(name, value)| (name.to_string(), value.to_string())));
        env
    }

    /// The instances' addresses.
    pub fn addresses(&self) -> Vec<String> {
        self.instances.iter().map(|instance| instance.address.clone()).collect()
    }

    /// Runs SQL on the private PostgreSQL directly (not through the proxy); psql's unaligned rows, `|`-separated.
    pub async fn sql(&self, statement: &str) -> Result<Vec<String>, String> {
        let dsn = format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable", self.postgres.port);
        let statement = statement.to_string();
        tokio::task::spawn_blocking(move || {
            let output = Command::new("psql")
                .args([dsn.as_str(), "-X", "-q", "-t", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", &statement])
                .output()
                .map_err(|err| format!("psql: {err}"))?;
            if !output.status.success() {
                return Err(String::from_utf8_lossy(&output.stderr).into_owned());
            }
            Ok(String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect())
        })
        .await
        .expect("psql task")
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
