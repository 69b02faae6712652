//! Fake and private dependencies: a redis-server of the test's own, a TCP server that never answers, and a
//! temporary directory.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{free_port, unique};

/// A private redis-server on a free loopback port, killed when dropped. For tests that stop Redis: the
/// shared stack's server is never touched.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = free_port();
        let server = RedisServer { port, child: spawn_redis(port) };
        server.wait_ready();
        server
    }

    /// Starts the server again on the same port after [`RedisServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_redis(self.port);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command::<String>(&mut redis::cmd("PING")).is_err() {
            assert!(Instant::now() < deadline, "private redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Client connections the server has open (CLIENT LIST), excluding the one asking.
    pub fn clients(&self) -> usize {
        let list: String = self.command(redis::cmd("CLIENT").arg("LIST")).expect("CLIENT LIST");
        list.lines().count().saturating_sub(1)
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

fn spawn_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/stack up installs it)")
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

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique("rust_app_test"));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
