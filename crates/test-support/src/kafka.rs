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
    child: Child,
}

impl PrivateKafka {
    /// Starts the broker listening on and advertising `127.0.0.1:port`, and waits until it accepts TCP
    /// connections. Started as `scripts/stack` does, without the variables tansu would also read (an OTLP
    /// endpoint, a schema registry, a cluster id, a log filter meant for the tests).
    pub async fn start(port: u16) -> Self {
        Self::start_advertising(port, port).await
    }

    /// Like [`start`](Self::start), but telling clients (in metadata) to connect to `127.0.0.1:advertised`:
    /// for a broker reached through something in front of it, such as a [`TlsTerminator`] on that port.
    ///
    /// [`TlsTerminator`]: crate::tls::TlsTerminator
    pub async fn start_advertising(port: u16, advertised: u16) -> Self {
        let binary = tansu_binary();
        assert!(binary.exists(), "{} is missing: run scripts/stack up", binary.display());
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised_url])
            .args(["--storage-engine", "memory://tansu/"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("CLUSTER_ID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let mut broker = PrivateKafka { port, child };
        let deadline = Instant::now() + READY_WITHIN;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("tansu exited during startup on port {port}: {status}");
            }
            assert!(Instant::now() < deadline, "tansu does not accept connections on port {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broker
    }

    /// `KAFKA_BROKERS` for clients of this broker.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
