//! The accept loop: one per listener (a consume's, a TLS terminator's), one
//! task per client connection on one of the [`Shards`], the connection
//! limit taken before `accept`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::net::shards::Shards;
use crate::net::sockopt;
use crate::settings::ProxySettings;

/// First pause after an accept error such as EMFILE, so that a process out of
/// file descriptors waits for connections to close instead of spinning.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accept retries: short enough to resume promptly
/// once descriptors free up.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accept errors: out of descriptors under a flood, accept fails between
/// every successful accept (each resets the back-off), tens of times a
/// second; one line a second says it.
static ACCEPT_ERRORS: super::loglimit::LogLimit = super::loglimit::LogLimit::new();
/// Accepted sockets a shard could not register (its epoll out of watches or
/// memory): under a flood that is every connection, so one line a second.
static TAKEOVER_ERRORS: super::loglimit::LogLimit = super::loglimit::LogLimit::new();

/// What every connection task of the process shares.
pub struct Shared {
    pub settings: ProxySettings,
    /// Connection limit; a permit is taken before `accept`, so excess
    /// clients wait in the kernel backlog rather than being cut off.
    pub limit: Arc<Semaphore>,
    /// Cancelled when the drain period is over: open connections close.
    pub hard_stop: CancellationToken,
    /// Mutual TLS between ambassadors, when a cluster key or PKI is set.
    pub tls: Option<Arc<crate::security::Tls>>,
    /// Where the connections run.
    pub shards: Arc<Shards>,
}

impl Shared {
    /// A connection limit of its own, from the settings' `max_connections`.
    pub fn new(
        settings: ProxySettings,
        hard_stop: CancellationToken,
        tls: Option<Arc<crate::security::Tls>>,
        shards: Arc<Shards>,
    ) -> Shared {
        Shared {
            limit: Arc::new(Semaphore::new(settings.max_connections)),
            settings,
            hard_stop,
            tls,
            shards,
        }
    }
}

/// What runs each accepted connection of a listener.
pub trait Handler: Send + Sync + 'static {
    /// The listener's name in log lines (the service).
    fn name(&self) -> &str;
    /// Serves one connection to its end.
    fn handle(
        self: Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        shared: Arc<Shared>,
    ) -> impl Future<Output = ()> + Send;
}

/// A listener registered with the runtime of the shard its accept loop
/// runs on (its home, [`Shards::home_for_listener`]), ready for [`serve`]:
/// registered when bound, so that a node that cannot poll it (the kernel's
/// epoll watches exhausted) fails to start, or to reload, with the reason,
/// instead of serving on with a port nobody answers. The sockets it
/// accepts are registered once, with their own shard's runtime (a tokio
/// `TcpListener` would register each with its own, then have to move it:
/// two system calls per connection).
pub struct Listener {
    fd: AsyncFd<std::net::TcpListener>,
    home: Handle,
}

impl Listener {
    /// Registers `listener` with `home`, the runtime its accept loop must
    /// run on.
    // `AsyncFd::with_interest` is deprecated for types that may not own the
    // descriptor they lend; a std listener owns its own.
    #[allow(deprecated)]
    pub fn register(listener: TcpListener, home: Handle) -> io::Result<Listener> {
        let _in_home = home.enter();
        let fd = AsyncFd::with_interest(listener.into_std()?, Interest::READABLE)?;
        Ok(Listener { fd, home })
    }

    /// The runtime [`serve`] must run on for this listener.
    pub fn home(&self) -> &Handle {
        &self.home
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }
}

/// Accepts on every listener until `stop` is cancelled; connection tasks go
/// to `tracker`. The listeners carry the client sockets' options
/// ([`sockopt::tune_listener`]), set from `shared`'s settings by this call
/// itself, not when the loop first runs: a client that connects once the
/// caller has the future (and has spawned it) gets them, since a socket
/// takes its listener's options when its handshake completes, before
/// `accept`. Gives the listeners back, still bound, so that a new loop
/// (a reloaded handler or settings) takes over without refusing anyone:
/// clients wait in the backlog meanwhile. Each loop holds one permit of the
/// connection limit while it waits in `accept`, so a node serving N
/// listeners can be N - 1 connections short of its limit: nothing next to
/// a limit in the thousands, and what lets each listener stop and drain on
/// its own. The future must run on the listeners' home runtime
/// ([`Listener::home`]), one they share: there they are polled.
pub fn serve<H: Handler>(
    listeners: Vec<(Listener, Arc<H>)>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> impl Future<Output = Vec<(Listener, Arc<H>)>> {
    for (listener, handler) in &listeners {
        // Accepted sockets inherit these: nothing to set per client.
        if let Err(e) = sockopt::tune_listener(listener.fd.get_ref(), &shared.settings) {
            warn!(service = %handler.name(), error = %e, "cannot set socket options on the listener");
        }
    }
    async move {
        accept_loop(&listeners, &shared, &stop, &tracker).await;
        listeners
    }
}

/// The loop of [`serve`].
async fn accept_loop<H: Handler>(
    listeners: &[(Listener, Arc<H>)],
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    tracker: &TaskTracker,
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
            r = accept_any(listeners, start) => r,
        };
        start = (i + 1) % listeners.len();
        let handler = &listeners[i].1;
        match accepted {
            Ok((client, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let (handler, task_shared) = (handler.clone(), Arc::clone(shared));
                // The handler's future is made inside the task: made outside
                // and moved in, it would take its size twice in the task
                // (the captured future, then the awaited one), per idle
                // connection.
                shared.shards.spawn(tracker, async move {
                    // Registered on the shard, in the task's first poll.
                    match TcpStream::from_std(client) {
                        Ok(client) => handler.handle(client, peer, task_shared).await,
                        Err(e) => match TAKEOVER_ERRORS.admit() {
                            Some(0) => warn!(service = %handler.name(), error = %e,
                                "cannot take over a connection"),
                            Some(more) => warn!(service = %handler.name(), error = %e,
                                "cannot take over a connection ({more} more since the last such line)"),
                            None => debug!(service = %handler.name(), error = %e,
                                "cannot take over a connection"),
                        },
                    }
                    drop(permit);
                });
            }
            // The client gave up between SYN and accept: nothing to wait for.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                super::shortage::note(&e);
                match ACCEPT_ERRORS.admit() {
                    Some(0) => warn!(service = %handler.name(), error = %e,
                        retry_in = ?backoff, "accept failed"),
                    Some(more) => warn!(service = %handler.name(), error = %e,
                        retry_in = ?backoff, "accept failed ({more} more since the last such line)"),
                    None => debug!(service = %handler.name(), error = %e,
                        retry_in = ?backoff, "accept failed"),
                }
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
async fn accept_any<H>(
    listeners: &[(Listener, Arc<H>)],
    start: usize,
) -> (usize, io::Result<(std::net::TcpStream, SocketAddr)>) {
    std::future::poll_fn(|cx| {
        for k in 0..listeners.len() {
            let i = (start + k) % listeners.len();
            if let Poll::Ready(r) = poll_accept(&listeners[i].0.fd, cx) {
                return Poll::Ready((i, r));
            }
        }
        Poll::Pending
    })
    .await
}

/// Accepts a connection on `listener` once it is readable.
fn poll_accept(
    listener: &AsyncFd<std::net::TcpListener>,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<(std::net::TcpStream, SocketAddr)>> {
    loop {
        let mut ready = ready!(listener.poll_read_ready(cx))?;
        // `Err` is "would block": readiness is cleared, poll again.
        if let Ok(accepted) = ready.try_io(|l| accept_nonblocking(l.get_ref())) {
            return Poll::Ready(accepted);
        }
    }
}

/// `accept4` with the socket non-blocking and close-on-exec from the
/// start (std's `accept` would need a call more to make it non-blocking).
fn accept_nonblocking(
    listener: &std::net::TcpListener,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::{acceptfrom_with, SocketFlags};
    let (fd, addr) = acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let peer = addr
        .and_then(|a| SocketAddr::try_from(a).ok())
        .ok_or_else(|| io::Error::other("accepted a connection that has no IP address"))?;
    Ok((std::net::TcpStream::from(fd), peer))
}
