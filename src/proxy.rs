//! The data plane: one accept loop over every consume listener, one task per
//! client connection.
//!
//! A connection is a pipeline: take the table snapshot, order the backends
//! with the balancer, dial down the list until one answers (each failure
//! ejects that backend), then copy bytes both ways until both sides are done.
//! TLS and credential injection will slot in between dial and copy.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::backends::table::ActiveGuard;
use crate::backends::Service;
use crate::net::dial::{dial, DialError};
use crate::settings::ProxySettings;

/// Copy buffer per direction. 64 KiB moves a large value in few syscalls;
/// tokio's 8 KiB default measurably loses throughput on 16 KiB values.
const COPY_BUF: usize = 64 * 1024;
/// First pause after an accept error such as EMFILE, so that a process out of
/// file descriptors waits for connections to close instead of spinning.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accept retries: short enough to resume promptly
/// once descriptors free up.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What every connection task of the process shares.
pub struct Shared {
    pub settings: ProxySettings,
    /// Connection limit; a permit is taken before `accept`, so excess
    /// clients wait in the kernel backlog rather than being cut off.
    pub limit: Arc<Semaphore>,
    /// Cancelled when the drain period is over: open connections close.
    pub hard_stop: CancellationToken,
}

/// Accepts on every consume listener until `stop` is cancelled; connection
/// tasks go to `tracker`. One loop serves all listeners so that exactly one
/// permit of the connection limit waits in `accept`: per-listener loops
/// would each hold one, overshooting or (below one per listener) starving.
pub async fn serve(
    listeners: Vec<(TcpListener, Arc<Service>)>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut at_limit = false;
    // Where the next poll starts, so a busy listener cannot starve others.
    let mut start = 0;
    loop {
        let permit = match shared.limit.clone().try_acquire_owned() {
            Ok(p) => {
                at_limit = false;
                p
            }
            Err(_) => {
                if !at_limit {
                    warn!(
                        limit = shared.settings.max_connections,
                        "connection limit reached; new clients wait in the accept queue"
                    );
                    at_limit = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    p = shared.limit.clone().acquire_owned() => p.expect("the limit semaphore is never closed"),
                }
            }
        };
        let (i, accepted) = tokio::select! {
            _ = stop.cancelled() => break,
            r = accept_any(&listeners, start) => r,
        };
        start = (i + 1) % listeners.len();
        let svc = &listeners[i].1;
        match accepted {
            Ok((client, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let svc = svc.clone();
                let shared = shared.clone();
                tracker.spawn(async move {
                    handle(client, peer, &svc, &shared).await;
                    drop(permit);
                });
            }
            // The client gave up between SYN and accept: nothing to wait for.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                warn!(service = %svc.name, error = %e, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    debug!("stopped accepting");
}

/// The next connection on any listener, polling from `start` on.
async fn accept_any(
    listeners: &[(TcpListener, Arc<Service>)],
    start: usize,
) -> (usize, io::Result<(TcpStream, SocketAddr)>) {
    std::future::poll_fn(|cx| {
        for k in 0..listeners.len() {
            let i = (start + k) % listeners.len();
            if let Poll::Ready(r) = listeners[i].0.poll_accept(cx) {
                return Poll::Ready((i, r));
            }
        }
        Poll::Pending
    })
    .await
}

async fn handle(client: TcpStream, peer: SocketAddr, svc: &Service, shared: &Shared) {
    // Interactive protocols (Redis, SQL) send small requests and wait: Nagle
    // would hold them back for an ACK.
    let _ = client.set_nodelay(true);
    let connected = tokio::select! {
        r = connect(svc, &shared.settings) => r,
        _ = shared.hard_stop.cancelled() => return,
    };
    // Counts this connection in the backend's `active` (since its dial)
    // until the end of this function.
    let (active, server) = match connected {
        Ok(pair) => pair,
        Err(e) => {
            warn!(service = %svc.name, client = %peer, "closing client connection: {e}");
            return;
        }
    };
    let backend = active.backend();
    let stats = &backend.stats;
    stats.total.fetch_add(1, Ordering::Relaxed);

    let clock = shared.settings.idle_timeout.map(|_| Arc::new(Clock::new()));
    let mut client = Metered::new(client, clock.clone());
    let mut server = Metered::new(server, clock.clone());
    let copy =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, COPY_BUF, COPY_BUF);
    let outcome = tokio::select! {
        r = copy => r.map(|_| ()),
        _ = idle(clock.as_deref(), shared.settings.idle_timeout) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))
        }
        _ = shared.hard_stop.cancelled() => {
            Err(io::Error::other("drain timeout reached at shutdown"))
        }
    };
    stats.bytes_out.fetch_add(client.read, Ordering::Relaxed);
    stats.bytes_in.fetch_add(server.read, Ordering::Relaxed);
    match outcome {
        Ok(()) => debug!(service = %svc.name, client = %peer, backend = %backend.spec.target,
            bytes_out = client.read, bytes_in = server.read, "connection closed"),
        Err(e) => debug!(service = %svc.name, client = %peer, backend = %backend.spec.target,
            error = %e, "connection ended with an error"),
    }
}

/// Pause before turning a client away when a dial failed for lack of local
/// resources (EMFILE and the like). The connection task keeps its permit
/// meanwhile, so the accept loop slows down instead of taking and failing
/// queued clients as fast as it can; a tenth of the accept back-off cap,
/// so the client still hears promptly.
const LOCAL_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Why a client connection could not be given a backend.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no backends known for this service")]
    NoBackends,
    #[error("no backend answered ({tried} tried, last error: {last})")]
    AllFailed { tried: usize, last: io::Error },
    /// This process could not dial at all (out of descriptors, ports,
    /// memory); no backend was blamed.
    #[error("out of local resources, cannot dial: {0}")]
    Local(io::Error),
}

/// Dials candidates in balancer order until one answers, within
/// `connect_attempts` tries of `connect_timeout` each. Every failure ejects
/// that backend, so the next clients skip it at once; a failure for lack of
/// local resources ejects nothing and fails this client only, after a short
/// pause: the next backend would fail the same way, and ejecting healthy
/// backends (or asking discovery to verify them) would turn our own
/// descriptor shortage into an outage.
///
/// The backend comes with the [`ActiveGuard`] taken when its dial began:
/// keep it for the connection's life.
pub async fn connect(
    svc: &Service,
    settings: &ProxySettings,
) -> Result<(ActiveGuard, TcpStream), ConnectError> {
    let snap = svc.table.snapshot();
    let order = svc.balancer.order(&svc.table, &snap);
    if order.is_empty() {
        return Err(ConnectError::NoBackends);
    }
    let mut last = None;
    let mut tried = 0;
    for backend in order.into_iter().take(settings.connect_attempts) {
        tried += 1;
        // Counted from now, so the balancer sees dials in flight.
        let active = ActiveGuard::new(backend.clone());
        match dial(&backend.spec.target, settings.connect_timeout).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                if svc.table.report_success(&backend.stats) {
                    info!(service = %svc.name, backend = %backend.spec.target, "backend restored");
                }
                return Ok((active, stream));
            }
            Err(DialError::Local(e)) => {
                debug!(service = %svc.name, backend = %backend.spec.target, error = %e,
                    "cannot dial: out of local resources");
                sleep(LOCAL_ERROR_BACKOFF).await;
                return Err(ConnectError::Local(e));
            }
            Err(DialError::Backend(e)) => {
                match svc.table.report_failure(&backend.stats) {
                    Some(period) => warn!(service = %svc.name, backend = %backend.spec.target,
                        error = %e, eject_for = ?period, "backend ejected"),
                    None => debug!(service = %svc.name, backend = %backend.spec.target,
                        error = %e, "connect failed"),
                }
                svc.suspect(&backend.spec.key);
                last = Some(e);
            }
        }
    }
    Err(ConnectError::AllFailed {
        tried,
        last: last.expect("at least one attempt was made"),
    })
}

/// Last time any byte moved on a connection, in ms since its start.
struct Clock {
    start: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        let ms = (Instant::now() - self.start).as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Resolves once the connection has been idle for `limit`; never without one.
async fn idle(clock: Option<&Clock>, limit: Option<Duration>) {
    let (Some(clock), Some(limit)) = (clock, limit) else {
        return std::future::pending().await;
    };
    loop {
        let deadline = clock.last() + limit;
        if Instant::now() >= deadline {
            return;
        }
        sleep_until(deadline).await;
    }
}

/// A stream that counts the bytes read from it and, when an idle timeout is
/// set, stamps the shared clock on every transfer.
struct Metered<S> {
    inner: S,
    read: u64,
    clock: Option<Arc<Clock>>,
}

impl<S> Metered<S> {
    fn new(inner: S, clock: Option<Arc<Clock>>) -> Self {
        Metered {
            inner,
            read: 0,
            clock,
        }
    }
    fn touch(&self) {
        if let Some(c) = &self.clock {
            c.touch();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
