//! The data plane: one accept loop over every consume listener, one task per
//! client connection.
//!
//! A connection is a pipeline: take the table snapshot, order the backends
//! with the balancer, dial down the list until one answers (each failure
//! ejects that backend), then copy bytes both ways until both sides are done.
//! TLS and credential injection will slot in between dial and copy.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::balance::Balancer;
use crate::config::ProxySettings;
use crate::copy::{self, End};
use crate::dial::dial;
use crate::sockopt;
use crate::table::{Backend, Stats, Table};

/// First pause after an accept error such as EMFILE, so that a process out of
/// file descriptors waits for connections to close instead of spinning.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accept retries: short enough to resume promptly
/// once descriptors free up.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One consumed service: its table and how to choose from it.
pub struct Service {
    /// Name as in `--consume NAME:PORT`.
    pub name: String,
    /// Live backends.
    pub table: Arc<Table>,
    /// Policy applied to each snapshot.
    pub balancer: Balancer,
    /// Where to report a discovered backend that failed, so discovery can
    /// re-verify its record; `None` for static services.
    pub suspects: Option<mpsc::UnboundedSender<String>>,
}

impl Service {
    /// Asks discovery to re-verify a failing backend, if it is discovered.
    pub fn suspect(&self, key: &str) {
        if let Some(tx) = &self.suspects {
            let _ = tx.send(key.to_owned());
        }
    }
}

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

async fn handle(mut client: TcpStream, peer: SocketAddr, svc: &Service, shared: &Shared) {
    let settings = &shared.settings;
    if let Err(e) = sockopt::tune_stream(&client, settings) {
        debug!(service = %svc.name, client = %peer, error = %e, "cannot set client socket options");
    }
    let connected = tokio::select! {
        r = connect(svc, settings) => r,
        _ = shared.hard_stop.cancelled() => return,
    };
    let (backend, mut server) = match connected {
        Ok(pair) => pair,
        Err(e) => {
            warn!(service = %svc.name, client = %peer, "closing client connection: {e}");
            return;
        }
    };
    let stats = &backend.stats;
    stats.total.fetch_add(1, Ordering::Relaxed);
    stats.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(stats);
    if let Err(e) = sockopt::tune_stream(&server, settings) {
        debug!(service = %svc.name, backend = %backend.spec.target, error = %e,
            "cannot set backend socket options");
    }

    let limits = copy::Limits {
        idle: settings.idle_timeout,
        half_close: settings.half_close_timeout,
    };
    let report = copy::copy_both(&mut client, &mut server, limits, &shared.hard_stop).await;
    stats
        .bytes_out
        .fetch_add(report.from_client, Ordering::Relaxed);
    stats
        .bytes_in
        .fetch_add(report.from_server, Ordering::Relaxed);
    let (bytes_out, bytes_in) = (report.from_client, report.from_server);
    let why = match report.end {
        End::Done => "connection closed",
        End::Idle => "idle timeout",
        End::HalfClose => "half-close timeout: one side finished, the other stayed silent",
        End::Stopped => "drain timeout reached at shutdown",
        End::Failed { side, error } => {
            debug!(service = %svc.name, client = %peer, backend = %backend.spec.target,
                bytes_out, bytes_in, error = %error, failed = ?side,
                "connection failed; the other side is reset");
            return;
        }
    };
    debug!(service = %svc.name, client = %peer, backend = %backend.spec.target,
        bytes_out, bytes_in, "{why}");
}

/// Why a client connection could not be given a backend.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no backends known for this service")]
    NoBackends,
    #[error("no backend answered ({tried} tried, last error: {last})")]
    AllFailed { tried: usize, last: io::Error },
}

/// Dials candidates in balancer order until one answers, within
/// `connect_attempts` tries of `connect_timeout` each. Every failure ejects
/// that backend, so the next clients skip it at once.
pub async fn connect(
    svc: &Service,
    settings: &ProxySettings,
) -> Result<(Arc<Backend>, TcpStream), ConnectError> {
    let snap = svc.table.snapshot();
    let order = svc.balancer.order(&svc.table, &snap);
    if order.is_empty() {
        return Err(ConnectError::NoBackends);
    }
    let mut last = None;
    let mut tried = 0;
    for backend in order.into_iter().take(settings.connect_attempts) {
        tried += 1;
        match dial(&backend.spec.target, settings.connect_timeout).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                if svc.table.report_success(&backend.stats) {
                    info!(service = %svc.name, backend = %backend.spec.target, "backend restored");
                }
                return Ok((backend, stream));
            }
            Err(e) => {
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

/// Keeps `active` right however the connection task ends.
struct ActiveGuard<'a>(&'a Stats);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
