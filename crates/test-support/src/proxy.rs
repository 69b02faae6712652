//! A TCP proxy of the test's own in front of a dependency, to fault the network between the service and it without
//! touching the dependency: forward, cut (connections stay open, nothing passes either way — a partition), or
//! add latency to every chunk in both directions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How much one read takes from a socket.
const CHUNK: usize = 16 * 1024;
/// Chunks queued per direction before the proxy stops reading (back-pressure, as a full TCP window).
const QUEUED_CHUNKS: usize = 256;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Passes everything on at once.
    Forward,
    /// Accepts and holds connections but passes nothing on, either way: a network partition. What was sent
    /// meanwhile arrives once it heals (as TCP retransmits it), unless a side gave up on the connection.
    Cut,
    /// Delivers every chunk this long after it was read, in both directions.
    Latency(Duration),
}

/// A proxy from a loopback port to `upstream`; stopped (every connection closed) when dropped. Needs a multi-thread
/// runtime when the test also blocks its thread.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_on(0, upstream).await
    }

    /// A proxy on loopback `port` (0: any free one) in front of `upstream`: a broker must advertise the proxy's
    /// address, so its port may have to be known before the broker starts.
    pub async fn start_on(port: u16, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, watching) = watch::channel(Mode::Forward);
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept(listener, upstream, watching, connections.clone()));
        TcpProxy { addr, mode, connections, task }
    }

    /// Switches every connection, open or future, to `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // The accept task owns every connection's tasks: aborting it drops (closes) them all.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>, count: Arc<AtomicUsize>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                count.fetch_add(1, Ordering::Relaxed);
                connections.spawn(relay(client, upstream, mode.clone()));
            }
            // Reaps finished connections so the set does not grow over a long test.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One client connection: connects upstream (a refused upstream closes the client), then pumps both ways until
/// either side closes.
async fn relay(client: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut pumps = JoinSet::new();
    pumps.spawn(pump(client_read, server_write, mode.clone()));
    pumps.spawn(pump(server_read, client_write, mode));
    // One direction ending ends the connection: dropping the set closes the other.
    let _ = pumps.join_next().await;
}

/// Reads chunks from `from` and delivers them to `to` as `mode` says: a reader queues each chunk with the time it
/// was read, a writer delivers it once the mode lets it (not cut, latency elapsed).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUED_CHUNKS);
    let reader = async move {
        let mut buffer = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if queue.send((Instant::now(), buffer[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((read_at, chunk)) = queued.recv().await {
            loop {
                let current = *mode.borrow_and_update();
                match current {
                    Mode::Cut => {
                        if mode.changed().await.is_err() {
                            return;
                        }
                    }
                    Mode::Forward => break,
                    Mode::Latency(delay) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(read_at + delay) => break,
                            changed = mode.changed() => if changed.is_err() { return },
                        }
                    }
                }
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The reader saw the end: pass the half-close on.
        let _ = to.shutdown().await;
    };
    // The writer finishes what the reader queued before the connection ends.
    let (_, ()) = tokio::join!(reader, writer);
}
