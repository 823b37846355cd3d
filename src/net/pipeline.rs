//! One client connection, as a pipeline of stages:
//!
//! ```text
//! client ─> [accept] ─> [connect: dial ─> tls ─> login] ─> [copy]
//! ```
//!
//! - accept: socket options on the client side.
//! - connect: the balancer's candidates, down the list until one is ready
//!   for the client's bytes ([`connect`]). Each candidate goes through
//!   - dial: the TCP connect;
//!   - tls: for a backend behind another ambassador's TLS terminator, the
//!     mutual TLS handshake;
//!   - login: with `--credentials` for the service, the login on the
//!     application's behalf, before any client byte goes to the backend.
//!
//!   A candidate that fails any of them (refused, stalled, closed, a
//!   failed handshake, an answer to the login that no Redis server gives)
//!   is a backend that failed: ejected, handed to discovery to verify, and
//!   the next candidate is tried; the client sees none of it unless every
//!   candidate fails. A failure of our own ejects nothing (EMFILE) or only
//!   sets the backend aside (our link towards it down), and asks discovery
//!   nothing. A backend that refuses the credentials is alive and left as
//!   it is, and the next candidate is tried too; when none took them, the
//!   client gets the refusal as an error in its protocol.
//! - copy: both directions until both are done ([`copy`]).
//!
//! Each stage is a function that takes what the previous one produced and
//! returns what the next one needs, or ends the connection with a log
//! line. A backend counts as answering (restored from an ejection, proven)
//! only once every step before the copy has passed.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tracing::{debug, info, warn};

use crate::backends::table::{ActiveGuard, Backend, Target};
use crate::backends::Service;
use crate::credentials::{Credentials, LoginError, Refused};
use crate::net::accept::{Handler, Shared};
use crate::net::copy::{self, End, Side};
use crate::net::dial::{dial_from, DialError};
use crate::net::loglimit::LogLimit;
use crate::net::sockopt;
use crate::security::tls::{self, Tls};
use crate::settings::ProxySettings;

/// Warnings about clients turned away, process-wide.
static REFUSALS: LogLimit = LogLimit::new();

/// The connection to a backend: plain, or mutual TLS to another
/// ambassador's terminator.
pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for BackendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendStream::Plain(s) => write!(f, "Plain({:?})", s.peer_addr()),
            BackendStream::Tls(s) => write!(f, "Tls({:?})", s.get_ref().0.peer_addr()),
        }
    }
}

/// The backend side of a connection, as it goes from stage to stage.
pub struct Upstream {
    /// Counts the connection in the backend's `active` from its dial on;
    /// names the backend.
    pub active: ActiveGuard,
    /// The connection to the backend.
    pub stream: BackendStream,
}

/// A consumed service's listener runs each client through every stage.
impl Handler for Service {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(self: Arc<Self>, client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
        self.counters.clients.fetch_add(1, Ordering::Relaxed);
        let mut client = accept_stage(client, peer, &self, &shared);
        // The connect stage is boxed: its future (a TLS handshake holds a
        // whole rustls connection) is freed once it is done, so an idle
        // connection keeps only the copy stage's.
        let connected = Box::pin(connect_stage(&mut client, peer, &self, &shared)).await;
        let Some(upstream) = connected else {
            self.counters.turned_away.fetch_add(1, Ordering::Relaxed);
            return;
        };
        copy_stage(client, peer, upstream, &self, &shared).await;
    }
}

/// Socket options of the client side: no Nagle, keepalive, user timeout,
/// inherited from the listener where the kernel does that.
fn accept_stage(client: TcpStream, peer: SocketAddr, svc: &Service, shared: &Shared) -> TcpStream {
    if sockopt::ACCEPTED_INHERIT_OPTIONS {
        return client;
    }
    if let Err(e) = sockopt::tune_stream(&client, &shared.settings) {
        debug!(service = %svc.name, client = %peer, error = %e, "cannot set client socket options");
    }
    client
}

/// A backend ready for the client's bytes; `None` when there is none
/// (logged; a client whose credentials every backend refused is told so),
/// the client's connection fails or the node stops meanwhile.
async fn connect_stage(
    client: &mut TcpStream,
    peer: SocketAddr,
    svc: &Service,
    shared: &Shared,
) -> Option<Upstream> {
    let began = Instant::now();
    let connected = tokio::select! {
        r = connect(svc, &shared.settings, shared.tls.as_deref()) => r,
        _ = shared.hard_stop.cancelled() => return None,
        // A client whose connection failed (a reset: a health checker, an
        // application past its own timeout; or its keepalive gave up) is
        // gone: its wait for a backend would hold a slot, and a backend
        // found later would be dialed for nobody. Bytes it sent are not
        // forwarded: nobody would read the answer. One that only closed
        // its side may still await the answer (a half-close) and waits
        // on, as HAProxy's queue serves it without `abortonclose`.
        _ = client.ready(Interest::ERROR) => {
            debug!(service = %svc.name, client = %peer,
                "the client's connection failed before a backend was ready");
            return None;
        }
    };
    let (active, stream) = match connected {
        Ok(pair) => pair,
        Err(ConnectError::Refused(why)) => {
            // Logged once per backend by the login itself.
            debug!(service = %svc.name, client = %peer, "closing client connection: {why}");
            if let Some(credentials) = &svc.credentials {
                turn_away(client, &credentials.client_error(&why), shared).await;
            }
            return None;
        }
        Err(e) => {
            // A burst of clients while every backend is down (or while we
            // are out of descriptors) is one line a second, not one each.
            match REFUSALS.admit() {
                Some(0) => warn!(service = %svc.name, client = %peer,
                    "closing client connection: {e}"),
                Some(more) => warn!(service = %svc.name, client = %peer,
                    "closing client connection: {e} ({more} more since the last such line)"),
                None => debug!(service = %svc.name, client = %peer,
                    "closing client connection: {e}"),
            }
            return None;
        }
    };
    svc.counters.connect_latency.observe(began.elapsed());
    active.backend().stats.total.fetch_add(1, Ordering::Relaxed);
    Some(Upstream { active, stream })
}

/// How long a client turned away with an error has to read it and close:
/// closing while its request is still unread would send a reset, which
/// can destroy the error line before the client reads it. A client reads
/// the line and closes in well under a millisecond; one second bounds what
/// a client that never closes costs.
const LINGER: Duration = Duration::from_secs(1);

/// Sends the client `reply`, ends its side, and waits (within [`LINGER`])
/// for it to close.
async fn turn_away(client: &mut TcpStream, reply: &[u8], shared: &Shared) {
    let turn_away = async {
        client.write_all(reply).await?;
        client.shutdown().await?;
        let mut sink = [0; 1024];
        while client.read(&mut sink).await? != 0 {}
        Ok::<_, io::Error>(())
    };
    tokio::select! {
        _ = timeout(LINGER, turn_away) => {}
        _ = shared.hard_stop.cancelled() => {}
    }
}

/// How long a plain backend connection lasts before it gets keepalive and
/// TCP_USER_TIMEOUT ([`sockopt::tune_stream`]). Both act only after tens of
/// seconds (a probe after 30 s of silence, a reset after 60 s of
/// unacknowledged data, by default), so a connection that ends sooner never
/// needs them: a connection per request saves five `setsockopt` calls, a
/// fifth of the system calls it cost. The kernel counts silence from the
/// last packet, so a dead backend is noticed at most this much later.
const BACKEND_OPTIONS_AFTER: Duration = Duration::from_secs(1);

/// Bytes both ways until both sides are done, a limit ends the connection
/// or the node's drain runs out; the counts go to the backend's stats.
async fn copy_stage(
    mut client: TcpStream,
    peer: SocketAddr,
    mut upstream: Upstream,
    svc: &Service,
    shared: &Shared,
) {
    let settings = &shared.settings;
    let limits = copy::Limits {
        idle: settings.idle_timeout,
        half_close: settings.half_close_timeout,
    };
    let stop = &shared.hard_stop;
    let backend = upstream.active.backend();
    let (stats, totals) = (&backend.stats, &svc.counters);
    let meters = copy::Meters {
        from_client: &[&stats.bytes_out, &totals.bytes_out],
        from_server: &[&stats.bytes_in, &totals.bytes_in],
    };
    let tune = |server: &TcpStream| {
        if let Err(e) = sockopt::tune_stream(server, settings) {
            debug!(service = %svc.name, backend = %backend.spec.target, error = %e,
                "cannot set backend socket options");
        }
    };
    let later = copy::Later {
        after: BACKEND_OPTIONS_AFTER,
        run: &tune,
    };
    let began = Instant::now();
    let report = match &mut upstream.stream {
        BackendStream::Plain(tcp) => {
            copy::copy_both(&mut client, tcp, limits, meters, Some(later), stop).await
        }
        BackendStream::Tls(tls) => {
            let report = copy::copy_streams(&mut client, &mut **tls, limits, meters, stop).await;
            copy::reset_after(&report.end, &client, tls.get_ref().0);
            report
        }
    };
    let (bytes_out, bytes_in) = (report.from_client, report.from_server);
    judge(svc, backend, &report, began);
    let why = match report.end {
        End::Done { .. } => "connection closed",
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

/// How soon after its connection began a backend that closes it without a
/// byte of reply counts as failing. One that takes connections and drops
/// them (a forwarder whose far end is down, a service that crashes on each
/// request) does so within milliseconds; a server that closes a client
/// idle past a timeout of its own takes seconds, and is not failing.
const SILENT_CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// What a connection's end says of its backend, which took it at
/// `began`: a reply restores one ejected for closing silently; a close by the
/// backend, at once and without a byte of reply, counts towards such an
/// ejection ([`crate::backends::table::SILENT_CLOSES_TO_EJECT`]). Without
/// this, one such backend among three lost a third of the clients for as
/// long as it ran, and p2c sent it more than its share.
fn judge(svc: &Service, backend: &Backend, report: &copy::Report, began: Instant) {
    if report.from_server > 0 {
        if svc.table.report_reply(&backend.stats, began) {
            info!(service = %svc.name, backend = %backend.spec.target, "backend restored");
        }
        return;
    }
    let closed_by_it = matches!(
        report.end,
        End::Done {
            first: Side::Server
        } | End::Failed {
            side: Side::Server,
            ..
        }
    );
    if !closed_by_it || began.elapsed() >= SILENT_CLOSE_WITHIN {
        return;
    }
    let why = "closed the connection at once, without a reply";
    match svc.table.report_silent_close(&backend.stats, &why) {
        Some(period) => warn!(service = %svc.name, backend = %backend.spec.target,
            error = why, eject_for = ?period, "backend ejected"),
        None => debug!(service = %svc.name, backend = %backend.spec.target, "{why}"),
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
    /// None was known when the wait ended, or a retry was still dialing.
    #[error("no backend ready for this service after waiting {0:?}")]
    NoneCame(Duration),
    #[error("no backend answered ({tried} tried, last error: {last})")]
    AllFailed { tried: usize, last: io::Error },
    /// This process could not dial at all (out of descriptors, ports,
    /// memory); no backend was blamed.
    #[error("out of local resources, cannot dial: {0}")]
    Local(io::Error),
    /// This host has no working link towards any backend tried (its own
    /// link is down); no backend was blamed, and one may answer once the
    /// link is back.
    #[error("this host has no working link towards any backend: {0}")]
    Unlinked(io::Error),
    /// A backend refused the service's credentials, and no other took
    /// them: the client is told why in its protocol.
    #[error(transparent)]
    Refused(Refused),
}

/// Why one candidate did not become the client's backend.
enum Setback {
    /// The dial, the TLS handshake or the login failed (the backend's
    /// fault), or this process could not dial.
    Failed(DialError),
    /// The backend answered the login with an error: alive, but not
    /// taking these credentials.
    Refused(Refused),
}

impl From<DialError> for Setback {
    fn from(e: DialError) -> Setback {
        Setback::Failed(e)
    }
}

impl ConnectError {
    /// Whether waiting could help (a backend found, those tried back, our
    /// link back): none was known, every one tried failed or could not be
    /// reached from here, or a login was refused for another reason than
    /// the credentials.
    fn awaits_news(&self) -> bool {
        match self {
            ConnectError::NoBackends
            | ConnectError::AllFailed { .. }
            | ConnectError::Unlinked(_) => true,
            // A Redis at its `maxclients` takes logins again once a client
            // leaves; wrong credentials stay wrong.
            ConnectError::Refused(why) => !why.about_credentials(),
            _ => false,
        }
    }
}

/// Takes candidates in balancer order through every step before the copy
/// (dial, TLS, login) until one is ready, within `connect_attempts` tries
/// (a proven backend among them whenever one exists:
/// [`crate::backends::balance`]), each step bounded by `connect_timeout`
/// (the TLS handshake by [`tls::HANDSHAKE_TIMEOUT`], the login by
/// `login_timeout`).
///
/// A service with no backend, or whose candidates all failed, holds the
/// client for up to `wait_for_backend` from its arrival and
/// tries again (at once for a backend it has not tried; a pass begun
/// within the wait may run one connect timeout past it): a node just
/// started, a provider or its service restarting, or a service moving to
/// another host loses no client to the moment between two records.
///
/// Every failure ejects that backend, so the next clients skip it at
/// once, and the next candidate is tried: a backend that accepts
/// connections and then stalls, drops or garbles the login serves no
/// client (a provider's TLS terminator whose local Redis is down, or a
/// stranger on a keyless LAN), so it is dealt with like a dead one. A
/// failure for lack of local resources ejects nothing (ejecting healthy
/// backends, or asking discovery to verify them, would turn our own
/// descriptor shortage into an outage) and the next candidate is tried;
/// when every dial failed that way, this client alone fails, after a short
/// pause. A dial this host had no working link for (its cable pulled, its
/// interface down: [`crate::net::route`]) is not the backend's failure
/// either: nobody is asked to verify it, it is only set aside behind the
/// others (logged at debug), and the client waits for the link as for a
/// backend.
///
/// A backend that refuses the credentials (a Redis error in answer to
/// `AUTH`) is alive, and its health is left as it is: not ejected (the
/// fault is the credentials'), and neither proven nor restored from an
/// ejection, since it serves none of this node's clients: only a login
/// that succeeds does that. The next candidate is tried, in case it takes
/// them (a node not yet given a new password, a stranger answering errors
/// on a keyless LAN); when none does, the refusal is the error.
///
/// The ready backend comes with the [`ActiveGuard`] taken when its dial
/// began (keep it for the connection's life), its success reported.
pub async fn connect(
    svc: &Service,
    settings: &ProxySettings,
    tls: Option<&Tls>,
) -> Result<(ActiveGuard, BackendStream), ConnectError> {
    // A static service's too: its backends do not change between
    // reloads, but one restarting in place comes back (HAProxy's `retries`
    // keep its clients the same way).
    let wait = settings.wait_for_backend;
    let deadline = Instant::now() + wait;
    let mut order =
        svc.balancer
            .candidates(&svc.table, &svc.table.snapshot(), settings.connect_attempts);
    let mut result = try_candidates(svc, &order, settings, tls).await;
    if wait.is_zero() || !result.as_ref().is_err_and(ConnectError::awaits_news) {
        return result;
    }
    let Some(_held) = Waiting::enter(&svc.counters.waiting, settings.max_connections / 4) else {
        return result;
    };
    // Every backend this client dialed, as it was then: a backend that
    // left and came back is a new entry, its own stats.
    let mut tried = order;
    loop {
        let failed = match result {
            Err(e) if e.awaits_news() => e,
            done => return done,
        };
        debug!(service = %svc.name, "{failed}: the client waits for a backend");
        order = match timeout_at(deadline, next_candidates(svc, settings, &tried)).await {
            Ok(next) if Instant::now() < deadline => next,
            _ => {
                return Err(match failed {
                    ConnectError::NoBackends => ConnectError::NoneCame(wait),
                    other => other,
                })
            }
        };
        tried.extend(order.iter().cloned());
        // A pass begun within the wait may run one connect timeout past
        // it: the wait bounds the waiting, not a dial under way (HAProxy's
        // `timeout queue` ends where its `timeout connect` begins). A
        // backend that comes back to a crowd of waiting clients drops the
        // SYNs its full accept queue has no room for, and the kernel sends
        // them again a second later: cut at the end of the wait, those
        // clients were closed with their backend up. Bounded still, so
        // that a client is held at most that much longer than it was told.
        result = timeout_at(
            deadline + settings.connect_timeout,
            try_candidates(svc, &order, settings, tls),
        )
        .await
        .unwrap_or(Err(ConnectError::NoneCame(wait)));
    }
}

/// How long a client whose candidates all failed waits before it dials
/// them again, when no other backend comes (HAProxy waits the lesser of
/// its connect timeout and one second before a retry on the same server).
/// A backend restarted in place (within its provider's checks, so its
/// records never changed) then serves the clients that waited for it, as
/// it serves the clients that come after.
const TURN_AROUND: Duration = Duration::from_secs(1);

/// The candidates for a client whose passes over `tried` failed: at once
/// when the balancer offers one it has not dialed (one found, one that
/// moved or came back after it left, one it had not reached within its
/// attempts), else once the table changes so, or after [`TURN_AROUND`]
/// whatever the balancer offers then (most often the same ones). Other
/// changes (an instance leaving, a draining flag) would only have it dial
/// again what just failed.
async fn next_candidates(
    svc: &Service,
    settings: &ProxySettings,
    tried: &[Arc<Backend>],
) -> Vec<Arc<Backend>> {
    let again = Instant::now() + TURN_AROUND;
    let untried = |b: &Arc<Backend>| {
        !tried
            .iter()
            .any(|t| Arc::ptr_eq(&t.stats, &b.stats) && t.spec.target == b.spec.target)
    };
    loop {
        let snap = svc.table.snapshot();
        let order = svc
            .balancer
            .candidates(&svc.table, &snap, settings.connect_attempts);
        // Once the turn-around is over, the candidates of now: health
        // changes (an ejection over, a probation passed) wake nobody.
        if order.iter().any(untried) || (!order.is_empty() && Instant::now() >= again) {
            return order;
        }
        tokio::select! {
            () = svc.table.changed_since(&snap) => {}
            // Nothing to dial again in an empty table.
            () = sleep_until(again), if !order.is_empty() => {}
        }
    }
}

/// A client held by [`connect`] for a backend, counted in its service's
/// `waiting` while it is.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    /// Counts one more, unless `most` wait already: a service without
    /// backends must not hold more than its share of the node's connection
    /// limit with clients that would only wait (a client retrying in a
    /// tight loop), and those past it are closed at once as before.
    fn enter(waiting: &'a AtomicU64, most: usize) -> Option<Waiting<'a>> {
        if waiting.fetch_add(1, Ordering::Relaxed) >= most.max(1) as u64 {
            waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Waiting(waiting))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One pass of [`connect`] over `order`, the balancer's candidates.
async fn try_candidates(
    svc: &Service,
    order: &[Arc<Backend>],
    settings: &ProxySettings,
    tls: Option<&Tls>,
) -> Result<(ActiveGuard, BackendStream), ConnectError> {
    if order.is_empty() {
        return Err(ConnectError::NoBackends);
    }
    let mut last = None;
    let mut local = None;
    let mut unlinked = None;
    let mut refused = None;
    let mut tried = 0;
    for backend in order {
        tried += 1;
        // Counted from now, so the balancer sees dials in flight.
        let active = ActiveGuard::new(backend.clone());
        match establish(svc, backend, settings, tls).await {
            Ok(stream) => {
                backend_ready(svc, backend);
                return Ok((active, stream));
            }
            // Not the backend's fault, and perhaps not the next one's
            // problem (no free port towards this address only): try on,
            // blaming nobody.
            Err(Setback::Failed(DialError::Local(e))) => {
                debug!(service = %svc.name, backend = %backend.spec.target, error = %e,
                    "cannot dial: out of local resources");
                local = Some(e);
            }
            // Our own link towards it is down: nobody is asked to verify
            // it, and this client waits for the link (within its wait for
            // a backend). It is set aside behind the others as an ejection
            // would (still dialed when all are), so that a host with
            // another link up serves its clients there rather than make
            // each wait out a connect timeout on the dead one.
            Err(Setback::Failed(DialError::Unlinked(e))) => {
                let why = format_args!("this host has no working link towards it: {e}");
                let aside = svc.table.report_failure(&backend.stats, &why);
                debug!(service = %svc.name, backend = %backend.spec.target, error = %e,
                    set_aside_for = ?aside, "cannot dial: this host has no working link towards it");
                unlinked = Some(e);
            }
            Err(Setback::Failed(DialError::Backend(e))) => {
                backend_failed(svc, backend, &e);
                last = Some(e);
            }
            Err(Setback::Refused(why)) => refused = Some(why),
        }
    }
    match (refused, last, unlinked, local) {
        // What the client can act on: the credentials, not the others'
        // failures (each logged with its backend).
        (Some(why), _, _, _) => Err(ConnectError::Refused(why)),
        (None, Some(last), _, _) => Err(ConnectError::AllFailed { tried, last }),
        (None, None, Some(e), _) => Err(ConnectError::Unlinked(e)),
        (None, None, None, Some(e)) => {
            // Every dial failed on our side: slow this connection task down
            // (it keeps its permit) rather than churn through the queue.
            sleep(LOCAL_ERROR_BACKOFF).await;
            Err(ConnectError::Local(e))
        }
        (None, None, None, None) => Err(ConnectError::NoBackends),
    }
}

/// One candidate through the dial, TLS and login steps, with its socket
/// options set.
async fn establish(
    svc: &Service,
    backend: &Backend,
    settings: &ProxySettings,
    tls: Option<&Tls>,
) -> Result<BackendStream, Setback> {
    // A discovered backend of several addresses; one address (or a name,
    // whose resolver's order is its own) has nothing to choose, and no lock
    // or syscall to pay.
    let several = match &backend.spec.target {
        Target::Addrs(a) if a.len() > 1 => Some(a[0]),
        _ => None,
    };
    let first = several.and_then(|_| backend.stats.dial_first());
    let stream = dial_from(&backend.spec.target, settings.connect_timeout, first).await?;
    if let Some(listed_first) = several {
        if let Ok(peer) = stream.peer_addr() {
            backend.stats.note_dialed(peer, listed_first);
        }
    }
    // A plain backend socket gets keepalive and the user timeout from the
    // copy stage, after BACKEND_OPTIONS_AFTER; a TLS one now (its handshake
    // costs far more than these calls).
    let tuned = if backend.spec.tls {
        sockopt::tune_stream(&stream, settings)
    } else {
        stream.set_nodelay(true)
    };
    if let Err(e) = tuned {
        debug!(service = %svc.name, backend = %backend.spec.target, error = %e,
            "cannot set backend socket options");
    }
    let mut stream = secure(stream, backend, tls).await?;
    if let Some(credentials) = &svc.credentials {
        log_in(
            svc,
            backend,
            credentials,
            &mut stream,
            settings.login_timeout,
        )
        .await?;
    }
    Ok(stream)
}

/// Logs the backend connection in, within `limit`. A refusal is logged
/// once per backend, until a login to it succeeds again.
async fn log_in(
    svc: &Service,
    backend: &Backend,
    credentials: &Credentials,
    stream: &mut BackendStream,
    limit: Duration,
) -> Result<(), Setback> {
    let result = match stream {
        BackendStream::Plain(tcp) => credentials.log_in(tcp, limit).await,
        BackendStream::Tls(tls) => credentials.log_in(&mut **tls, limit).await,
    };
    let target = &backend.spec.target;
    let failing = &backend.stats.login_failing;
    match result {
        Ok(()) => {
            if failing.swap(false, Ordering::Relaxed) {
                info!(service = %svc.name, backend = %target, "backend accepts the credentials again");
            }
            Ok(())
        }
        Err(LoginError::Refused(why)) => {
            if !failing.swap(true, Ordering::Relaxed) {
                warn!(service = %svc.name, backend = %target, credentials = %credentials.spec,
                    error = %why, "login refused; clients go to other backends, or get this \
                    error, until a login succeeds (logged once)");
            }
            Err(Setback::Refused(why))
        }
        Err(e) => Err(DialError::Backend(io::Error::other(e)).into()),
    }
}

/// A backend answered all the way: its ejection, if any, ends, and it
/// counts as proven.
fn backend_ready(svc: &Service, backend: &Backend) {
    if svc.table.report_success(&backend.stats) {
        info!(service = %svc.name, backend = %backend.spec.target, "backend restored");
    }
}

/// A backend failed a connection: ejected (unless it already is), and
/// handed to discovery to verify.
fn backend_failed(svc: &Service, backend: &Backend, error: &dyn std::fmt::Display) {
    match svc.table.report_failure(&backend.stats, error) {
        Some(period) => warn!(service = %svc.name, backend = %backend.spec.target,
            error = %error, eject_for = ?period, "backend ejected"),
        None => debug!(service = %svc.name, backend = %backend.spec.target,
            error = %error, "connect failed"),
    }
    svc.suspect(&backend.spec.key);
}

/// For a backend behind a TLS terminator, the handshake on a dialed
/// connection and the terminator's ready byte, bounded by
/// [`tls::HANDSHAKE_TIMEOUT`]: a backend that cannot finish them (no
/// member, or its local service is down) failed like one that refused the
/// connect, and the next candidate is tried.
pub(crate) async fn secure(
    stream: TcpStream,
    backend: &Backend,
    tls: Option<&Tls>,
) -> Result<BackendStream, DialError> {
    if !backend.spec.tls {
        return Ok(BackendStream::Plain(stream));
    }
    let failed = |kind, what: String| Err(DialError::Backend(io::Error::new(kind, what)));
    let Some(tls) = tls else {
        // Discovery and the settings keep such backends out; stay safe.
        return failed(
            io::ErrorKind::Unsupported,
            "the backend speaks TLS and this node has no cluster key".into(),
        );
    };
    match timeout(tls::HANDSHAKE_TIMEOUT, tls.connect(stream)).await {
        Ok(Ok(s)) => Ok(BackendStream::Tls(Box::new(s))),
        Ok(Err(e)) => Err(DialError::Backend(e)),
        Err(_) => failed(io::ErrorKind::TimedOut, "TLS handshake timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::balance::{Balancer, Policy};
    use crate::backends::service::{Source, Suspects};
    use crate::backends::table::{BackendSpec, Origin, Table, Target, Update};

    fn spec(key: &str, port: u16, draining: bool) -> BackendSpec {
        BackendSpec {
            key: key.into(),
            target: Target::Addrs(vec![SocketAddr::from(([127, 0, 0, 1], port))]),
            weight: 1,
            draining,
            tls: false,
            origin: Origin::Mesh,
        }
    }

    fn discovered() -> Service {
        let (suspects, _) = Suspects::channel(Duration::from_secs(4));
        Service {
            name: "redis".into(),
            // Ejections outlast every test (a minute): what a test ejects
            // stays ejected while its clock runs.
            table: Arc::new(Table::with_probation(Duration::from_secs(60))),
            balancer: Balancer::new(Policy::P2c),
            source: Source::Discovered(suspects),
            listener: None,
            credentials: None,
            counters: Default::default(),
        }
    }

    /// A discovered service of two backends, a and b, both on probation.
    fn a_and_b() -> (Arc<Service>, [Arc<Backend>; 2]) {
        let svc = Arc::new(discovered());
        for (key, port) in [("a", 1), ("b", 2)] {
            svc.table.apply(Update::Upsert(spec(key, port, false)));
        }
        let snap = svc.table.snapshot();
        let both = [snap.backends[0].clone(), snap.backends[1].clone()];
        (svc, both)
    }

    /// A client's settings of one attempt per pass.
    fn one_attempt() -> ProxySettings {
        ProxySettings {
            connect_attempts: 1,
            ..ProxySettings::default()
        }
    }

    /// `next_candidates` for a client that dialed `tried`, on its own task.
    fn next_for(
        svc: &Arc<Service>,
        settings: ProxySettings,
        tried: Vec<Arc<Backend>>,
    ) -> tokio::task::JoinHandle<Vec<Arc<Backend>>> {
        let svc = svc.clone();
        tokio::spawn(async move { next_candidates(&svc, &settings, &tried).await })
    }

    /// A discovered service of one backend, a, and a client whose pass over
    /// it failed, on its way to its next candidates.
    fn failed_on_a() -> (Arc<Service>, tokio::task::JoinHandle<Vec<Arc<Backend>>>) {
        let svc = Arc::new(discovered());
        svc.table.apply(Update::Upsert(spec("a", 1, false)));
        let tried = svc.table.snapshot().backends.clone();
        let next = next_for(&svc, ProxySettings::default(), tried);
        (svc, next)
    }

    /// Whether `next` is done within `within` (of the paused clock).
    async fn woken(
        next: &mut tokio::task::JoinHandle<Vec<Arc<Backend>>>,
        within: Duration,
    ) -> Option<Vec<Arc<Backend>>> {
        tokio::time::timeout(within, next)
            .await
            .ok()
            .map(Result::unwrap)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_client_tries_a_backend_that_moved_or_came_back_at_once() {
        let (svc, mut next) = failed_on_a();
        // The one that failed, draining now: nothing new to try.
        assert!(svc.table.apply(Update::Upsert(spec("a", 1, true))));
        assert!(woken(&mut next, Duration::from_millis(1)).await.is_none());
        // It moved: a new address is worth a dial.
        assert!(svc.table.apply(Update::Upsert(spec("a", 2, true))));
        let moved = woken(&mut next, Duration::from_millis(1)).await;
        let moved = moved.expect("not woken by the move");
        assert_eq!(moved[0].spec.target, spec("a", 2, true).target);

        // It left and came back as it was (its provider withdrew it while
        // its service restarted): another backend, whatever its name.
        let (svc, mut next) = failed_on_a();
        assert!(svc.table.apply(Update::Remove("a".into())));
        assert!(woken(&mut next, Duration::from_millis(1)).await.is_none());
        assert!(svc.table.apply(Update::Upsert(spec("a", 1, false))));
        let back = woken(&mut next, Duration::from_millis(1)).await;
        assert_eq!(back.expect("not woken by its return").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_client_tries_the_same_again_after_a_turn_around_not_before() {
        let (_svc, mut next) = failed_on_a();
        let early = TURN_AROUND - Duration::from_millis(1);
        assert!(woken(&mut next, early).await.is_none(), "retried early");
        let again = woken(&mut next, Duration::from_millis(2)).await;
        assert_eq!(again.expect("never retried").len(), 1);

        // Nothing to dial again in an empty table: only a backend wakes it.
        let svc = Arc::new(discovered());
        let mut next = next_for(&svc, ProxySettings::default(), Vec::new());
        assert!(woken(&mut next, 10 * TURN_AROUND).await.is_none());
        svc.table.apply(Update::Upsert(spec("a", 1, false)));
        assert!(woken(&mut next, Duration::from_millis(1)).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_around_offers_the_candidates_of_its_end() {
        let (svc, [a, b]) = a_and_b();
        svc.table.report_success(&a.stats);
        svc.table.report_failure(&a.stats, &"refused");
        // The proven one, ejected, before one on probation.
        let first = svc
            .balancer
            .candidates(&svc.table, &svc.table.snapshot(), 1);
        assert_eq!(first[0].spec.key, "a");
        let mut next = next_for(&svc, one_attempt(), first);
        assert!(woken(&mut next, Duration::from_millis(1)).await.is_none());
        // b passes its probation: a change of health, which wakes nobody.
        svc.table.report_success(&b.stats);
        let then = woken(&mut next, TURN_AROUND).await.expect("never retried");
        assert_eq!(then[0].spec.key, "b", "the candidates of the failure");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_client_tries_at_once_a_backend_its_attempts_had_not_reached() {
        let (svc, both) = a_and_b();
        for b in &both {
            svc.table.report_success(&b.stats);
        }
        let first = svc
            .balancer
            .candidates(&svc.table, &svc.table.snapshot(), 1);
        // Its one attempt failed, and ejected it.
        svc.table.report_failure(&first[0].stats, &"refused");
        let mut next = next_for(&svc, one_attempt(), first.clone());
        let other = woken(&mut next, Duration::from_millis(1)).await;
        let other = other.expect("waited with a backend left untried");
        assert_eq!(other.len(), 1);
        assert_ne!(other[0].spec.key, first[0].spec.key);
    }

    /// A backend back to a crowd of waiting clients drops the SYNs its
    /// full accept queue has no room for, and the kernel sends them again
    /// a second later: a retry that began within the wait is served then,
    /// past the wait's end, instead of being cut there. Real sockets and
    /// the real clock: the kernel's retransmission is what is waited for.
    #[tokio::test]
    async fn a_retry_begun_within_the_wait_is_not_cut_at_its_end() {
        use socket2::{Domain, Socket, Type};
        // Bound and not listening yet: the first dial is refused.
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let svc = Arc::new(discovered());
        svc.table
            .apply(Update::Upsert(spec("a", addr.port(), false)));
        let stats = svc.table.snapshot().backends[0].stats.clone();
        // The retry comes a turn-around after the refusal, within the
        // wait; the wait ends well before its SYN is sent again.
        let wait = TURN_AROUND + Duration::from_millis(500);
        let settings = ProxySettings {
            wait_for_backend: wait,
            ..ProxySettings::default()
        };
        assert!(settings.connect_timeout > Duration::from_secs(1));
        let arrived = Instant::now();
        let client = tokio::spawn({
            let svc = svc.clone();
            async move { connect(&svc, &settings, None).await.map(|_| ()) }
        });
        let refused = async {
            while stats.failures.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        timeout(TURN_AROUND / 2, refused)
            .await
            .expect("the first dial was not refused");
        // Listening now with no room: two connections fill the accept
        // queue of a backlog of 1 (a backlog of 0 would take even these
        // through SYN cookies), and the retry's SYN is dropped.
        socket.listen(1).unwrap();
        let _fillers = [(); 2].map(|()| std::net::TcpStream::connect(addr).unwrap());
        tokio::time::sleep_until(arrived + wait).await;
        assert!(!client.is_finished(), "the client was let go in its wait");
        assert_eq!(
            stats.active.load(Ordering::Relaxed),
            1,
            "no dial under way at the end of the wait"
        );
        // Room again: the SYN sent again is taken in.
        let (_accepted, _) = socket.accept().unwrap();
        let served = timeout(Duration::from_secs(5), client).await;
        let served = served.expect("the retry never ended").unwrap();
        assert!(served.is_ok(), "the retry was cut: {:?}", served.err());
    }

    #[test]
    fn at_most_the_share_wait_and_each_leaves_its_place() {
        let waiting = AtomicU64::new(0);
        let first = Waiting::enter(&waiting, 2).expect("first");
        let second = Waiting::enter(&waiting, 2).expect("second");
        assert!(Waiting::enter(&waiting, 2).is_none(), "a third waits");
        assert_eq!(waiting.load(Ordering::Relaxed), 2);
        drop(first);
        let third = Waiting::enter(&waiting, 2).expect("a place left");
        drop((second, third));
        assert_eq!(waiting.load(Ordering::Relaxed), 0);
        // A limit under four connections still lets one wait.
        let one = Waiting::enter(&waiting, 0).expect("one at least");
        assert!(Waiting::enter(&waiting, 0).is_none());
        drop(one);
    }
}
