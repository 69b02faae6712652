//! One connection's clock: what it is doing (waiting for a request head, or serving requests) and since when,
//! so the accept loop can close it when it waits too long — the header read timeout against slowloris, the
//! keep-alive timeout against idle sockets — or reap it when the connection cap is reached.
//!
//! hyper has a header read timeout of its own, but its clock also runs while a kept-alive connection waits for
//! its next request, so it cannot tell "trickling a head" (seconds) from "idle between requests" (longer than the
//! load balancer's idle timeout, or the balancer races the server's close and answers 502). No well-kept crate
//! tracks both for hyper 1, hence this small state machine fed by the socket's reads and the requests' lives.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The two waits a connection may not exceed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// From a connection's opening, or from a request head's first byte, to the end of that head.
    pub header_read: Duration,
    /// How long a connection may sit idle between a response and the next request's first byte.
    pub keep_alive: Duration,
}

/// Why the server closed a connection that was not finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closing {
    /// The request head did not arrive whole within the header read timeout.
    HeaderReadTimeout,
    /// Idle between requests for longer than the keep-alive timeout.
    KeepAliveTimeout,
    /// Idle while the connection cap was reached and a new connection was waiting for a slot.
    Reaped,
}

impl Closing {
    /// Every reason, so the counter is exported at 0 before the first close.
    pub(crate) const ALL: [Closing; 3] = [Closing::HeaderReadTimeout, Closing::KeepAliveTimeout, Closing::Reaped];

    /// The `reason` label of `http_connections_closed_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Closing::HeaderReadTimeout => "header_read_timeout",
            Closing::KeepAliveTimeout => "keep_alive_timeout",
            Closing::Reaped => "reaped",
        }
    }
}

/// What the connection is doing.
#[derive(Debug)]
enum Phase {
    /// No request in flight: waiting for (the rest of) a request head.
    Waiting {
        /// Since the connection opened or the last response ended.
        idle_since: Instant,
        /// When the head started: the connection's opening (a first request), or the first byte after a response.
        head_started: Option<Instant>,
        /// Whether a byte arrived while waiting: a connection holding part of a request is not reaped.
        received: bool,
    },
    /// Requests in flight (more than one with HTTP/2); no deadline: HTTP_REQUEST_TIMEOUT bounds them.
    Serving { requests: usize },
}

/// The phase plus a request to close, under one lock.
#[derive(Debug)]
struct State {
    phase: Phase,
    reaped: bool,
    /// Whether a request has reached the router: until then hyper may still be reading the first head, and a
    /// graceful shutdown would drop it unanswered.
    started_a_request: bool,
}

/// Shared by the connection's socket, its requests and its task.
#[derive(Debug)]
pub(crate) struct ConnectionClock {
    state: Mutex<State>,
    /// Notified by a reap, the one change that cannot wait for the task's next look.
    reaped: Notify,
    /// Notified once, when the first request reaches the router (the permit is kept if nobody waits yet).
    first_request: Notify,
    timeouts: Timeouts,
}

impl ConnectionClock {
    /// A connection just accepted: its first request head is due within the header read timeout.
    pub(crate) fn new(timeouts: Timeouts) -> Self {
        let now = Instant::now();
        let phase = Phase::Waiting { idle_since: now, head_started: Some(now), received: false };
        let state = State { phase, reaped: false, started_a_request: false };
        ConnectionClock { state: Mutex::new(state), reaped: Notify::new(), first_request: Notify::new(), timeouts }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data updated in single statements: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived from the client: while waiting, a request head has started.
    fn received(&self) {
        let mut state = self.state();
        if let Phase::Waiting { head_started, received, .. } = &mut state.phase
            && !*received
        {
            *received = true;
            head_started.get_or_insert_with(Instant::now);
        }
    }

    /// A request head was parsed and handed to the router; the returned guard ends the request when dropped
    /// (with the response body, once hyper has written it).
    pub(crate) fn request_started(self: &Arc<Self>) -> RequestInFlight {
        let mut state = self.state();
        state.phase = match state.phase {
            Phase::Serving { requests } => Phase::Serving { requests: requests + 1 },
            Phase::Waiting { .. } => Phase::Serving { requests: 1 },
        };
        let first = !std::mem::replace(&mut state.started_a_request, true);
        drop(state);
        if first {
            self.first_request.notify_one();
        }
        RequestInFlight { clock: Arc::clone(self) }
    }

    fn request_ended(&self) {
        let mut state = self.state();
        state.phase = match state.phase {
            Phase::Serving { requests } if requests > 1 => Phase::Serving { requests: requests - 1 },
            _ => Phase::Waiting { idle_since: Instant::now(), head_started: None, received: false },
        };
    }

    /// Since when the connection has been idle, when it holds no request nor part of one (it can be reaped).
    pub(crate) fn reapable_since(&self) -> Option<Instant> {
        match self.state().phase {
            Phase::Waiting { idle_since, received: false, .. } => Some(idle_since),
            _ => None,
        }
    }

    /// Resolves once a request has reached the router. A client that connected just before shutdown is owed an
    /// answer to its first request, which hyper may not have read yet; a connection that never sends one is
    /// closed by its header read timeout instead (as Go's `Server.Shutdown` treats new connections).
    pub(crate) async fn first_request_started(&self) {
        if !self.state().started_a_request {
            self.first_request.notified().await;
        }
    }

    /// Asks the connection to close if it is still idle when its task looks.
    pub(crate) fn reap(&self) {
        self.state().reaped = true;
        self.reaped.notify_one();
    }

    /// Resolves when the connection must be closed, with the reason.
    ///
    /// The bytes and requests of the connection do not notify it: each notification would wake the connection's
    /// task once more per request. Instead it looks again at most [`Self::step`] after each look. That misses no
    /// deadline: a change at time `t` sets none earlier than `t + step` (a head started at `t` is due at
    /// `t + header_read`, an idle connection at `t + keep_alive`), and the previous look, before `t`, was armed to
    /// look again by `t + step`. Only a reap notifies (it must act now).
    pub(crate) async fn expired(&self) -> Closing {
        let step = self.step();
        loop {
            let now = Instant::now();
            let next_look = match self.check(now) {
                Err(closing) => return closing,
                Ok(Some(deadline)) => deadline.min(now + step),
                Ok(None) => now + step,
            };
            tokio::select! {
                () = tokio::time::sleep_until(next_look) => {}
                () = self.reaped.notified() => {}
            }
        }
    }

    /// The longest the connection's task goes without looking at its clock: the shorter of the two timeouts.
    fn step(&self) -> Duration {
        self.timeouts.header_read.min(self.timeouts.keep_alive)
    }

    /// The next deadline (none while serving), or why the connection is due now.
    fn check(&self, now: Instant) -> Result<Option<Instant>, Closing> {
        let mut state = self.state();
        let Phase::Waiting { idle_since, head_started, received } = state.phase else {
            state.reaped = false;
            return Ok(None);
        };
        if state.reaped && !received {
            return Err(Closing::Reaped);
        }
        state.reaped = false;
        let (deadline, closing) = match head_started {
            Some(started) => (started + self.timeouts.header_read, Closing::HeaderReadTimeout),
            None => (idle_since + self.timeouts.keep_alive, Closing::KeepAliveTimeout),
        };
        if now >= deadline { Err(closing) } else { Ok(Some(deadline)) }
    }
}

/// A request being served; its drop returns the connection to waiting.
#[derive(Debug)]
pub(crate) struct RequestInFlight {
    clock: Arc<ConnectionClock>,
}

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        self.clock.request_ended();
    }
}

/// The open connections, for the accept loop to find an idle one to reap when the cap is reached.
#[derive(Debug, Default)]
pub(crate) struct OpenConnections {
    clocks: Mutex<HashMap<u64, Arc<ConnectionClock>>>,
    next_id: AtomicU64,
}

impl OpenConnections {
    fn clocks(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnectionClock>>> {
        self.clocks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connection; it leaves the set when the returned registration is dropped.
    pub(crate) fn register(self: &Arc<Self>, clock: Arc<ConnectionClock>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.clocks().insert(id, clock);
        metrics::gauge!(super::CONNECTIONS_OPEN).increment(1);
        Registration { open: Arc::clone(self), id }
    }

    /// Asks the connection idle the longest to close; false when none is idle (all are serving or reading).
    pub(crate) fn reap_longest_idle(&self) -> bool {
        let clocks = self.clocks();
        let longest = clocks
            .values()
            .filter_map(|clock| clock.reapable_since().map(|since| (since, clock)))
            .min_by_key(|(since, _)| *since);
        match longest {
            Some((_, clock)) => {
                clock.reap();
                true
            }
            None => false,
        }
    }
}

/// A connection's place in [`OpenConnections`], released with the connection's task.
#[derive(Debug)]
pub(crate) struct Registration {
    open: Arc<OpenConnections>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.open.clocks().remove(&self.id);
        metrics::gauge!(super::CONNECTIONS_OPEN).decrement(1);
    }
}

/// The client's socket, telling the clock when bytes arrive. Writes pass through untouched.
#[derive(Debug)]
pub(crate) struct WatchedStream<S> {
    inner: S,
    clock: Arc<ConnectionClock>,
}

impl<S> WatchedStream<S> {
    pub(crate) fn new(inner: S, clock: Arc<ConnectionClock>) -> Self {
        WatchedStream { inner, clock }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts { header_read: Duration::from_secs(10), keep_alive: Duration::from_secs(60) };

    /// Waits for `clock` to expire; asserts why, and that it took `after` from now.
    async fn assert_expires(clock: &ConnectionClock, closing: Closing, after: Duration) {
        let from = Instant::now();
        assert_eq!(clock.expired().await, closing);
        assert_eq!(from.elapsed(), after);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_owes_its_head_within_the_header_read_timeout() {
        let clock = ConnectionClock::new(TIMEOUTS);
        assert_expires(&clock, Closing::HeaderReadTimeout, TIMEOUTS.header_read).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout() {
        let clock = Arc::new(ConnectionClock::new(TIMEOUTS));
        drop(clock.request_started());
        assert_expires(&clock, Closing::KeepAliveTimeout, TIMEOUTS.keep_alive).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_head_on_a_kept_alive_connection_is_timed_from_its_first_byte() {
        let clock = Arc::new(ConnectionClock::new(TIMEOUTS));
        drop(clock.request_started());
        let idle = TIMEOUTS.header_read * 2;
        tokio::time::advance(idle).await;
        assert_eq!(clock.check(Instant::now()), Ok(Some(Instant::now() + TIMEOUTS.keep_alive - idle)));
        clock.received();
        assert_expires(&clock, Closing::HeaderReadTimeout, TIMEOUTS.header_read).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_set_while_the_task_waits_is_met_on_the_instant() {
        let clock = Arc::new(ConnectionClock::new(TIMEOUTS));
        let opened = Instant::now();
        let watcher = tokio::spawn({
            let clock = Arc::clone(&clock);
            async move { (clock.expired().await, Instant::now()) }
        });
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(clock.request_started());
        tokio::time::advance(Duration::from_secs(25)).await;
        // 28 s after opening, idle since 3 s: a head starts, due 10 s later (the keep-alive would allow 63 s).
        clock.received();
        let (closing, at) = watcher.await.expect("watcher");
        assert_eq!(closing, Closing::HeaderReadTimeout);
        assert_eq!(at - opened, Duration::from_secs(38));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reap_is_acted_on_at_once() {
        let clock = Arc::new(ConnectionClock::new(TIMEOUTS));
        drop(clock.request_started());
        let watcher = tokio::spawn({
            let clock = Arc::clone(&clock);
            async move { (clock.expired().await, Instant::now()) }
        });
        tokio::time::advance(Duration::from_secs(1)).await;
        let reaped_at = Instant::now();
        clock.reap();
        let (closing, at) = watcher.await.expect("watcher");
        assert_eq!((closing, at), (Closing::Reaped, reaped_at));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_serving_a_request_has_no_deadline_and_is_never_reaped() {
        let clock = Arc::new(ConnectionClock::new(TIMEOUTS));
        let request = clock.request_started();
        clock.reap();
        tokio::time::advance(TIMEOUTS.keep_alive * 10).await;
        assert_eq!(clock.check(Instant::now()), Ok(None));
        assert_eq!(clock.reapable_since(), None);
        drop(request);
        assert!(clock.reapable_since().is_some(), "idle again once the response is done");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_reaps_the_longest_idle_connection_and_spares_one_holding_part_of_a_request() {
        let open = Arc::new(OpenConnections::default());
        let reading = Arc::new(ConnectionClock::new(TIMEOUTS));
        reading.received();
        let _reading = open.register(Arc::clone(&reading));
        tokio::time::advance(Duration::from_secs(1)).await;
        let older = Arc::new(ConnectionClock::new(TIMEOUTS));
        let _older = open.register(Arc::clone(&older));
        tokio::time::advance(Duration::from_secs(1)).await;
        let newer = Arc::new(ConnectionClock::new(TIMEOUTS));
        let _newer = open.register(Arc::clone(&newer));

        assert!(open.reap_longest_idle());
        assert_eq!(older.check(Instant::now()), Err(Closing::Reaped));
        assert!(newer.check(Instant::now()).is_ok(), "only one is reaped per call");
        assert!(reading.check(Instant::now()).is_ok(), "a connection holding part of a head is not reaped");
    }
}
