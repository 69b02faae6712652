//! The HTTP server: accepts connections and serves the router on each with hyper, within limits a service on
//! the internet needs — a header read timeout (slowloris), an idle keep-alive timeout, a cap on open connections
//! that reaps idle ones when a new client needs the slot, and a header size limit (431) — and stops gracefully.
//!
//! `axum::serve` configures none of these, and no well-kept crate offers the cap with idle reaping for hyper 1,
//! so the accept loop is written here; each connection is still hyper-util's (HTTP/1.1 and HTTP/2 prior knowledge,
//! as `axum::serve`).
//!
//! Graceful shutdown answers every connection the kernel accepted: hyper-util's `GracefulShutdown` (and
//! `axum::serve`) drop the connections still in the listen backlog and cancel a connection whose first request
//! head has not been read yet, so a client that connected a moment before SIGTERM got a reset instead of an
//! answer. Here the backlog is drained before the listener closes, and a new connection is asked to finish only
//! once its first request has started (its header read timeout closes a silent one).

mod connection;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use connection::{Closing, ConnectionClock, OpenConnections, Timeouts, WatchedStream};

/// Gauge: connections open now.
pub const CONNECTIONS_OPEN: &str = "http_connections_open";
/// Counter: connections the server closed before the client did, by `reason`.
pub const CONNECTIONS_CLOSED: &str = "http_connections_closed_total";
/// hyper's smallest read buffer; the header limit cannot be lower.
pub const MIN_HEADER_BYTES: usize = 8192;
/// How long the accept loop waits for the connection it reaped before reaping another: the reaped one may have
/// started a request in the meantime.
const REAP_RETRY: Duration = Duration::from_millis(100);
/// How long the accept loop pauses after an accept error other than a client's reset, e.g. out of file
/// descriptors, so it does not spin while connections close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The limits on connections (HTTP_HEADER_READ_TIMEOUT, HTTP_KEEP_ALIVE_TIMEOUT, HTTP_MAX_CONNECTIONS,
/// HTTP_MAX_HEADER_BYTES), read in `settings`.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// A request head must arrive whole within this time of the connection's opening or of its first byte.
    pub header_read_timeout: Duration,
    /// A connection idle this long between requests is closed.
    pub keep_alive_timeout: Duration,
    /// Connections open at once; at the cap, the longest idle one is closed for a new client, or the new
    /// client waits (in the listen backlog) until one closes.
    pub max_connections: usize,
    /// The request line plus headers, in bytes (at least [`MIN_HEADER_BYTES`]); beyond it, 431 and the
    /// connection closed. Also the connection's read buffer.
    pub max_header_bytes: usize,
}

/// What every connection shares.
struct Shared {
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    open: Arc<OpenConnections>,
    /// Cancelled when the server stops accepting: each connection then finishes gracefully.
    stopping: CancellationToken,
}

/// Serves `router` on `listener` until `stop` resolves; then stops accepting (serving the connections already
/// in the listen backlog), lets each connection finish the requests in flight and its first one if it has sent
/// none yet (idle ones close at once) and returns when all are closed. Handlers see the client's address as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    stop: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        router,
        builder: connection_builder(&limits),
        timeouts: Timeouts { header_read: limits.header_read_timeout, keep_alive: limits.keep_alive_timeout },
        open: Arc::new(OpenConnections::default()),
        stopping: CancellationToken::new(),
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    for closing in Closing::ALL {
        metrics::counter!(CONNECTIONS_CLOSED, "reason" => closing.label()).absolute(0);
    }
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => { pause_after(err).await; continue; }
            },
            () = &mut stop => break,
        };
        let (slot, stopped) = tokio::select! {
            slot = free_slot(&slots, &shared.open) => (Some(slot?), false),
            // Accepted while waiting for a slot: it is served all the same, beyond the cap.
            () = &mut stop => (None, true),
        };
        connections.spawn(serve_connection(Arc::clone(&shared), stream, peer, slot));
        if stopped {
            break;
        }
    }
    for (stream, peer) in drain_backlog(listener) {
        let slot = Arc::clone(&slots).try_acquire_owned().ok();
        connections.spawn(serve_connection(Arc::clone(&shared), stream, peer, slot));
    }
    shared.stopping.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// hyper's connection builder with the header limit; hyper's own header read timeout is off (the connection's
/// clock keeps it, apart from the keep-alive wait).
fn connection_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(None).max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    let header_list = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
    builder.http2().enable_connect_protocol().max_header_list_size(header_list);
    builder
}

/// A slot for the connection just accepted: at the cap, the longest idle connection is asked to close, again
/// every [`REAP_RETRY`] while none frees its slot; with none idle, waits for any connection to end.
async fn free_slot(slots: &Arc<Semaphore>, open: &OpenConnections) -> io::Result<OwnedSemaphorePermit> {
    let closed = |_| io::Error::other("the connection slots were closed");
    loop {
        if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
            return Ok(slot);
        }
        if !open.reap_longest_idle() {
            tracing::debug!("connection cap reached with none idle; the new connection waits");
            return Arc::clone(slots).acquire_owned().await.map_err(closed);
        }
        if let Ok(slot) = tokio::time::timeout(REAP_RETRY, Arc::clone(slots).acquire_owned()).await {
            return slot.map_err(closed);
        }
    }
}

/// Serves one connection until the client closes it, a limit closes it, or shutdown finishes it.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<OwnedSemaphorePermit>,
) {
    let clock = Arc::new(ConnectionClock::new(shared.timeouts));
    let _registration = shared.open.register(Arc::clone(&clock));
    let router = shared.router.clone();
    let requests_clock = Arc::clone(&clock);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        handle(router.clone(), &requests_clock, peer, request)
    });
    let io = TokioIo::new(WatchedStream::new(stream, Arc::clone(&clock)));
    let served = shared.builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut finishing = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                break;
            }
            closing = clock.expired() => {
                tracing::debug!(reason = closing.label(), "closing the connection");
                metrics::counter!(CONNECTIONS_CLOSED, "reason" => closing.label()).increment(1);
                break;
            }
            () = ready_to_finish(&shared.stopping, &clock), if !finishing => {
                // Requests in flight are finished, then the connection closes (HTTP/1.1 `connection: close`,
                // HTTP/2 GOAWAY); an idle one closes now.
                served.as_mut().graceful_shutdown();
                finishing = true;
            }
        }
    }
    drop(slot);
}

/// Resolves when the server is stopping and the connection has started its first request: before that, hyper
/// may not have read the head the client already sent, and finishing the connection would drop it.
async fn ready_to_finish(stopping: &CancellationToken, clock: &ConnectionClock) {
    stopping.cancelled().await;
    clock.first_request_started().await;
}

/// The connections the kernel has completed but the loop has not accepted yet: closing the listener would reset
/// them, though their clients have sent their requests. A connection completing after this is refused or reset,
/// as with any server; an orchestrator stops sending new ones first (readiness, preStop).
fn drain_backlog(listener: TcpListener) -> Vec<(TcpStream, SocketAddr)> {
    let mut drained = Vec::new();
    let Ok(listener) = listener.into_std() else { return drained };
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            // Reset by its client while queued: the next one may be fine.
            Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
            // WouldBlock: the backlog is empty.
            Err(_) => return drained,
        };
        let adopted = stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream));
        match adopted {
            Ok(stream) => drained.push((stream, peer)),
            Err(err) => tracing::debug!(error = %err, "a connection from the listen backlog could not be served"),
        }
    }
}

/// Routes one request with the client's address attached; the connection counts as serving until the response
/// body is done (or dropped).
fn handle(
    router: Router,
    clock: &Arc<ConnectionClock>,
    peer: SocketAddr,
    mut request: hyper::Request<Incoming>,
) -> impl Future<Output = Result<axum::response::Response, Infallible>> + use<> {
    request.extensions_mut().insert(ConnectInfo(peer));
    let in_flight = clock.request_started();
    async move {
        let response = router.oneshot(request.map(Body::new)).await?;
        Ok(response.map(move |body| {
            Body::new(body.map_frame(move |frame| {
                let _serving: &connection::RequestInFlight = &in_flight;
                frame
            }))
        }))
    }
}

/// After an accept error: a client's reset is not the server's problem; anything else (out of file descriptors)
/// is logged and the loop pauses so it does not spin while connections close.
async fn pause_after(err: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(err.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        tracing::error!(error = %err, "cannot accept connections");
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }
}
