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

    /// SIGTERM (redis-server shuts down cleanly), and reaped; [`RedisServer::restart`] starts it again, empty.
    pub fn terminate(&mut self) {
        crate::terminate(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_redis(port: u16) -> Child {
    spawn_redis_with(port, &[])
}

fn spawn_redis_with(port: u16, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/stack up installs it)")
}

/// A private Redis Cluster of three masters (no replicas) on free loopback ports, built with
/// `redis-cli --cluster create`; killed and removed when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: TempDir,
}

/// A master of a [`RedisCluster`]: its id, port and slot ranges, from CLUSTER NODES.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = TempDir::new();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_port();
                let config_file = dir.0.join(format!("nodes-{port}.conf"));
                let args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    config_file.to_str().expect("utf-8 path"),
                    "--cluster-node-timeout",
                    "2000",
                    "--dir",
                    dir.0.to_str().expect("utf-8 path"),
                ];
                let server = RedisServer { port, child: spawn_redis_with(port, &args) };
                server.wait_ready();
                server
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli on PATH (scripts/stack up installs it)");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_ok();
        cluster
    }

    /// The seed list for REDIS_ADDR.
    pub fn addr(&self) -> String {
        self.nodes.iter().map(RedisServer::addr).collect::<Vec<_>>().join(",")
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let info: String = node.command(redis::cmd("CLUSTER").arg("INFO")).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster did not become ok on port {}", node.port);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The masters and their slots.
    pub fn masters(&self) -> Vec<ClusterNode> {
        let nodes: String = self.nodes[0].command(redis::cmd("CLUSTER").arg("NODES")).expect("CLUSTER NODES");
        nodes
            .lines()
            .filter(|line| line.contains("master"))
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port = fields[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).expect("node port");
                let slots = fields[8..]
                    .iter()
                    .filter(|range| !range.starts_with('['))
                    .map(|range| match range.split_once('-') {
                        Some((a, b)) => (a.parse().expect("slot"), b.parse().expect("slot")),
                        None => (range.parse().expect("slot"), range.parse().expect("slot")),
                    })
                    .collect();
                ClusterNode { id: fields[0].to_string(), port, slots }
            })
            .collect()
    }

    fn node(&self, port: u16) -> &RedisServer {
        self.nodes.iter().find(|n| n.port == port).expect("a node of this cluster")
    }

    /// Moves the slot of `key` (and its keys) to another master, as `redis-cli --cluster reshard` does:
    /// IMPORTING / MIGRATING, MIGRATE, then SETSLOT NODE everywhere. Clients holding the old slot map get a
    /// MOVED. Returns the port of the new owner.
    pub fn move_slot_of(&self, key: &str) -> u16 {
        let slot: u16 = self.nodes[0].command(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).expect("KEYSLOT");
        let masters = self.masters();
        let owner = masters.iter().find(|m| m.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))).expect("owner");
        let target = masters.iter().find(|m| m.id != owner.id).expect("another master");
        let (from, to) = (self.node(owner.port), self.node(target.port));
        let setslot = |node: &RedisServer, state: &str, id: &str| {
            node.command::<()>(redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(state).arg(id)).expect("SETSLOT")
        };
        setslot(to, "IMPORTING", &owner.id);
        setslot(from, "MIGRATING", &target.id);
        let keys: Vec<String> =
            from.command(redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(1000)).expect("GETKEYSINSLOT");
        if !keys.is_empty() {
            from.command::<()>(
                redis::cmd("MIGRATE").arg("127.0.0.1").arg(to.port).arg("").arg(0).arg(5000).arg("KEYS").arg(&keys),
            )
            .expect("MIGRATE");
        }
        for node in [to, from] {
            setslot(node, "NODE", &target.id);
        }
        for node in self.nodes.iter().filter(|n| n.port != from.port && n.port != to.port) {
            setslot(node, "NODE", &target.id);
        }
        target.port
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
