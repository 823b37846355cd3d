//! Copying bytes both ways between a client and its backend, holding no
//! buffer while a connection is idle.
//!
//! `tokio::io::copy_bidirectional_with_sizes` owns two buffers per connection
//! for the connection's whole life: with 64 KiB each, that was 133 KB of RSS
//! per idle connection (HAProxy: 3.4 KB). Here each direction waits for
//! readiness with no buffer, then borrows one from a small pool per thread,
//! reads and writes until the socket is drained, and gives it back. An idle
//! connection costs its task (this future is under 1 KiB) and two sockets:
//! 2.5 KiB of RSS each by `bench/idle-memory.sh`; a busy one moves up to
//! [`BUF_SIZE`] bytes per syscall, as before, at the same throughput.
//!
//! What it keeps from a plain bidirectional copy:
//! - TCP half-close: the two directions are driven together and the copy ends
//!   only when both are done; a direction that reads EOF shuts down the write
//!   side of the other socket and the other direction goes on (the second
//!   to finish leaves that FIN to the close that follows).
//! - an idle timeout over both directions, and a half-close timeout once one
//!   direction has finished, both counted from the last byte moved;
//! - a stop signal (the drain period is over);
//! - byte counts per direction, reported however the copy ended, and added
//!   as they move to shared counters ([`Meters`]), so that a connection that
//!   stays open for hours shows its traffic on the stats page meanwhile.
//!
//! And a reset travels: when one socket fails (ECONNRESET, a keepalive or
//! user timeout, ...), the other is set to reset on close, so the peer sees
//! a reset instead of a clean end of stream that may look like a complete
//! reply ([`reset_after`]).
//!
//! Streams that are not plain sockets (TLS) have no readiness to wait on
//! without a buffer: [`copy_streams`] copies them through `AsyncRead` and
//! `AsyncWrite` alone, with the same contract.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::net::sockopt;

mod stream;
pub use stream::copy_streams;

/// Bytes moved per read. 64 KiB carries a large value in few syscalls;
/// tokio's 8 KiB default measurably loses throughput on 16 KiB values.
pub const BUF_SIZE: usize = 64 * 1024;
/// Free buffers each thread keeps. Under request/response load a runtime
/// worker (one per core) has one direction of one connection in hand at a
/// time, two when a connection streams both ways: with two the steady state
/// allocates nothing, and a burst that used more leaves at most 128 KiB per
/// thread behind.
const POOL_KEEP_PER_THREAD: usize = 2;

thread_local! {
    /// Free copy buffers of this thread. Per thread, so that taking and
    /// giving back a buffer, twice per request and direction, takes no lock
    /// that the other worker threads contend for.
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}
/// Buffers on loan right now: one per direction that is moving data.
static ON_LOAN: AtomicUsize = AtomicUsize::new(0);

/// A copy buffer on loan from [`POOL`]; dropping it gives it back to the
/// pool of the thread that drops it.
struct Buf(Box<[u8]>);

impl Buf {
    fn take() -> Buf {
        ON_LOAN.fetch_add(1, Ordering::Relaxed);
        let pooled = POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten();
        // Zeroed once, when allocated, then reused: a stream copy keeps
        // read bytes across polls while its writer pushes back, which takes
        // initialised memory (this crate has no unsafe code).
        Buf(pooled.unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice()))
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        ON_LOAN.fetch_sub(1, Ordering::Relaxed);
        let buf = std::mem::take(&mut self.0);
        // A thread that is exiting has no pool left: the buffer is freed.
        let _ = POOL.try_with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOL_KEEP_PER_THREAD {
                pool.push(buf);
            }
        });
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Copy buffers in use now, process-wide: idle connections hold none.
pub fn buffers_in_use() -> usize {
    ON_LOAN.load(Ordering::Relaxed)
}

/// When a copy gives up waiting.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// End after this long without a byte moving either way.
    pub idle: Option<Duration>,
    /// Once one direction finished, end after this long without a byte
    /// moving the other way.
    pub half_close: Option<Duration>,
}

/// One end of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// How a copy ended.
#[derive(Debug)]
pub enum End {
    /// Both directions reached end of stream, `first` (the side whose
    /// stream ended) before the other.
    Done { first: Side },
    /// Nothing moved for [`Limits::idle`].
    Idle,
    /// One direction finished and the other stayed silent for
    /// [`Limits::half_close`].
    HalfClose,
    /// The stop token was cancelled.
    Stopped,
    /// Reading or writing `side` failed; the other side will be reset when
    /// the caller drops it.
    Failed { side: Side, error: io::Error },
}

/// Shared counters a copy adds every chunk to as it moves it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Meters<'a> {
    /// Added to with the bytes read from the client.
    pub from_client: &'a [&'a AtomicU64],
    /// Added to with the bytes read from the server.
    pub from_server: &'a [&'a AtomicU64],
}

impl Meters<'_> {
    fn add(counters: &[&AtomicU64], n: usize) {
        for c in counters {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Work on the server's socket that waits until the connection has lasted
/// `after` (and its server side is waiting for data): a connection that
/// ends sooner, as with a new connection per request, never pays for it.
#[derive(Clone, Copy)]
pub struct Later<'a> {
    /// How long the connection lasts first.
    pub after: Duration,
    /// What is done then, once.
    pub run: &'a (dyn Fn(&TcpStream) + Sync),
}

/// What a copy did.
#[derive(Debug)]
pub struct Report {
    /// Bytes read from the client (and written to the server).
    pub from_client: u64,
    /// Bytes read from the server (and written to the client).
    pub from_server: u64,
    pub end: End,
}

/// Copies both ways between `client` and `server` until both directions
/// reach end of stream, one fails, a limit expires or `stop` is cancelled,
/// adding what moves to `meters`, and does `later` on the server's socket
/// if the connection lasts long enough. The caller closes the sockets by
/// dropping them.
pub async fn copy_both(
    client: &mut TcpStream,
    server: &mut TcpStream,
    limits: Limits,
    meters: Meters<'_>,
    later: Option<Later<'_>>,
    stop: &CancellationToken,
) -> Report {
    let clock = Clock::new(&limits);
    let (mut from_client, mut from_server) = (0, 0);
    // Everything lives in this one frame (no futures passed by value to
    // another async fn, which would store them twice): an idle connection
    // costs the size of this future, so it is kept small.
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let mut up = pin!(pump(
            &mut cr,
            &mut sw,
            Side::Client,
            &clock,
            (&mut from_client, meters.from_client),
            None
        ));
        let mut down = pin!(pump(
            &mut sr,
            &mut cw,
            Side::Server,
            &clock,
            (&mut from_server, meters.from_server),
            later
        ));
        drive(&clock, &limits, stop, |cx, from| match from {
            Side::Client => up.as_mut().poll(cx),
            Side::Server => down.as_mut().poll(cx),
        })
        .await
    };
    reset_after(&end, client, server);
    Report {
        from_client,
        from_server,
        end,
    }
}

/// Makes the sockets that must not end with a clean FIN reset on close,
/// after a copy that ended with `end`: the side that did not fail, after a
/// failure; both, when the drain timeout cut the copy short, perhaps in the
/// middle of a reply (a FIN would look like a complete one). Best effort:
/// where it fails, the peer gets a FIN as before. [`copy_both`] calls it;
/// the caller of [`copy_streams`] calls it with the sockets under its
/// streams (a TLS stream's `get_ref().0`), before dropping them.
pub fn reset_after(end: &End, client: &TcpStream, server: &TcpStream) {
    match end {
        End::Failed { side, .. } => {
            let other = match side.other() {
                Side::Client => client,
                Side::Server => server,
            };
            let _ = sockopt::reset_on_close(other);
        }
        End::Stopped => {
            let _ = sockopt::reset_on_close(client);
            let _ = sockopt::reset_on_close(server);
        }
        End::Done { .. } | End::Idle | End::HalfClose => {}
    }
}

/// The result of one direction: `Ok` once it forwarded end of stream, or
/// the side whose socket or stream failed.
type Flowed = Result<(), (Side, io::Error)>;

/// Drives both directions of a copy, `flow(cx, side)` polling the one that
/// reads from `side`, until both are done, one fails, a limit expires or
/// `stop` is cancelled.
async fn drive<F>(clock: &Clock, limits: &Limits, stop: &CancellationToken, mut flow: F) -> End
where
    F: FnMut(&mut Context<'_>, Side) -> Poll<Flowed>,
{
    let (mut up_done, mut down_done) = (false, false);
    let mut half_closed_at = None;
    let mut first = None;
    // Both directions are polled until both are done: ending when only
    // one is would cut a half-closed connection.
    loop {
        if let (true, true, Some(first)) = (up_done, down_done, first) {
            return End::Done { first };
        }
        let half_close = half_closed_at.zip(limits.half_close);
        let next = poll_fn(|cx| {
            if !up_done {
                if let Poll::Ready(r) = flow(cx, Side::Client) {
                    up_done = true;
                    return Poll::Ready(r);
                }
            }
            if !down_done {
                if let Poll::Ready(r) = flow(cx, Side::Server) {
                    down_done = true;
                    return Poll::Ready(r);
                }
            }
            Poll::Pending
        });
        let finished = tokio::select! {
            r = next => r,
            limit = quiet(clock, limits.idle, half_close) => return match limit {
                Limit::Idle => End::Idle,
                Limit::HalfClose => End::HalfClose,
            },
            _ = stop.cancelled() => return End::Stopped,
        };
        if let Err((side, error)) = finished {
            return End::Failed { side, error };
        }
        clock.half_closed();
        half_closed_at.get_or_insert_with(Instant::now);
        first.get_or_insert(if up_done { Side::Client } else { Side::Server });
    }
}

/// One direction: from `r` (the `from` side) to `w` (the other side), adding
/// the bytes read to `moved` and its meters, and doing `later` on `r`'s
/// socket when its time comes. Holds a buffer only while data is there.
async fn pump(
    r: &mut ReadHalf<'_>,
    w: &mut WriteHalf<'_>,
    from: Side,
    clock: &Clock,
    (moved, meters): (&mut u64, &[&AtomicU64]),
    later: Option<Later<'_>>,
) -> Flowed {
    let on_read = |e| (from, e);
    let on_write = |e| (from.other(), e);
    // Boxed, and dropped once done: an idle connection keeps no timer.
    let mut later = later.map(|l| (Box::pin(sleep(l.after)), l.run));
    loop {
        // Idle here: a readiness wait, no buffer. (`poll_read_ready` keeps
        // the waker in the socket's registration; `readable()` would add a
        // 168-byte waiter to every idle connection's future.)
        poll_fn(|cx| {
            if let Some((timer, run)) = &mut later {
                if timer.as_mut().poll(cx).is_ready() {
                    run(r.as_ref());
                    later = None;
                }
            }
            r.as_ref().poll_read_ready(cx)
        })
        .await
        .map_err(on_read)?;
        let mut buf = Buf::take();
        loop {
            let mut chunk = ReadBuf::new(&mut buf);
            // Read once without waiting: if the readiness was stale, give the
            // buffer back and wait again. `poll_read` (unlike `try_read`)
            // clears the readiness after a short read, which saves the
            // `EAGAIN` read that would otherwise follow every request.
            let read = poll_fn(|cx| match Pin::new(&mut *r).poll_read(cx, &mut chunk) {
                Poll::Pending => Poll::Ready(None),
                Poll::Ready(r) => Poll::Ready(Some(r)),
            })
            .await;
            let n = match read {
                None => break,
                Some(Err(e)) => return Err(on_read(e)),
                Some(Ok(())) => chunk.filled().len(),
            };
            if n == 0 {
                drop(buf);
                // The other way finished first: both sockets close as soon
                // as this returns, and the close sends the FIN a shutdown
                // would (one syscall fewer on every short connection).
                if clock.finish_direction() {
                    return Ok(());
                }
                // Forward the FIN; the other direction goes on.
                w.shutdown().await.map_err(on_write)?;
                return Ok(());
            }
            *moved += n as u64;
            Meters::add(meters, n);
            clock.touch();
            // Every write that makes progress counts as traffic: a slow
            // reader draining a large chunk is not idle.
            let mut data = chunk.filled();
            while !data.is_empty() {
                let written = w.write(data).await.map_err(on_write)?;
                if written == 0 {
                    return Err(on_write(io::ErrorKind::WriteZero.into()));
                }
                data = &data[written..];
                clock.touch();
            }
            if n < BUF_SIZE {
                break; // drained, most likely: no buffer while we wait
            }
        }
    }
}

/// When a byte last moved on a connection, in ms since the copy started,
/// and whether a direction has finished.
///
/// The time is only read while a limit counts from it: with the default
/// settings (no idle timeout) a connection that both ways still flow never
/// reads the clock, and `last_ms` stays stale until one direction has
/// finished. Read at every chunk it was about 1 % of the proxy's CPU time
/// per request (`perf record`, `-c 50` GETs), four reads per request.
struct Clock {
    start: Instant,
    last_ms: AtomicU64,
    /// An idle timeout counts from the last byte: every chunk is noted.
    idle_limit: bool,
    /// Set once a direction has finished (by the first plain direction to
    /// read end of stream, and by [`drive`] for any copy); from then on the
    /// half-close timeout counts from the last byte too.
    one_finished: AtomicBool,
}

impl Clock {
    fn new(limits: &Limits) -> Clock {
        Clock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            idle_limit: limits.idle.is_some(),
            one_finished: AtomicBool::new(false),
        }
    }
    /// Records that a direction read end of stream; true when the other
    /// had already.
    fn finish_direction(&self) -> bool {
        self.one_finished.swap(true, Ordering::Relaxed)
    }
    /// A direction has finished: from now on every chunk is noted, for the
    /// half-close timeout. Bytes that moved before count from this moment.
    fn half_closed(&self) {
        self.one_finished.store(true, Ordering::Relaxed);
    }
    fn touch(&self) {
        // Before a direction finished, only the idle limit needs the time:
        // the half-close limit then counts from the later of the last byte
        // and the finish, which comes after anything noted before it.
        if !self.idle_limit && !self.one_finished.load(Ordering::Relaxed) {
            return;
        }
        let ms = (Instant::now() - self.start).as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Which limit ended a copy.
#[derive(Clone, Copy)]
enum Limit {
    Idle,
    HalfClose,
}

/// Resolves when a limit expires: nothing moved for `idle`, or, once
/// half-closed at `since`, nothing moved for `limit` since the later of the
/// last byte and `since`. Never without a limit.
async fn quiet(
    clock: &Clock,
    idle: Option<Duration>,
    half_close: Option<(Instant, Duration)>,
) -> Limit {
    loop {
        let last = clock.last();
        let idle_at = idle.map(|limit| (last + limit, Limit::Idle));
        let half_at = half_close.map(|(since, limit)| (last.max(since) + limit, Limit::HalfClose));
        let Some((deadline, limit)) = [idle_at, half_at].into_iter().flatten().min_by_key(|d| d.0)
        else {
            return std::future::pending().await;
        };
        if Instant::now() >= deadline {
            return limit;
        }
        // Boxed: only connections with a limit running pay for a timer.
        Box::pin(sleep_until(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// A connected pair on loopback.
    pub(super) async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    /// app <-> copy_both <-> backend, all on loopback.
    struct Proxied {
        app: TcpStream,
        backend: TcpStream,
        copy: JoinHandle<Report>,
    }

    async fn proxied(limits: Limits) -> Proxied {
        let (app, mut client) = pair().await;
        let (mut server, backend) = pair().await;
        let copy = tokio::spawn(async move {
            copy_both(
                &mut client,
                &mut server,
                limits,
                Meters::default(),
                None,
                &CancellationToken::new(),
            )
            .await
        });
        Proxied { app, backend, copy }
    }

    /// That `report` says both directions ended, `first` before the other.
    pub(super) fn assert_done(report: &Report, first: Side) {
        assert!(
            matches!(report.end, End::Done { first: f } if f == first),
            "{:?}",
            report.end
        );
    }

    pub(super) fn value(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_hold_no_buffer_and_counts_are_exact() {
        const CONNS: usize = 20;
        const LEN: usize = 100 * 1024; // more than one buffer per direction
        let mut conns = Vec::new();
        for i in 0..CONNS {
            let mut p = proxied(Limits::default()).await;
            let (up, down) = (value(LEN, i as u8), value(LEN, !(i as u8)));
            p.app.write_all(&up).await.unwrap();
            let mut got = vec![0; LEN];
            p.backend.read_exact(&mut got).await.unwrap();
            assert!(got == up, "client to server bytes changed");
            p.backend.write_all(&down).await.unwrap();
            p.app.read_exact(&mut got).await.unwrap();
            assert!(got == down, "server to client bytes changed");
            conns.push(p);
        }
        // Every byte has been delivered, so each pump is back to waiting
        // for readiness: none may keep a buffer while its connection idles.
        let end = Instant::now() + Duration::from_secs(15);
        while buffers_in_use() != 0 {
            assert!(
                Instant::now() < end,
                "{} buffers held by {CONNS} idle connections",
                buffers_in_use()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(conns.iter().all(|p| !p.copy.is_finished()));

        // Half-close each way in turn, then the full report.
        for mut p in conns {
            p.app.shutdown().await.unwrap();
            let mut rest = Vec::new();
            p.backend.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            p.backend.write_all(b"late reply").await.unwrap();
            p.backend.shutdown().await.unwrap();
            p.app.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"late reply");
            let report = p.copy.await.unwrap();
            assert_done(&report, Side::Client);
            assert_eq!(report.from_client, LEN as u64);
            assert_eq!(report.from_server, (LEN + b"late reply".len()) as u64);
        }
    }

    #[tokio::test]
    async fn the_side_whose_stream_ended_first_is_reported() {
        let mut p = proxied(Limits::default()).await;
        p.app.write_all(b"PING\r\n").await.unwrap();
        let mut got = [0; 6];
        p.backend.read_exact(&mut got).await.unwrap();
        // The backend closes without a reply; then the client.
        p.backend.shutdown().await.unwrap();
        let mut rest = Vec::new();
        p.app.read_to_end(&mut rest).await.unwrap();
        p.app.shutdown().await.unwrap();
        let report = tokio::time::timeout(Duration::from_secs(15), p.copy)
            .await
            .expect("the copy ends")
            .unwrap();
        assert_done(&report, Side::Server);
        assert_eq!((report.from_client, report.from_server), (6, 0));
    }

    #[tokio::test]
    async fn an_idle_connection_costs_little_more_than_its_future() {
        // The copy's future is what an idle connection keeps (with its task
        // and two sockets); it was two 64 KiB buffers plus this before.
        let (mut a, mut b) = pair().await;
        let stop = CancellationToken::new();
        let copy = copy_both(
            &mut a,
            &mut b,
            Limits::default(),
            Meters::default(),
            None,
            &stop,
        );
        let size = std::mem::size_of_val(&copy);
        assert!(size <= 1536, "the copy future grew to {size} bytes");
    }

    #[tokio::test]
    async fn a_reset_on_one_side_resets_the_other() {
        for reset in [Side::Server, Side::Client] {
            let p = proxied(Limits::default()).await;
            let (gone, mut peer) = match reset {
                Side::Server => (p.backend, p.app),
                Side::Client => (p.app, p.backend),
            };
            sockopt::reset_on_close(&gone).unwrap();
            drop(gone);
            let mut buf = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(15), peer.read(&mut buf))
                .await
                .expect("the peer hears of it");
            assert_eq!(
                r.map_err(|e| e.kind()),
                Err(io::ErrorKind::ConnectionReset),
                "{reset:?} reset"
            );
            let report = p.copy.await.unwrap();
            assert!(
                matches!(report.end, End::Failed { side, .. } if side == reset),
                "{reset:?}: {:?}",
                report.end
            );
        }
    }

    /// After `app` half-closed, `backend` goes on talking for three times
    /// `limit` (the copy's half-close limit), a little every fifth of it,
    /// and `app` reads each word; then `backend` finishes too, and `copy`
    /// must end as done, having moved every word: a copy that cut the reply
    /// off fails.
    pub(super) async fn a_reply_flows_on_after_a_half_close(
        app: &mut TcpStream,
        backend: &mut TcpStream,
        copy: JoinHandle<Report>,
        limit: Duration,
    ) {
        let deadline = Duration::from_secs(15);
        app.shutdown().await.unwrap();
        let fin = tokio::time::timeout(deadline, backend.read(&mut [0; 1])).await;
        assert!(matches!(fin, Ok(Ok(0))), "the FIN was forwarded: {fin:?}");
        let half_closed = Instant::now();
        let mut sent = 0;
        while half_closed.elapsed() < limit * 3 {
            backend.write_all(b"more").await.unwrap();
            sent += 4;
            let mut word = [0; 4];
            let got = tokio::time::timeout(deadline, app.read_exact(&mut word)).await;
            assert!(
                matches!(got, Ok(Ok(_))) && &word == b"more",
                "the reply was cut off {:?} after the half-close: {got:?}",
                half_closed.elapsed()
            );
            // The pace of the reply, well inside the limit.
            tokio::time::sleep(limit / 5).await;
        }
        backend.shutdown().await.unwrap();
        let report = tokio::time::timeout(deadline, copy)
            .await
            .expect("the copy ends")
            .unwrap();
        assert_done(&report, Side::Client);
        assert_eq!(report.from_server, sent);
    }

    #[tokio::test]
    async fn a_reply_still_flowing_after_a_half_close_is_not_cut_off() {
        let limit = Duration::from_secs(1);
        let mut p = proxied(Limits {
            idle: None,
            half_close: Some(limit),
        })
        .await;
        a_reply_flows_on_after_a_half_close(&mut p.app, &mut p.backend, p.copy, limit).await;
    }

    #[tokio::test]
    async fn limits_end_silent_connections() {
        let short = Duration::from_millis(200);
        // Idle: nothing moves at all.
        let p = proxied(Limits {
            idle: Some(short),
            half_close: None,
        })
        .await;
        let report = tokio::time::timeout(Duration::from_secs(15), p.copy)
            .await
            .expect("idle timeout")
            .unwrap();
        assert!(matches!(report.end, End::Idle), "{:?}", report.end);

        // Half-close: the client finished, the server never answers.
        let mut p = proxied(Limits {
            idle: None,
            half_close: Some(short),
        })
        .await;
        p.app.shutdown().await.unwrap();
        let report = tokio::time::timeout(Duration::from_secs(15), p.copy)
            .await
            .expect("half-close timeout")
            .unwrap();
        assert!(matches!(report.end, End::HalfClose), "{:?}", report.end);

        // Stopped.
        let (_app, mut client) = pair().await;
        let (mut server, _backend) = pair().await;
        let stop = CancellationToken::new();
        stop.cancel();
        let report = copy_both(
            &mut client,
            &mut server,
            Limits::default(),
            Meters::default(),
            None,
            &stop,
        )
        .await;
        assert!(matches!(report.end, End::Stopped), "{:?}", report.end);
    }
}
