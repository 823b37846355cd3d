//! Socket options and process limits the data plane depends on: the listen
//! backlog, TCP keepalive and user timeout on proxied connections, a reset
//! instead of a FIN when the other side was reset, and the file-descriptor
//! limit that bounds the connection limit.
//!
//! Everything goes through socket2 and rustix, so this module needs no
//! `unsafe`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::settings::ProxySettings;

/// tokio's (and mio's) fixed listen backlog, which [`bind_listener`]
/// replaces.
#[cfg(test)]
const TOKIO_BACKLOG: u32 = 128;
/// The kernel's cap on any listen backlog when `somaxconn` cannot be read:
/// its default since Linux 5.4.
const FALLBACK_SOMAXCONN: u32 = 4096;
/// Descriptors kept out of the connection budget: stdio, the runtime's epoll
/// and wake-up descriptors, one listener per consume, the mDNS daemon's
/// sockets (a few per interface and family), health-check dials and the
/// second attempt of a happy-eyeballs dial. 100 covers a host with dozens of
/// interfaces and consumes.
pub const FD_MARGIN: u64 = 100;
/// Descriptors per proxied connection: the client's and the backend's.
const FDS_PER_CONNECTION: u64 = 2;

/// The kernel's cap on listen backlogs (`net.core.somaxconn`, per network
/// namespace); larger requests are silently cut.
fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(FALLBACK_SOMAXCONN)
}

/// Binds a listener with SO_REUSEADDR (a restarted ambassador can listen again
/// while old connections sit in TIME_WAIT) and the deepest accept backlog
/// the kernel grants, whatever the connection limit (as Go's `net.Listen`
/// does). Clients past the limit wait in that queue for their turn; a
/// shallower one (tokio's `bind` asks for 128) drops their handshakes, and
/// such a client waits for the SYN-ACK's retransmissions (1, 3, 7, 15 s)
/// instead, which its own timeout may not outlast. A queued handshake costs
/// the kernel a socket's memory, nothing in this process.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    listen_with_backlog(addr, somaxconn())
}

fn listen_with_backlog(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    debug!(%addr, backlog, "listening");
    TcpListener::from_std(socket.into())
}

/// Options for either side of a proxied connection: TCP_NODELAY (interactive
/// protocols send small requests and wait; Nagle would hold them for an ACK),
/// keepalive and TCP_USER_TIMEOUT as configured, so a peer that vanished
/// without FIN or RST does not hold the connection forever.
pub fn tune_stream(stream: &TcpStream, settings: &ProxySettings) -> io::Result<()> {
    tune(SockRef::from(stream), settings, false)
}

/// Whether accepted sockets start with their listener's TCP_NODELAY,
/// keepalive and TCP_USER_TIMEOUT. Linux copies them into every socket it
/// accepts (`tune_listener_options_reach_accepted_sockets` checks it), which
/// saves six `setsockopt` calls per client connection: with a new
/// connection per request, a fifth of the system calls a connection cost.
pub const ACCEPTED_INHERIT_OPTIONS: bool = cfg!(target_os = "linux");

/// The options of [`tune_stream`] on a listener, for the sockets it will
/// accept ([`ACCEPTED_INHERIT_OPTIONS`]). Options turned off are cleared,
/// so that a listener kept across a reload follows the new settings.
pub fn tune_listener(
    listener: &impl std::os::fd::AsFd,
    settings: &ProxySettings,
) -> io::Result<()> {
    tune(SockRef::from(listener), settings, true)
}

/// Sets the options of [`tune_stream`]; with `clear`, also turns off those
/// the settings leave off.
fn tune(sock: SockRef<'_>, settings: &ProxySettings, clear: bool) -> io::Result<()> {
    // Each option on its own: one the kernel refuses must not leave the
    // others unset. The first error is returned.
    let mut first = sock.set_tcp_nodelay(true).err();
    match settings.tcp_keepalive {
        Some(idle) => {
            let ka = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(settings.tcp_keepalive_interval)
                .with_retries(settings.tcp_keepalive_probes);
            first = first.or(sock.set_tcp_keepalive(&ka).err());
        }
        None if clear => first = first.or(sock.set_keepalive(false).err()),
        None => {}
    }
    match settings.tcp_user_timeout {
        Some(t) => first = first.or(sock.set_tcp_user_timeout(Some(t)).err()),
        None if clear => first = first.or(sock.set_tcp_user_timeout(None).err()),
        None => {}
    }
    first.map_or(Ok(()), Err)
}

/// Makes the next close of `stream` send a RST instead of a FIN (SO_LINGER 0),
/// so a reset on one side of a proxy reaches the other side as a reset, not
/// as a clean end of stream.
pub fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (or to `fs.nr_open` when
/// the hard limit is infinite) and returns the soft limit now in force.
/// Systemd and most shells start services with a soft limit of 1024, which
/// fits only ~460 proxied connections.
pub fn raise_fd_limit() -> io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or_else(nr_open);
    match now.current {
        Some(soft) if soft >= hard => return Ok(soft),
        None => return Ok(u64::MAX),
        Some(_) => {}
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: now.maximum,
        },
    )?;
    debug!(from = ?now.current, to = hard, "raised the file descriptor limit");
    Ok(hard)
}

/// The current soft RLIMIT_NOFILE (`u64::MAX` when unlimited).
pub fn fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// The kernel's cap on any process's descriptor count.
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// The connection limit that fits `fd_limit` for each of `pools` pools
/// that may all be full at once: two descriptors per connection plus
/// `margin`, never below one. Pure, for tests; see [`fit_connections`].
pub fn clamp_max_connections(requested: usize, fd_limit: u64, margin: u64, pools: u64) -> usize {
    let fits = fd_limit.saturating_sub(margin) / (FDS_PER_CONNECTION * pools.max(1));
    let fits = usize::try_from(fits).unwrap_or(usize::MAX).max(1);
    requested.min(fits)
}

/// [`clamp_max_connections`] for this process's descriptor limit, with one
/// log line when the limit had to be lowered: past it, accept would fail with
/// EMFILE while clients think they are queued. `held` are descriptors the
/// process keeps besides [`FD_MARGIN`]'s (its connection runtimes');
/// `pools` are the connection limits of that size (the consume listeners',
/// and the TLS terminators' when there are any), which may fill at once.
pub fn fit_connections(requested: usize, held: u64, pools: u64) -> usize {
    let (limit, margin) = (fd_limit(), FD_MARGIN + held);
    let fits = clamp_max_connections(requested, limit, margin, pools);
    if fits >= requested {
        return fits;
    }
    if pools > 1 {
        warn!(
            requested,
            max_connections = fits,
            fd_limit = limit,
            "lowered the connection limits to fit the file descriptor limit \
             (two per connection plus {margin}; the consume listeners' limit and the \
             TLS terminators' are each this size); raise `ulimit -n` to allow more"
        );
    } else {
        warn!(
            requested,
            max_connections = fits,
            fd_limit = limit,
            "lowered the connection limit to fit the file descriptor limit \
             (two per connection plus {margin}); raise `ulimit -n` to allow more"
        );
    }
    fits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_fits_two_fds_per_connection_plus_the_margin() {
        for (requested, limit, margin, pools, want) in [
            (10_000, 1_048_576, 100, 1, 10_000), // plenty of descriptors
            (10_000, 1_048_576, 100, 2, 10_000),
            (10_000, 1024, 100, 1, 462),      // a default soft limit
            (10_000, 1024, 100, 2, 231),      // shared by two pools
            (10_000, 20_100, 100, 1, 10_000), // exactly fits
            (10_000, 20_099, 100, 1, 9_999),  // one descriptor short
            (10_000, 40_100, 100, 2, 10_000), // exactly fits twice
            (10_000, 40_099, 100, 2, 9_999),
            (5, 1024, 100, 2, 5),    // a small limit is kept
            (10_000, 50, 100, 1, 1), // never zero
            (10_000, 101, 100, 2, 1),
            (10_000, u64::MAX, 100, 2, 10_000), // unlimited
            (10_000, 1024, 100, 0, 462),        // no pool counts as one
        ] {
            assert_eq!(
                clamp_max_connections(requested, limit, margin, pools),
                want,
                "requested {requested}, fd limit {limit}, margin {margin}, pools {pools}"
            );
        }
    }

    #[test]
    fn raising_the_fd_limit_reaches_the_hard_limit() {
        let soft = raise_fd_limit().expect("raise RLIMIT_NOFILE");
        assert_eq!(soft, fd_limit());
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        if let Some(hard) = hard {
            assert_eq!(soft, hard);
        }
    }

    /// Connects up to `n` clients one after another, each with `patience`;
    /// returns those that completed the handshake, up to the first that did not.
    fn handshakes(addr: SocketAddr, n: usize, patience: Duration) -> Vec<std::net::TcpStream> {
        let mut open = Vec::new();
        for _ in 0..n {
            match std::net::TcpStream::connect_timeout(&addr, patience) {
                Ok(s) => open.push(s),
                Err(_) => break,
            }
        }
        open
    }

    #[tokio::test]
    async fn a_large_backlog_queues_clients_that_128_would_drop() {
        const CLIENTS: usize = 400;
        if somaxconn() < 2 * CLIENTS as u32 {
            eprintln!("skipped: net.core.somaxconn is below {}", 2 * CLIENTS);
            return;
        }
        // A listener that never accepts: every client waits in the backlog.
        let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let open =
            tokio::task::spawn_blocking(move || handshakes(addr, CLIENTS, Duration::from_secs(2)))
                .await
                .unwrap();
        assert_eq!(open.len(), CLIENTS, "clients past the backlog hung");
        drop((open, listener));

        // The same with tokio's default backlog: the queue is full at 129,
        // the next SYN is dropped and that client hangs (proves the test).
        let listener = listen_with_backlog("127.0.0.1:0".parse().unwrap(), TOKIO_BACKLOG).unwrap();
        let addr = listener.local_addr().unwrap();
        let open = tokio::task::spawn_blocking(move || {
            handshakes(addr, CLIENTS, Duration::from_millis(500))
        })
        .await
        .unwrap();
        assert!(
            open.len() < CLIENTS && open.len() >= TOKIO_BACKLOG as usize,
            "with backlog {TOKIO_BACKLOG}: {} of {CLIENTS} connected",
            open.len()
        );
    }

    /// A connected pair on loopback: (accepted server side, client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (s, c)
    }

    #[tokio::test]
    async fn tune_stream_sets_nodelay_keepalive_and_user_timeout() {
        let (s, _c) = pair().await;
        let settings = ProxySettings {
            tcp_keepalive: Some(Duration::from_secs(31)),
            tcp_keepalive_interval: Duration::from_secs(7),
            tcp_keepalive_probes: 4,
            tcp_user_timeout: Some(Duration::from_secs(59)),
            ..ProxySettings::default()
        };
        tune_stream(&s, &settings).unwrap();
        let sock = SockRef::from(&s);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(31));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(59))
        );

        // Off means off: nothing beyond TCP_NODELAY.
        let (s, _c) = pair().await;
        let off = ProxySettings {
            tcp_keepalive: None,
            tcp_user_timeout: None,
            ..ProxySettings::default()
        };
        tune_stream(&s, &off).unwrap();
        let sock = SockRef::from(&s);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(!sock.keepalive().unwrap());
        assert_eq!(sock.tcp_user_timeout().unwrap(), None);
    }

    #[tokio::test]
    async fn tune_listener_options_reach_accepted_sockets() {
        let on = ProxySettings {
            tcp_keepalive: Some(Duration::from_secs(31)),
            tcp_keepalive_interval: Duration::from_secs(7),
            tcp_keepalive_probes: 4,
            tcp_user_timeout: Some(Duration::from_secs(59)),
            ..ProxySettings::default()
        };
        let l = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        async fn accepted(l: &TcpListener) -> TcpStream {
            let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            l.accept().await.unwrap().0
        }
        tune_listener(&l, &on).unwrap();
        let s = accepted(&l).await;
        let sock = SockRef::from(&s);
        assert_eq!(sock.tcp_nodelay().unwrap(), ACCEPTED_INHERIT_OPTIONS);
        if ACCEPTED_INHERIT_OPTIONS {
            assert!(sock.keepalive().unwrap());
            assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(31));
            assert_eq!(
                sock.tcp_keepalive_interval().unwrap(),
                Duration::from_secs(7)
            );
            assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
            assert_eq!(
                sock.tcp_user_timeout().unwrap(),
                Some(Duration::from_secs(59))
            );
        }

        // A reload that turns them off reaches the next clients.
        let off = ProxySettings {
            tcp_keepalive: None,
            tcp_user_timeout: None,
            ..ProxySettings::default()
        };
        tune_listener(&l, &off).unwrap();
        let s = accepted(&l).await;
        let sock = SockRef::from(&s);
        assert!(!sock.keepalive().unwrap());
        assert_eq!(sock.tcp_user_timeout().unwrap(), None);
    }

    #[tokio::test]
    async fn the_defaults_turn_keepalive_and_user_timeout_on() {
        let (s, _c) = pair().await;
        tune_stream(&s, &ProxySettings::default()).unwrap();
        let sock = SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert!(sock.tcp_user_timeout().unwrap().is_some());
    }

    #[tokio::test]
    async fn reset_on_close_makes_the_peer_see_a_reset() {
        use tokio::io::AsyncReadExt;
        let (s, mut c) = pair().await;
        reset_on_close(&s).unwrap();
        drop(s);
        let mut buf = [0u8; 1];
        let r = c.read(&mut buf).await;
        assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset));
    }
}
