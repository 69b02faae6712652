//! A Kafka-protocol broker of the test's own, for tests that need a broker to be missing first and to appear
//! later on the same address (a client configured before it exists): the shared broker is never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the broker may take to accept connections (it is ready in milliseconds).
const READY_WITHIN: Duration = Duration::from_secs(10);

/// The local stack's tansu binary (`scripts/stack up` installs it in `.stack/bin`).
fn tansu_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.stack/bin/tansu")
}

/// tansu on `127.0.0.1:port` with memory storage (it starts empty: no topics, no groups), killed and reaped
/// when dropped.
pub struct PrivateKafka {
    /// The loopback port it listens on, chosen by the test (usually one its clients already point at).
    pub port: u16,
    /// The port it tells clients to connect to: `port`, or a proxy's in front of it.
    pub advertised_port: u16,
    child: Child,
}

impl PrivateKafka {
    /// Starts the broker listening on and advertising `127.0.0.1:port`, and waits until it accepts TCP
    /// connections. Started as `scripts/stack` does, without the variables tansu would also read (an OTLP
    /// endpoint, a schema registry, a cluster id, a log filter meant for the tests).
    pub async fn start(port: u16) -> Self {
        Self::start_advertising(port, port).await
    }

    /// Starts the broker on `127.0.0.1:port`, telling clients to connect to `127.0.0.1:advertised_port` (a proxy
    /// in front of it: the clients' traffic then all goes through the proxy, also after the metadata request).
    pub async fn start_advertising(port: u16, advertised_port: u16) -> Self {
        let mut broker = PrivateKafka { port, advertised_port, child: spawn_tansu(port, advertised_port) };
        broker.wait_ready().await;
        broker
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tansu exited during startup on port {}: {status}", self.port);
            }
            assert!(Instant::now() < deadline, "tansu does not accept connections on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `KAFKA_BROKERS` for clients of this broker.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port)
    }

    /// SIGKILL, and reaped: the broker is gone (and, memory storage, everything it held).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and reaped (SIGKILL after 10 s): a graceful stop.
    pub fn terminate(&mut self) {
        crate::terminate(&mut self.child, Duration::from_secs(10));
    }

    /// Starts it again (empty) on the same ports after [`PrivateKafka::kill`] or [`PrivateKafka::terminate`].
    pub async fn start_again(&mut self) {
        self.kill();
        self.child = spawn_tansu(self.port, self.advertised_port);
        self.wait_ready().await;
    }
}

fn spawn_tansu(port: u16, advertised_port: u16) -> Child {
    let binary = tansu_binary();
    assert!(binary.exists(), "{} is missing: run scripts/stack up", binary.display());
    let listener = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{advertised_port}");
    Command::new(&binary)
        .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &advertised])
        .args(["--storage-engine", "memory://tansu/"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("SCHEMA_REGISTRY")
        .env_remove("CLUSTER_ID")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()))
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        self.kill();
    }
}
