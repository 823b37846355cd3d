//! Connecting to a backend that may have several addresses (an IPv4 and a
//! link-local IPv6 one, or whatever DNS returns), the way RFC 8305 "Happy
//! Eyeballs" does: start with the first address, start the next one if no
//! answer came within a short delay or the attempt failed, take the first
//! connection that succeeds. A silent first address thus costs a quarter
//! second, not the whole connect timeout.
//!
//! Attempts are futures polled by the dialing task itself, not spawned
//! tasks: nothing to join, nothing to abort, and a single address (the
//! common case) is one connect under a timeout.
//!
//! A failed dial says whose fault it was ([`DialError`]): running out of
//! file descriptors or ports is ours, and must not eject a healthy backend.
//!
//! Host names are resolved through a cache ([`resolve`]), not per dial.

pub mod resolve;

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::backends::table::Target;

pub use resolve::Resolver;

/// RFC 8305's recommended "Connection Attempt Delay".
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Why a dial failed, split by whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// This host ran out of something a connection needs (descriptors,
    /// socket buffers, memory, ephemeral ports): the backend was never
    /// really tried, so it must not be blamed for it.
    #[error("out of local resources: {0}")]
    Local(io::Error),
    /// The backend refused, did not answer in time, or its name did not
    /// resolve.
    #[error(transparent)]
    Backend(io::Error),
    /// This host has no working link towards any of the backend's
    /// addresses (its own link is down: [`super::route`]), so the backend
    /// was not really tried either.
    #[error("this host has no working link towards it: {0}")]
    Unlinked(io::Error),
}

impl DialError {
    pub fn io(&self) -> &io::Error {
        match self {
            DialError::Local(e) | DialError::Backend(e) | DialError::Unlinked(e) => e,
        }
    }
}

impl From<io::Error> for DialError {
    fn from(e: io::Error) -> DialError {
        super::shortage::note(&e);
        if is_local(&e) {
            DialError::Local(e)
        } else {
            DialError::Backend(e)
        }
    }
}

/// Whether a connect error comes from this host's resources rather than
/// from the backend. These fail `socket()` or `connect()` before a SYN
/// leaves: EMFILE/ENFILE (descriptors, per process/system), ENOBUFS and
/// ENOMEM (kernel memory), EADDRNOTAVAIL (no free ephemeral port).
pub fn is_local(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    ) || e.kind() == io::ErrorKind::OutOfMemory
}

/// Connects to `target` within `timeout` (name resolution included).
pub async fn dial(target: &Target, timeout: Duration) -> Result<TcpStream, DialError> {
    dial_with(Resolver::system(), target, timeout).await
}

/// [`dial`], trying `first` before the other addresses of a target of
/// addresses, when it is one of them: the address its last connection went
/// to. (A name's addresses keep its resolver's order.) A dead address
/// listed before a live one (a host that lost its IPv4 address, whose old
/// record mDNS keeps for a minute or more without the key; a multi-homed
/// host's link-local address on another link) then costs one connection
/// the attempt delay, not every one (each paid 250 ms, 512 ms with two
/// dead addresses first).
pub async fn dial_from(
    target: &Target,
    timeout: Duration,
    first: Option<SocketAddr>,
) -> Result<TcpStream, DialError> {
    match (target, first) {
        (Target::Addrs(addrs), Some(f)) => {
            connect_any(&first_of(addrs, f), Instant::now() + timeout).await
        }
        _ => dial(target, timeout).await,
    }
}

/// `addrs` with `first` moved to the front, if it is among them.
fn first_of(addrs: &[SocketAddr], first: SocketAddr) -> std::borrow::Cow<'_, [SocketAddr]> {
    if addrs.first() == Some(&first) || !addrs.contains(&first) {
        return addrs.into();
    }
    let rest = addrs.iter().copied().filter(|a| *a != first);
    std::iter::once(first)
        .chain(rest)
        .collect::<Vec<_>>()
        .into()
}

/// [`dial`], resolving names with `resolver`.
pub async fn dial_with(
    resolver: &Resolver,
    target: &Target,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let deadline = Instant::now() + timeout;
    match target {
        Target::Addrs(addrs) => connect_any(addrs, deadline).await,
        Target::Name(host, port) => {
            let addrs = resolver.resolve(host, *port, deadline).await?;
            connect_any(&addrs, deadline).await
        }
    }
}

/// Connects to the first of `addrs` that answers before `deadline`.
async fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, DialError> {
    try_each(addrs, deadline)
        .await
        .map_err(|e| ours_if_unlinked(e, addrs))
}

/// `e`, or [`DialError::Unlinked`] when this host's link towards every one
/// of `addrs` is down, or was a moment ago ([`super::route`]: a dial begun
/// while it was down can fail once it is back). A refusal or a reset came
/// from the backend, so the link worked, and running out of descriptors
/// or memory stays that; any other error is looked into.
fn ours_if_unlinked(e: DialError, addrs: &[SocketAddr]) -> DialError {
    let io = e.io();
    let told_by_peer = matches!(
        io.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    );
    let shortage = is_local(io) && io.raw_os_error() != Some(libc::EADDRNOTAVAIL);
    if told_by_peer || shortage || !super::route::no_link_lately_towards_any(addrs) {
        return e;
    }
    match e {
        DialError::Local(io) | DialError::Backend(io) | DialError::Unlinked(io) => {
            DialError::Unlinked(io)
        }
    }
}

/// [`connect_any`], whoever is to blame.
async fn try_each(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, DialError> {
    match addrs {
        [] => Err(DialError::Backend(io::Error::new(
            io::ErrorKind::NotFound,
            "no address to connect to",
        ))),
        [one] => match timeout_at(deadline, TcpStream::connect(*one)).await {
            Ok(r) => r.map_err(DialError::from),
            Err(_) => Err(DialError::Backend(timed_out())),
        },
        many => happy_eyeballs(many, deadline).await,
    }
}

async fn happy_eyeballs(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, DialError> {
    let mut pending = addrs.iter().copied();
    let mut attempts = Concurrent::new();
    let mut failed = Failures::default();
    let mut next_start = Instant::now();
    loop {
        tokio::select! {
            // Returning drops the slower attempts, which closes their sockets.
            Some(r) = attempts.next(), if !attempts.is_empty() => match r {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    failed.add(e);
                    if pending.len() == 0 && attempts.is_empty() {
                        return Err(failed.into_error());
                    }
                    // A failure starts the next attempt at once.
                    next_start = Instant::now();
                }
            },
            _ = sleep_until(next_start), if pending.len() > 0 => {
                attempts.push(TcpStream::connect(pending.next().expect("checked")));
                next_start = Instant::now() + ATTEMPT_DELAY;
            }
            _ = sleep_until(deadline) => {
                failed.add(timed_out());
                return Err(failed.into_error());
            }
        }
    }
}

/// Futures polled together by the task that owns them, yielding each
/// outcome as it comes: a minimal `FuturesUnordered`, enough for a handful
/// of connect attempts or health probes.
pub(crate) struct Concurrent<'a, T>(Vec<Pin<Box<dyn Future<Output = T> + Send + 'a>>>);

impl<'a, T> Concurrent<'a, T> {
    pub(crate) fn new() -> Self {
        Concurrent(Vec::new())
    }

    pub(crate) fn push(&mut self, f: impl Future<Output = T> + Send + 'a) {
        self.0.push(Box::pin(f));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The outcome of the next future to finish; `None` when none is left.
    pub(crate) async fn next(&mut self) -> Option<T> {
        poll_fn(|cx| {
            if self.0.is_empty() {
                return Poll::Ready(None);
            }
            for i in 0..self.0.len() {
                if let Poll::Ready(r) = self.0[i].as_mut().poll(cx) {
                    drop(self.0.swap_remove(i));
                    return Poll::Ready(Some(r));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// The errors of a multi-address dial, reduced to one: the backend is to
/// blame when any of its addresses really failed (refused, timed out); the
/// dial is our fault only when no address could even be tried. An address
/// we could not use (EADDRNOTAVAIL: IPv6 off here, or no free port towards
/// it) says nothing about the backend, but neither does it excuse the
/// address that refused.
#[derive(Default)]
struct Failures {
    local: Option<io::Error>,
    last: Option<io::Error>,
}

impl Failures {
    fn add(&mut self, e: io::Error) {
        super::shortage::note(&e);
        if is_local(&e) {
            self.local.get_or_insert(e);
        } else {
            self.last = Some(e);
        }
    }

    fn into_error(self) -> DialError {
        match (self.local, self.last) {
            (_, Some(e)) => DialError::Backend(e),
            (Some(e), None) => DialError::Local(e),
            (None, None) => DialError::Backend(timed_out()),
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A port on 127.0.0.1 where nothing listens (just released).
    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn local_errors_are_told_from_the_backend_s() {
        use io::ErrorKind as K;
        let os = io::Error::from_raw_os_error;
        let cases: &[(io::Error, bool)] = &[
            (os(libc::EMFILE), true),
            (os(libc::ENFILE), true),
            (os(libc::ENOBUFS), true),
            (os(libc::ENOMEM), true),
            (os(libc::EADDRNOTAVAIL), true),
            (K::OutOfMemory.into(), true),
            (os(libc::ECONNREFUSED), false),
            (os(libc::ETIMEDOUT), false),
            (os(libc::EHOSTUNREACH), false),
            (os(libc::ENETUNREACH), false),
            (os(libc::ECONNRESET), false),
            (timed_out(), false),
            (K::NotFound.into(), false),
        ];
        for (e, local) in cases {
            assert_eq!(is_local(e), *local, "{e:?}");
            let classified = match e.raw_os_error() {
                Some(n) => DialError::from(os(n)),
                None => DialError::from(io::Error::from(e.kind())),
            };
            assert_eq!(matches!(classified, DialError::Local(_)), *local, "{e:?}");
        }

        // Several addresses: an address that really failed blames the
        // backend, whatever happened to the others; only when none could be
        // tried is it our fault.
        for (errors, local) in [
            (vec![os(libc::ECONNREFUSED), os(libc::EMFILE)], false),
            (vec![os(libc::EMFILE), os(libc::ECONNREFUSED)], false),
            (vec![os(libc::ECONNREFUSED), os(libc::EADDRNOTAVAIL)], false),
            (vec![os(libc::EADDRNOTAVAIL), timed_out()], false),
            (vec![os(libc::EADDRNOTAVAIL), os(libc::EMFILE)], true),
            (vec![os(libc::ECONNREFUSED), timed_out()], false),
        ] {
            let mut f = Failures::default();
            errors.into_iter().for_each(|e| f.add(e));
            assert_eq!(matches!(f.into_error(), DialError::Local(_)), local);
        }
    }

    #[tokio::test]
    async fn the_address_last_dialed_is_tried_first() {
        let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let t = Target::Addrs(vec![a, b]);
        let to = Duration::from_secs(5);
        let peer = |s: TcpStream| s.peer_addr().unwrap();
        assert_eq!(peer(dial_from(&t, to, None).await.unwrap()), a);
        assert_eq!(peer(dial_from(&t, to, Some(b)).await.unwrap()), b);
        // Not one of the target's (it moved): the target's order.
        let elsewhere = closed_port().await;
        assert_eq!(peer(dial_from(&t, to, Some(elsewhere)).await.unwrap()), a);
        assert_eq!(first_of(&[a, b], b).as_ref(), [b, a]);
        assert_eq!(first_of(&[a, b], a).as_ref(), [a, b]);
    }

    #[tokio::test]
    async fn takes_the_first_address_that_answers() {
        let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();
        let refused = closed_port().await;
        let silent = mesh_amb_lab::SilentListener::new();
        let hanging = silent.addr();

        let t = Target::Addrs(vec![refused, good_addr]);
        let s = dial(&t, Duration::from_secs(5)).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), good_addr);

        // A silent first address does not eat the whole timeout.
        let t = Target::Addrs(vec![hanging, good_addr]);
        let s = dial(&t, Duration::from_secs(10)).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), good_addr);

        let t = Target::Addrs(vec![refused]);
        assert_eq!(
            dial(&t, Duration::from_secs(5))
                .await
                .unwrap_err()
                .io()
                .kind(),
            io::ErrorKind::ConnectionRefused
        );
        let t = Target::Addrs(vec![hanging]);
        assert_eq!(
            dial(&t, Duration::from_millis(200))
                .await
                .unwrap_err()
                .io()
                .kind(),
            io::ErrorKind::TimedOut
        );
        assert!(dial(&Target::Addrs(vec![]), Duration::from_secs(1))
            .await
            .is_err());
        let t = Target::Name("localhost".into(), good_addr.port());
        dial(&t, Duration::from_secs(5))
            .await
            .expect("host names are resolved");
    }
}
