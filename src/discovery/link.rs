//! The ring link: a TCP connection each witness ([`super::witness`]) holds
//! to the node it watches, so that the death of that node's process is
//! news at once and costs nothing while nothing happens.
//!
//! When a process dies, by SIGKILL or a crash, its kernel closes its
//! sockets and the watcher's end of the link reads end-of-file within a
//! round trip; the witness then probes at once instead of at its next
//! period, and a dead process (refused probes) is declared dead within
//! milliseconds. The link cannot tell a host that lost power or its cable
//! from an idle one, so the witness still probes, only less often while
//! the link is up.
//!
//! The link also answers for the process when its mDNS responder falls
//! silent: the node echoes whatever its watcher writes, so before calling
//! a silent node dead the watcher writes one byte and waits for it to come
//! back ([`Link::answers`]). TCP resends what is lost, so the echo rides
//! out the bursts of loss that swallow every unicast probe and multicast
//! confirmation of a check (a neighbour entry being resolved again is
//! enough: packets wait for it and are dropped when it fails, UDP and TCP
//! alike, but TCP sends again); a process that is gone, or stopped, does
//! not echo.
//!
//! Each node listens on a port of its own, named by the `link` TXT key of
//! its advertisements. The key is not covered by the seal: a forged port
//! only makes a watcher connect somewhere useless, after which it probes
//! as often as it does without a link and gets no echo. Whatever a peer
//! writes is echoed, a few bytes at a time and only as fast as the peer
//! reads: a stranger gets back what it sent, nothing more.

use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

/// Most links held at once. In a settled ring a node is watched by one
/// other; while nodes join, or views differ, by a few. A stranger
/// connecting over and over pushes out the oldest links, whose watchers
/// probe, find the node alive, and connect again.
pub const MAX_LINKS: usize = 64;
/// How long a watcher waits for a link's connect: long enough for the
/// kernel's first SYN retransmission (after 1 s), so one lost packet does
/// not leave a watch without its link.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The byte a watcher writes to ask whether the process answers (any
/// would do: the node echoes whatever comes).
const PING: u8 = b'?';
/// How long a watcher waits for its byte to come back ([`Link::answers`]).
/// In the namespace lab at 64 hosts, the packets between a watcher and a
/// live node were lost for 2-20 s at a time while one of them resolved
/// the other's link-layer address again (the kernel's neighbour table,
/// shared by all the lab's namespaces, was collected in waves; the lab now
/// sizes it, see `lab/src/neigh.rs`); TCP resends a lost segment after
/// 0.2, 0.6, 1.4, 3, 6.2 and 12.6 s, so this waits out most such losses
/// on a real link too (5 s left 2-4 false goodbyes per run there, 15 s
/// 0-8). A stopped process or a host gone without a word is called dead
/// this much later.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(15);
/// Pause after a failed accept (out of descriptors): the listener is
/// ready again at once, and retrying at once would spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the link listener on every address, IPv4 and IPv6, on a port the
/// kernel picks.
pub fn bind() -> std::io::Result<std::net::TcpListener> {
    let dual = || -> std::io::Result<std::net::TcpListener> {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
        s.listen(16)?;
        Ok(s.into())
    };
    // A host without IPv6 still gets its IPv4 links.
    let l = dual().or_else(|_| std::net::TcpListener::bind(("0.0.0.0", 0)))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Accepts links and holds them, echoing what their watchers write, until
/// the watchers close them, `stop` fires, or newer ones push them out.
pub async fn serve(listener: std::net::TcpListener, stop: CancellationToken) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            debug!(error = %e, "ring link: cannot listen");
            return;
        }
    };
    let mut held: VecDeque<AbortOnDropHandle<()>> = VecDeque::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                held.retain(|h| !h.is_finished());
                if held.len() >= MAX_LINKS {
                    held.pop_front();
                }
                held.push_back(AbortOnDropHandle::new(tokio::spawn(echo(stream))));
            }
            Err(e) => {
                debug!(error = %e, "ring link: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Writes back what the watcher writes until it closes the link (or a read
/// or write fails).
async fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Reads and drops until the other end closes (or the read fails).
async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// A watcher's end of a link, when it has one.
#[derive(Default)]
pub struct Link {
    stream: Option<TcpStream>,
}

impl Link {
    /// Whether a link is up (as far as this end knows).
    pub fn is_up(&self) -> bool {
        self.stream.is_some()
    }

    /// Connects to `to` unless a link is up; without one (refused,
    /// timed out) the witness probes as often as it does with no link.
    pub async fn connect(&mut self, to: SocketAddr) {
        if self.stream.is_some() {
            return;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
            Ok(Ok(s)) => self.stream = Some(s),
            Ok(Err(e)) => debug!(%to, error = %e, "ring link: cannot connect"),
            Err(_) => debug!(%to, "ring link: connect timed out"),
        }
    }

    /// Whether the node's process answers on the link: one byte written
    /// and echoed back within `within` ([`ANSWER_WITHIN`] for the
    /// witness), connecting first if no
    /// link is up (its connect may have been lost in the same burst). A
    /// link that fails or closes is down afterwards; one that stays silent
    /// (a stopped process, a host gone without a word) stays up, and the
    /// next probe asks again.
    pub async fn answers(&mut self, to: SocketAddr, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        if tokio::time::timeout_at(deadline, self.connect(to))
            .await
            .is_err()
        {
            return false;
        }
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        let ping = async {
            stream.write_all(&[PING]).await?;
            let mut buf = [0u8; 64];
            match stream.read(&mut buf).await? {
                0 => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                _ => Ok(()),
            }
        };
        match tokio::time::timeout_at(deadline, ping).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                debug!(%to, error = %e, "ring link: lost");
                self.stream = None;
                false
            }
            Err(_) => false,
        }
    }

    /// Resolves when the link closes (never without one); it is down
    /// afterwards.
    pub async fn closed(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return std::future::pending().await;
        };
        drain(stream).await;
        self.stream = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listening() -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let l = bind().unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(l, stop.clone()));
        (SocketAddr::from(([127, 0, 0, 1], port)), stop, task)
    }

    #[tokio::test]
    async fn a_link_closes_when_the_listening_side_goes() {
        let (to, stop, task) = listening().await;
        let mut link = Link::default();
        link.connect(to).await;
        assert!(link.is_up());
        stop.cancel();
        task.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), link.closed())
            .await
            .expect("the link never closed");
        assert!(!link.is_up());
    }

    #[tokio::test]
    async fn the_oldest_link_makes_room_for_a_new_one() {
        let (to, _stop, _task) = listening().await;
        let mut first = Link::default();
        first.connect(to).await;
        let mut others = Vec::new();
        for _ in 0..MAX_LINKS {
            let mut l = Link::default();
            l.connect(to).await;
            assert!(l.is_up());
            others.push(l);
        }
        tokio::time::timeout(Duration::from_secs(5), first.closed())
            .await
            .expect("the oldest link was kept");
    }

    /// An echo's wait in these tests: loopback answers in microseconds.
    const QUICK: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_node_echoes_its_watcher_and_a_silent_peer_does_not_answer() {
        let (to, _stop, _task) = listening().await;
        let mut link = Link::default();
        assert!(link.answers(to, QUICK).await, "no echo from a serving node");
        assert!(link.answers(to, QUICK).await, "no second echo");
        // A peer that accepts and never echoes: an older node, a stopped
        // process (its kernel accepts for it), a forged port.
        let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = mute.local_addr().unwrap();
        let mut link = Link::default();
        let started = tokio::time::Instant::now();
        assert!(!link.answers(to, QUICK).await, "an answer from a mute peer");
        assert!(started.elapsed() >= QUICK);
        assert!(link.is_up(), "a silent link is not a closed one");
    }

    #[tokio::test]
    async fn no_listener_leaves_no_link() {
        let to = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut link = Link::default();
        link.connect(to).await;
        assert!(!link.is_up());
    }
}
