//! The HTTP/1 connection loop: what `axum::serve` does, plus the bounds a public
//! server needs and axum does not offer.
//!
//! - A request head must arrive within the header timeout of its first byte, so a
//!   client that trickles headers (slowloris) cannot hold a socket.
//! - A keep-alive connection with nothing in flight is closed after the idle timeout.
//! - At most `max_connections` sockets are open, below the process's descriptor
//!   limit; at the cap, the connection that has waited longest with nothing in
//!   flight is closed to admit the new one, so real clients keep being answered
//!   while idle or half-sent sockets pile up.
//!
//! A connection upgraded to a WebSocket (`graphql::subscription`) keeps its slot
//! for as long as the socket lives, is never counted idle, and has its kernel send
//! buffer capped ([`UPGRADED_SEND_BUFFER`]) so that a subscriber that stops reading
//! is noticed after a bounded amount of data rather than megabytes. Handlers learn
//! of shutdown through the [`Stopping`] request extension.
//!
//! hyper's own header timer is not used: it starts as soon as a connection is idle,
//! which would make the idle timeout and the header timeout one setting.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tower::ServiceExt;

use crate::ops::config::Config;
use crate::ops::metrics::Metrics;

/// Largest request head (request line and headers) accepted; hyper answers 431 beyond.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;
/// Descriptors kept free of client sockets: the database pool, the log, the listener.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Kernel send buffer of an upgraded connection, in bytes (Linux doubles it for
/// bookkeeping).
pub const UPGRADED_SEND_BUFFER: usize = 64 * 1024;

/// Resolves once the server stops accepting: long-lived handlers (WebSockets)
/// close then, so that shutdown does not wait for their clients. A request
/// extension.
#[derive(Debug, Clone)]
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// The bounds on connections; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_config(config: &Config) -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(config.http_header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(config.http_idle_timeout_secs.max(1)),
            max_connections: effective_max_connections(config.max_connections, config.pool_size),
        }
    }
}

/// Raises the soft open-file limit to the hard one (allowed without privileges) and
/// returns the soft limit now in force, if it can be read.
pub fn raise_descriptor_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The connection cap actually used: the configured one, lowered to fit under the
/// descriptor limit with room for the pool and the process's own files.
pub fn effective_max_connections(configured: usize, pool_size: usize) -> usize {
    let Some(descriptors) = raise_descriptor_limit() else {
        return configured;
    };
    let room = descriptors.saturating_sub(RESERVED_DESCRIPTORS + pool_size as u64);
    configured.min(room as usize).max(1)
}

/// Milliseconds since the server started, never 0 (0 means "not set" below).
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> u64 {
        self.0.elapsed().as_millis() as u64 + 1
    }
}

/// What the loop knows of one connection, shared with its socket and its service.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// When the connection last became idle (opened, or answered its last request).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived; 0 while none has.
    head_started: AtomicU64,
    /// Set to ask the connection to close if it is still idle.
    evict: Notify,
    /// The connection was upgraded (to a WebSocket) and is no longer HTTP.
    upgraded: AtomicBool,
}

enum Verdict {
    Open,
    HeadTimedOut,
    IdleTimedOut,
}

impl Activity {
    fn new(now: u64) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            evict: Notify::new(),
            upgraded: AtomicBool::new(false),
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// How long the connection has waited with nothing in flight, as a start time.
    fn waiting_since(&self) -> u64 {
        self.idle_since
            .load(Ordering::Relaxed)
            .max(self.head_started.load(Ordering::Relaxed))
    }

    fn verdict(&self, now: u64, limits: &ConnectionLimits) -> Verdict {
        if !self.is_idle() {
            return Verdict::Open;
        }
        let head_started = self.head_started.load(Ordering::Relaxed);
        if head_started != 0 {
            if now.saturating_sub(head_started) > limits.header_timeout.as_millis() as u64 {
                return Verdict::HeadTimedOut;
            }
        } else if now.saturating_sub(self.idle_since.load(Ordering::Relaxed))
            > limits.idle_timeout.as_millis() as u64
        {
            return Verdict::IdleTimedOut;
        }
        Verdict::Open
    }
}

/// Marks a request in flight for as long as it lives, even if it is cancelled.
struct InFlight {
    activity: Arc<Activity>,
    clock: Clock,
}

impl InFlight {
    fn start(activity: Arc<Activity>, clock: Clock) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(0, Ordering::Relaxed);
        Self { activity, clock }
    }
}

impl InFlight {
    /// The connection became a WebSocket: it stays "in flight" for good, so that
    /// neither the idle timeout nor eviction (which only HTTP serving observes)
    /// picks it.
    fn upgraded(&self) {
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        self.activity.upgraded.store(true, Ordering::Release);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity
            .idle_since
            .store(self.clock.now(), Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket that notes when bytes of a new request head start arriving. It holds
/// the connection's [`Lease`], so an upgraded connection, whose socket outlives the
/// HTTP serving, keeps its slot until the socket is dropped.
struct TrackedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
    clock: Clock,
    send_buffer_capped: bool,
    _lease: Lease,
}

/// A connection's place under the cap; given back when the socket is dropped.
struct Lease {
    registry: Arc<Registry>,
    id: u64,
    metrics: Arc<Metrics>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.registry.remove(self.id);
        self.metrics.observe_connection_ended();
    }
}

impl TrackedStream {
    /// Caps the kernel send buffer once the connection is a WebSocket. Done on the
    /// first write after the upgrade: only the socket's owner can reach it.
    fn cap_send_buffer_if_upgraded(&mut self) {
        if self.send_buffer_capped || !self.activity.upgraded.load(Ordering::Acquire) {
            return;
        }
        self.send_buffer_capped = true;
        if let Err(err) = nix::sys::socket::setsockopt(
            &self.inner,
            nix::sys::socket::sockopt::SndBuf,
            &UPGRADED_SEND_BUFFER,
        ) {
            tracing::debug!(error = %err, "could not cap an upgraded socket's send buffer");
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let activity = &this.activity;
            if activity.is_idle() {
                let _ = activity.head_started.compare_exchange(
                    0,
                    this.clock.now(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        result
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.cap_send_buffer_if_upgraded();
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.cap_send_buffer_if_upgraded();
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The open connections, for eviction at the cap.
#[derive(Debug, Default)]
struct Registry {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Registry {
    fn add(&self, activity: Arc<Activity>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, activity);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the connection idle for longest to close; false when none is idle.
    fn evict_longest_waiting(&self) -> bool {
        let open = self.lock();
        let victim = open
            .values()
            .filter(|activity| activity.is_idle())
            .min_by_key(|activity| activity.waiting_since());
        match victim {
            Some(activity) => {
                activity.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting,
/// lets requests in flight finish and resolves once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let clock = Clock(Instant::now());
    let registry = Arc::new(Registry::default());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_sender, stop_receiver) = watch::channel(false);
    tokio::pin!(shutdown);

    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                registry.evict_longest_waiting();
                let wait =
                    tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned());
                match wait.await {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        metrics.observe_connection_refused();
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            "connection limit reached with every connection busy; closing a new one"
                        );
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(clock.now()));
        let id = registry.add(activity.clone());
        metrics.observe_connection_opened();
        let lease = Lease {
            registry: registry.clone(),
            id,
            metrics: metrics.clone(),
            _slot: slot,
        };
        let connection = Connection {
            router: router.clone(),
            activity,
            clock,
            limits,
            metrics: metrics.clone(),
            remote,
        };
        let stop = stop_receiver.clone();
        tokio::spawn(connection.run(stream, lease, stop));
    }

    drop(listener);
    let _ = stop_sender.send(true);
    // Every connection holds a slot until it is closed.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

struct Connection {
    router: Router,
    activity: Arc<Activity>,
    clock: Clock,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    remote: SocketAddr,
}

impl Connection {
    async fn run(self, stream: TcpStream, lease: Lease, mut stop: watch::Receiver<bool>) {
        let Connection {
            router,
            activity,
            clock,
            limits,
            metrics,
            remote,
        } = self;
        let io = TokioIo::new(TrackedStream {
            inner: stream,
            activity: activity.clone(),
            clock,
            send_buffer_capped: false,
            _lease: lease,
        });
        let service_activity = activity.clone();
        let stopping = Stopping(stop.clone());
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(service_activity.clone(), clock);
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(remote));
            request.extensions_mut().insert(stopping.clone());
            let response = router.clone().oneshot(request);
            async move {
                let response = response.await;
                if matches!(&response, Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS)
                {
                    in_flight.upgraded();
                }
                drop(in_flight);
                response
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD_BYTES.max(8192))
            .max_headers(MAX_HEADERS)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(connection);

        // A check every quarter of the shortest timeout closes a connection at most
        // a quarter late, for one timer per connection.
        let period = limits.header_timeout.min(limits.idle_timeout) / 4;
        let mut ticks = tokio::time::interval(period.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = *stop.borrow();
        if stopping {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    break;
                }
                _ = ticks.tick() => match activity.verdict(clock.now(), &limits) {
                    Verdict::Open => {}
                    Verdict::HeadTimedOut => {
                        metrics.observe_connection_closed("header_timeout");
                        break;
                    }
                    Verdict::IdleTimedOut => {
                        metrics.observe_connection_closed("idle_timeout");
                        break;
                    }
                },
                () = activity.evict.notified() => {
                    if activity.is_idle() {
                        metrics.observe_connection_closed("evicted");
                        break;
                    }
                }
                changed = stop.changed(), if !stopping => {
                    stopping = true;
                    if changed.is_ok() {
                        // Finishes the request in flight, then closes; closes at once if idle.
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(1000),
            max_connections: 10,
        }
    }

    #[test]
    fn idle_and_half_sent_connections_expire_on_their_own_clocks() {
        let activity = Activity::new(1);
        assert!(matches!(activity.verdict(500, &limits()), Verdict::Open));
        assert!(matches!(
            activity.verdict(1002, &limits()),
            Verdict::IdleTimedOut
        ));
        activity.head_started.store(950, Ordering::Relaxed);
        assert!(matches!(activity.verdict(1002, &limits()), Verdict::Open));
        assert!(matches!(
            activity.verdict(1051, &limits()),
            Verdict::HeadTimedOut
        ));
        activity.in_flight.store(1, Ordering::Relaxed);
        assert!(matches!(activity.verdict(60_000, &limits()), Verdict::Open));
    }

    #[test]
    fn eviction_picks_the_longest_waiting_idle_connection() {
        let registry = Registry::default();
        let busy = Arc::new(Activity::new(1));
        busy.in_flight.store(1, Ordering::Relaxed);
        let old = Arc::new(Activity::new(5));
        let recent = Arc::new(Activity::new(50));
        registry.add(busy.clone());
        registry.add(old.clone());
        registry.add(recent.clone());
        assert!(registry.evict_longest_waiting());
        // `notify_one` stores a permit for the chosen connection only.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut old_notified = std::pin::pin!(old.evict.notified());
        let mut recent_notified = std::pin::pin!(recent.evict.notified());
        assert!(old_notified.as_mut().poll(&mut cx).is_ready());
        assert!(recent_notified.as_mut().poll(&mut cx).is_pending());
    }
}
