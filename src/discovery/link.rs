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
//! The link also carries the node's beat, so that a live node costs its
//! watcher one packet a period instead of a probe and its answer: a
//! watcher that opens a link asks, in its first bytes (the hello:
//! [`HELLO`], a UDP port, a period and a token), for a beat, and the node
//! sends the token in one UDP datagram to that port once a period for as
//! long as the link stays open ([`Link::next`]). The watcher probes only
//! when a beat is late. A node of an older version just echoes the hello
//! and never beats, and is probed as before; a watcher that hears no beat
//! in two periods (a firewall that drops it) opens its link again without
//! asking.
//!
//! Each node listens on a port of its own, named by the `link` TXT key of
//! its advertisements. The key is not covered by the seal: a forged port
//! only makes a watcher connect somewhere useless, after which it probes
//! as often as it does without a link and gets no echo. Whatever a peer
//! writes is echoed, a few bytes at a time and only as fast as the peer
//! reads: a stranger gets back what it sent, nothing more, and the beats
//! it asks for go to its own address (the link's), at most one a
//! [`LEAST_BEAT`] for each link it holds open. A beat names its token,
//! which only the two ends of the link know: a stranger off the path
//! cannot keep a dead node alive with forged beats (one on the path can
//! forge its probe answers too).
//!
//! A watcher's host can vanish without a word (powered off, asleep,
//! unplugged), and then nothing closes the link: its node would hold it
//! and beat into the void for good, each beat sending the neighbour
//! layer's broadcasts for an address nobody answers. So a node that could
//! not deliver three beats in a row (its kernel reports each as
//! unreachable) stops beating and closes the link. Only a watcher on the
//! same link is reported so (a router that drops a vanished host's
//! packets may say nothing, and a sleep proxy answering for it keeps it
//! reachable): there the beats go on until newer links push it out.
//!
//! A node notes the addresses of the watchers that hold a link to it
//! ([`Watchers`]): a node that only provides asks nothing of the link,
//! and when the records of the node before it (its watcher) run out in
//! its cache while that node holds a link to it, it knows them still
//! live and asks for them (see [`super::mdns::browse`]).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::held::Held;

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
/// The first byte of a watcher's hello, which asks the node for its beat:
/// then the UDP port to send it to (2 bytes), the period in milliseconds
/// (4 bytes) and the token each beat carries (4 bytes), big-endian.
pub const HELLO: u8 = b'B';
const HELLO_LEN: usize = 11;
/// What a beat datagram starts with, before its token.
const BEAT_MAGIC: &[u8; 4] = b"ambB";
/// The shortest beat period a node grants: a stranger that holds links
/// open gets at most this many beats, to its own address.
pub const LEAST_BEAT: Duration = Duration::from_secs(1);
/// The longest: a watcher of a silent node must not wait for ever.
const MOST_BEAT: Duration = Duration::from_secs(600);
/// Spread of each beat period, as a share of it, so that the nodes
/// started together do not beat in step. A watcher allows for it.
pub const BEAT_JITTER: f64 = 0.2;
/// Beats in a row that the node could not deliver before it takes its
/// watcher's host for gone. Each is a period apart (12-15 s or more with
/// the jitter for a watcher of the ring), so it takes about 30 s of
/// failed resolution to stop: a neighbour entry resolved again, which
/// lost packets for up to 20 s at a time in the lab, does not close a
/// live watcher's link.
const UNDELIVERED_TO_STOP: u32 = 3;
/// How long the kernel may take to report a beat undelivered: its three
/// address resolution requests a second apart, and margin. A beat that
/// went out without an error sooner after the last undelivered one says
/// nothing about the watcher yet.
const RESOLVED_WITHIN: Duration = Duration::from_secs(5);
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

/// The addresses of the peers that hold a link to this node, while they
/// do: its watchers, whether they asked for beats or not (an older
/// node, or one whose beats a firewall dropped, does not), and a
/// consumer's check for a moment. A node that only provides asks the
/// node before it in the ring for its records when they run out in its
/// cache while that node holds a link here (see [`super::mdns::browse`]).
pub type Watchers = Held<IpAddr>;

/// Accepts links and holds them, echoing what their watchers write and
/// beating as they ask, until the watchers close them, `stop` fires, or
/// newer ones push them out; notes in `watchers` who holds them.
pub async fn serve(listener: std::net::TcpListener, watchers: Watchers, stop: CancellationToken) {
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
                held.push_back(AbortOnDropHandle::new(tokio::spawn(hold(
                    stream,
                    watchers.clone(),
                ))));
            }
            Err(e) => {
                debug!(error = %e, "ring link: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Writes back what the watcher writes until it closes the link (or a read
/// or write fails), and beats while the link lasts if its first bytes
/// were a hello; notes the watcher in `watchers` meanwhile. A link whose
/// watcher's host is gone ([`beat`]) is closed.
async fn hold(mut stream: TcpStream, watchers: Watchers) {
    let mut buf = [0u8; 64];
    // The hello so far, while its bytes are still coming.
    let mut hello = Some(Vec::with_capacity(HELLO_LEN));
    // Aborted with this task: beats stop when the link does.
    let mut _beats = None;
    let peer = stream.peer_addr().map(|a| a.ip().to_canonical());
    let _watcher = peer.ok().map(|ip| {
        let mut mark = watchers.mark(ip);
        mark.set(true);
        mark
    });
    let gone = CancellationToken::new();
    loop {
        let n = tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(n @ 1..) => n,
                _ => return,
            },
            // A watcher that was only cut off, and returns while the FIN
            // is still sent again, connects again; one that returns later
            // finds its half-open link through its beats' fallback.
            () = gone.cancelled() => return,
        };
        if let Some(h) = hello.as_mut() {
            let take = (HELLO_LEN - h.len()).min(n);
            h.extend_from_slice(&buf[..take]);
            if h[0] != HELLO {
                hello = None;
            } else if let (Ok(h), Ok(to)) =
                (<[u8; HELLO_LEN]>::try_from(&h[..]), stream.peer_addr())
            {
                let beats = beat(to.ip(), h, gone.clone());
                _beats = Some(AbortOnDropHandle::new(tokio::spawn(beats)));
                hello = None;
            }
        }
        // A peer gone with the send buffer full would hold the task until
        // TCP gives up, minutes later.
        tokio::select! {
            wrote = stream.write_all(&buf[..n]) => if wrote.is_err() {
                return;
            },
            () = gone.cancelled() => return,
        }
    }
}

/// Sends the beat that `hello` asks for to `ip`, once a period, until
/// aborted or refused (nothing listens there any more), or until
/// [`UNDELIVERED_TO_STOP`] beats in a row could not be delivered: then
/// the watcher's host is gone (powered off, asleep, unplugged) and `gone`
/// is cancelled, so that the link closes too.
async fn beat(ip: IpAddr, hello: [u8; HELLO_LEN], gone: CancellationToken) {
    let port = u16::from_be_bytes([hello[1], hello[2]]);
    let every = Duration::from_millis(u32::from_be_bytes(hello[3..7].try_into().unwrap()).into())
        .clamp(LEAST_BEAT, MOST_BEAT);
    let mut datagram = BEAT_MAGIC.to_vec();
    datagram.extend_from_slice(&hello[7..11]);
    // A dual-stack listener sees IPv4 watchers as mapped IPv6 addresses.
    let to = SocketAddr::new(ip.to_canonical(), port);
    let sock = async {
        let sock = UdpSocket::bind(super::witness::unspecified(to.ip())).await?;
        if let Err(e) = report_unreachable(&sock, to.ip()) {
            debug!(%to, error = %e, "ring link: beats to a host that is gone will not stop");
        }
        sock.connect(to).await?;
        Ok::<_, std::io::Error>(sock)
    };
    let sock = match sock.await {
        Ok(sock) => sock,
        Err(e) => {
            debug!(%to, error = %e, "ring link: cannot beat");
            return;
        }
    };
    let mut undelivered = Undelivered::default();
    loop {
        tokio::time::sleep(every.mul_f64(1.0 - BEAT_JITTER * fastrand::f64())).await;
        let sent = send_beat(&sock, &datagram).await;
        if sent == Sent::Refused {
            debug!(%to, "ring link: the watcher hears no beats; stopped");
            return;
        }
        if undelivered.gone_after(sent, tokio::time::Instant::now()) {
            debug!(%to, "ring link: the watcher's host is gone; beats stopped, link closed");
            gone.cancel();
            return;
        }
    }
}

/// The beats in a row that could not be delivered.
#[derive(Default)]
struct Undelivered {
    in_a_row: u32,
    last: Option<tokio::time::Instant>,
}

impl Undelivered {
    /// Notes what became of a beat sent `now`: whether the watcher's host
    /// is to be taken for gone ([`UNDELIVERED_TO_STOP`]).
    fn gone_after(&mut self, sent: Sent, now: tokio::time::Instant) -> bool {
        match sent {
            // Sent while the kernel may still be resolving the address for
            // the one before: nothing known yet (a stranger may ask for a
            // beat a second, shorter than a failed resolution).
            Sent::Yes if self.last.is_some_and(|t| now - t < RESOLVED_WITHIN) => {}
            Sent::Yes => self.in_a_row = 0,
            Sent::AfterUndelivered => {
                self.in_a_row += 1;
                self.last = Some(now);
            }
            Sent::Unknown | Sent::Refused => {}
        }
        self.in_a_row >= UNDELIVERED_TO_STOP
    }
}

/// What became of a beat, as far as the node can know when sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Handed to the kernel; nothing said the one before was lost.
    Yes,
    /// Not sent, for a reason of this host's (out of buffers, say).
    Unknown,
    /// The watcher's host said nothing listens on the beat port.
    Refused,
    /// The one before could not be delivered (no link-layer address for
    /// the watcher, or no route to it); this one was sent anyway.
    AfterUndelivered,
}

/// Sends one beat. A connected socket learns of a lost datagram only at
/// its next send, which then fails and sends nothing: that send is made
/// again, so a watcher cut off for a moment misses no beat for it.
async fn send_beat(sock: &UdpSocket, datagram: &[u8]) -> Sent {
    match sock.send(datagram).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Sent::Refused,
        Err(e) if undelivered(&e) => {
            drain_errors(sock);
            let _ = sock.send(datagram).await;
            Sent::AfterUndelivered
        }
        Ok(_) => Sent::Yes,
        Err(_) => Sent::Unknown,
    }
}

fn undelivered(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{HostUnreachable, NetworkUnreachable};
    matches!(e.kind(), HostUnreachable | NetworkUnreachable)
}

/// Asks the kernel to report every ICMP error on `sock`'s sends, the
/// host's unreachability included: without it Linux reports to a
/// connected UDP socket only the errors it deems hard (a refused port).
/// The neighbour layer's failure to resolve the watcher's address reaches
/// the socket this way.
#[allow(unsafe_code)]
fn report_unreachable(sock: &UdpSocket, like: IpAddr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let (level, name) = match like {
        IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_RECVERR),
        IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
    };
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor for the call's duration (borrowed from
    // `sock`), and a pointer to a c_int with its size, as the option takes.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of_val(&on) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Empties `sock`'s error queue, where each reported error also waits
/// (bounded by the receive buffer, but held for the socket's life).
fn drain_errors(sock: &UdpSocket) {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    let sock = socket2::SockRef::from(sock);
    while sock.recv_with_flags(&mut buf, libc::MSG_ERRQUEUE).is_ok() {}
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
    /// The beat period to ask for when connecting ([`Link::ask_beats`]).
    wish: Option<Duration>,
    /// Where the node's beats come in, while the link is up and the node
    /// was asked for them.
    beats: Option<Beats>,
    /// Whether the last connect was refused: nothing listens on the port
    /// (or a firewall rejects it).
    refused: bool,
}

/// A watcher's side of the beats of one link.
struct Beats {
    sock: UdpSocket,
    from: IpAddr,
    period: Duration,
    token: [u8; 4],
    heard: bool,
}

/// What happened on a link ([`Link::next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The node beat: its process lives, and the host is reachable.
    Beat,
    /// The link closed: it is down now.
    Closed,
}

impl Link {
    /// Whether a link is up (as far as this end knows).
    pub fn is_up(&self) -> bool {
        self.stream.is_some()
    }

    /// Asks for a beat every `every` on the links opened from now on (none
    /// with `None`). A link up that beats at another period than asked is
    /// closed, for the caller to connect again.
    pub fn ask_beats(&mut self, every: Option<Duration>) {
        self.wish = every;
        if self.is_up() && self.beats.as_ref().map(|b| b.period) != every {
            self.reset();
        }
    }

    /// The period the node was asked to beat at, while the link is up and
    /// it was asked.
    pub fn beat_period(&self) -> Option<Duration> {
        self.beats.as_ref().map(|b| b.period)
    }

    /// Whether a beat came on this link since it was opened.
    pub fn heard_beats(&self) -> bool {
        self.beats.as_ref().is_some_and(|b| b.heard)
    }

    /// Whether the last connect was refused (nothing listens on the port
    /// any more, or a firewall rejects it), rather than lost, timed out or
    /// not echoed.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// The local UDP port the beats come to, while asked for.
    pub fn beat_port(&self) -> Option<u16> {
        let b = self.beats.as_ref()?;
        b.sock.local_addr().ok().map(|a| a.port())
    }

    /// Closes the link (down afterwards).
    fn reset(&mut self) {
        self.stream = None;
        self.beats = None;
    }

    /// Connects to `to` unless a link is up, asking for beats if
    /// [`Link::ask_beats`] said so; without a link (refused, timed out,
    /// the hello not echoed) the witness probes as often as it does with
    /// no link.
    pub async fn connect(&mut self, to: SocketAddr) {
        if self.stream.is_some() {
            return;
        }
        let connecting = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await;
        self.refused =
            matches!(&connecting, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        let mut stream = match connecting {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return debug!(%to, error = %e, "ring link: cannot connect"),
            Err(_) => return debug!(%to, "ring link: connect timed out"),
        };
        if let Some(period) = self.wish {
            match tokio::time::timeout(CONNECT_TIMEOUT, hello(&mut stream, period)).await {
                Ok(Ok(beats)) => self.beats = Some(beats),
                Ok(Err(e)) => return debug!(%to, error = %e, "ring link: hello failed"),
                Err(_) => return debug!(%to, "ring link: hello not echoed"),
            }
        }
        self.stream = Some(stream);
    }

    /// Whether the node's process answers on the link: one byte written
    /// and echoed back within `within` ([`ANSWER_WITHIN`] for the
    /// witness), connecting first if no
    /// link is up (its connect may have been lost in the same burst). A
    /// link that fails or closes is down afterwards; one that stays silent
    /// (a stopped process, a host gone without a word) stays up, and the
    /// next probe asks again. Only the echo counts: a port that greets
    /// with a banner of its own (SSH, SMTP), which a stranger's record may
    /// name, is not a node.
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
            // Echoes of earlier pings that timed out may come first.
            let mut buf = [0u8; 64];
            match stream.read(&mut buf).await? {
                0 => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                n if buf[..n].iter().all(|&b| b == PING) => Ok(()),
                _ => Err(std::io::Error::other("not an echo")),
            }
        };
        match tokio::time::timeout_at(deadline, ping).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                debug!(%to, error = %e, "ring link: lost");
                self.reset();
                false
            }
            Err(_) => false,
        }
    }

    /// The next beat or the link's close (never, without a link; no beat
    /// comes on a link that did not ask). A closed link is down afterwards.
    pub async fn next(&mut self) -> Event {
        let Link { stream, beats, .. } = self;
        let Some(stream) = stream.as_mut() else {
            return std::future::pending().await;
        };
        let beat = async {
            match beats.as_mut() {
                Some(b) => b.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = drain(stream) => {}
            () = beat => return Event::Beat,
        }
        self.reset();
        Event::Closed
    }
}

/// Asks the node at the other end of `stream` to beat every `period`, and
/// waits for its echo of the hello, so that what comes back later answers
/// only [`Link::answers`]'s bytes.
async fn hello(stream: &mut TcpStream, period: Duration) -> std::io::Result<Beats> {
    let local = stream.local_addr()?;
    let from = stream.peer_addr()?.ip().to_canonical();
    let sock = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
    let token = fastrand::u32(..).to_be_bytes();
    let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    let mut hello = vec![HELLO];
    hello.extend_from_slice(&sock.local_addr()?.port().to_be_bytes());
    hello.extend_from_slice(&millis.to_be_bytes());
    hello.extend_from_slice(&token);
    stream.write_all(&hello).await?;
    let mut echo = [0u8; HELLO_LEN];
    stream.read_exact(&mut echo).await?;
    if echo[..] != hello[..] {
        return Err(std::io::Error::other("the hello came back changed"));
    }
    Ok(Beats {
        sock,
        from,
        period,
        token,
        heard: false,
    })
}

impl Beats {
    /// The next beat from the node; anything else is dropped.
    async fn next(&mut self) {
        let mut buf = [0u8; 16];
        loop {
            let (n, from) = match self.sock.recv_from(&mut buf).await {
                Ok(got) => got,
                // Without its beats the link still says when the process
                // dies, and the witness probes when a beat is late.
                Err(e) => {
                    debug!(error = %e, "ring link: cannot hear beats");
                    return std::future::pending().await;
                }
            };
            if from.ip().to_canonical() == self.from
                && buf[..n].strip_prefix(BEAT_MAGIC) == Some(&self.token[..])
            {
                self.heard = true;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listening() -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        noting(Watchers::default()).await
    }

    /// A node's link listener on loopback, noting its watchers in `watchers`.
    async fn noting(
        watchers: Watchers,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let l = bind().unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(l, watchers, stop.clone()));
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
        let event = tokio::time::timeout(Duration::from_secs(5), link.next()).await;
        assert_eq!(event.ok(), Some(Event::Closed), "the link never closed");
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
        let event = tokio::time::timeout(Duration::from_secs(5), first.next()).await;
        assert_eq!(event.ok(), Some(Event::Closed), "the oldest link was kept");
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
    async fn a_port_that_greets_with_a_banner_does_not_answer() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
            drain(&mut s).await;
        });
        let mut link = Link::default();
        assert!(!link.answers(to, QUICK).await, "a banner taken for an echo");
    }

    #[tokio::test]
    async fn a_node_beats_as_its_watcher_asks_and_still_echoes() {
        let (to, _stop, _task) = listening().await;
        let mut link = Link::default();
        link.ask_beats(Some(LEAST_BEAT));
        link.connect(to).await;
        assert_eq!(link.beat_period(), Some(LEAST_BEAT));
        for _ in 0..2 {
            let event = tokio::time::timeout(LEAST_BEAT * 5, link.next()).await;
            assert_eq!(event.ok(), Some(Event::Beat), "no beat");
        }
        assert!(link.heard_beats());
        // The hello's echo was read: the next byte back answers the ping.
        assert!(link.answers(to, QUICK).await, "no echo after the hello");
    }

    #[tokio::test]
    async fn a_watcher_is_noted_while_its_link_lasts() {
        let watchers = Watchers::default();
        let (to, _stop, _task) = noting(watchers.clone()).await;
        let from = to.ip();
        // Beats asked for or not (an older node's link, or one whose
        // beats a firewall dropped).
        for beats in [Some(Duration::from_secs(600)), None] {
            let mut link = Link::default();
            link.ask_beats(beats);
            // Echoed: the node has read what came first.
            assert!(link.answers(to, QUICK).await, "no echo");
            assert!(watchers.contains(&from), "the watcher was not noted");
            drop(link);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while watchers.contains(&from) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                !watchers.contains(&from),
                "still noted after its link closed"
            );
        }
    }

    #[tokio::test]
    async fn a_beat_without_the_token_is_not_heard() {
        let (to, _stop, _task) = listening().await;
        let mut link = Link::default();
        // Long enough that the node's own beat does not come in the test.
        link.ask_beats(Some(Duration::from_secs(600)));
        link.connect(to).await;
        let port = link.beat_port().expect("beats asked for");
        let forger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut forged = BEAT_MAGIC.to_vec();
        forged.extend_from_slice(&[0; 4]);
        for token in [[0u8; 4], [1, 2, 3, 4], [0xff; 4]] {
            forged[4..].copy_from_slice(&token);
            forger.send_to(&forged, ("127.0.0.1", port)).unwrap();
        }
        forger.send_to(BEAT_MAGIC, ("127.0.0.1", port)).unwrap();
        let event = tokio::time::timeout(QUICK, link.next()).await;
        assert!(event.is_err(), "a forged beat was heard: {event:?}");
        assert!(!link.heard_beats());
    }

    #[tokio::test]
    async fn a_stranger_asking_for_beats_without_pause_gets_one_a_second() {
        let (to, _stop, _task) = listening().await;
        let ear = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut hello = vec![HELLO];
        hello.extend_from_slice(&ear.local_addr().unwrap().port().to_be_bytes());
        hello.extend_from_slice(&0u32.to_be_bytes()); // a period of 0 ms
        hello.extend_from_slice(&[7; 4]);
        let mut stream = TcpStream::connect(to).await.unwrap();
        stream.write_all(&hello).await.unwrap();
        // One beat every 0.8-1 s: at most 3 in a window of 3 s (4 allowed),
        // where a period of 0 would send them back to back.
        let window = LEAST_BEAT * 3;
        let until = tokio::time::Instant::now() + window;
        let mut buf = [0u8; 16];
        let mut counted = 0;
        while let Ok(Ok(n)) = tokio::time::timeout_at(until, ear.recv(&mut buf)).await {
            assert_eq!(&buf[..n], b"ambB\x07\x07\x07\x07");
            counted += 1;
        }
        assert!((1..=4).contains(&counted), "{counted} beats in {window:?}");
    }

    #[tokio::test]
    async fn a_node_that_only_echoes_is_linked_without_beats() {
        // An older node: it echoes everything, the hello too, and never
        // beats.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.ok();
        });
        let mut link = Link::default();
        link.ask_beats(Some(LEAST_BEAT));
        link.connect(to).await;
        assert!(link.is_up(), "the hello's echo was not taken");
        let event = tokio::time::timeout(LEAST_BEAT * 3, link.next()).await;
        assert!(event.is_err(), "a beat from a node that cannot beat");
        assert!(link.answers(to, QUICK).await);
    }

    /// What a beat's sends report, one period apart from `start`.
    fn gone_after(reports: &[Sent], period: Duration) -> Option<usize> {
        let start = tokio::time::Instant::now();
        let mut undelivered = Undelivered::default();
        (0..reports.len()).find(|&i| undelivered.gone_after(reports[i], start + period * i as u32))
    }

    #[test]
    fn a_watcher_is_taken_for_gone_after_three_undelivered_beats_in_a_row() {
        use Sent::{AfterUndelivered as Lost, Yes};
        let ring = Duration::from_secs(15);
        assert_eq!(gone_after(&[Yes, Lost, Lost, Lost, Yes], ring), Some(3));
        // A live watcher whose address failed to resolve for a while.
        assert_eq!(gone_after(&[Lost, Lost, Yes, Lost, Lost, Yes], ring), None);
        assert_eq!(
            gone_after(&[Lost, Sent::Unknown, Lost, Lost], ring),
            Some(3)
        );
        // One a second: each failed resolution (3 s) is reported at the
        // send after it, and the sends between say nothing.
        let stranger = Duration::from_secs(1);
        let gone = [Lost, Yes, Yes, Lost, Yes, Yes, Lost];
        assert_eq!(gone_after(&gone, stranger), Some(6));
        let back = [Lost, Yes, Yes, Yes, Yes, Yes, Yes, Lost, Yes, Lost];
        assert_eq!(gone_after(&back, stranger), None);
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
