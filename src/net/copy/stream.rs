//! Copying both ways between streams that are not plain sockets (a TLS
//! stream over its socket), through `AsyncRead` and `AsyncWrite` alone, with
//! the contract of [`copy_both`](super::copy_both): half-close, the idle and
//! half-close limits, the stop signal, byte counts.
//!
//! Such a stream has no readiness to wait on without a buffer, so each
//! direction waits inside `poll_read` with a pooled buffer lent for that one
//! call and given back as soon as the read pends: an idle connection still
//! holds no buffer. A buffer stays on loan only while bytes it holds wait
//! for the writer (a peer draining slowly).
//!
//! A writer may keep what it is given (a TLS stream seals records in a
//! buffer of its own): each direction flushes before it waits to read again,
//! so a request never sits in a writer while its reply is awaited. Shutting
//! a writer down flushes it too and, for TLS, sends close_notify.
//!
//! What `copy_both` does to the sockets after a failure or a stop (reset
//! them) is left to the caller, which knows the socket under each stream:
//! [`reset_after`](super::reset_after).

use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::{drive, Buf, Clock, Flowed, Limits, Meters, Report, Side};

/// Copies both ways between `client` and `server` until both directions
/// reach end of stream, one fails, a limit expires or `stop` is cancelled,
/// as [`copy_both`](super::copy_both) does for sockets. The caller resets
/// what must be reset ([`reset_after`](super::reset_after)) and closes the
/// streams by dropping them.
pub async fn copy_streams<A, B>(
    client: &mut A,
    server: &mut B,
    limits: Limits,
    meters: Meters<'_>,
    stop: &CancellationToken,
) -> Report
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Clock::new(&limits);
    let mut up = Flow::new(Side::Client, meters.from_client);
    let mut down = Flow::new(Side::Server, meters.from_server);
    let end = drive(&clock, &limits, stop, |cx, from| match from {
        Side::Client => up.poll(cx, client, server, &clock),
        Side::Server => down.poll(cx, server, client, &clock),
    })
    .await;
    Report {
        from_client: up.moved,
        from_server: down.moved,
        end,
    }
}

/// One direction: from the `from` side's stream to the other's.
struct Flow<'m> {
    /// The side this direction reads from.
    from: Side,
    /// On loan while `buf[pos..end]`, read and not yet written, waits for
    /// the writer.
    buf: Option<Buf>,
    pos: usize,
    end: usize,
    /// Bytes were written since the last flush: the writer may still hold
    /// them.
    unflushed: bool,
    /// The reader reached end of stream: what is left is to shut the writer
    /// down.
    eof: bool,
    /// Bytes read.
    moved: u64,
    /// Shared counters of the bytes read.
    meters: &'m [&'m AtomicU64],
}

impl<'m> Flow<'m> {
    fn new(from: Side, meters: &'m [&'m AtomicU64]) -> Flow<'m> {
        Flow {
            meters,
            from,
            buf: None,
            pos: 0,
            end: 0,
            unflushed: false,
            eof: false,
            moved: 0,
        }
    }

    /// Moves what can be moved now; ready once end of stream was forwarded.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        clock: &Clock,
    ) -> Poll<Flowed>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let from = self.from;
        let on_read = |e| (from, e);
        let on_write = |e| (from.other(), e);
        loop {
            if self.eof {
                // Forward the FIN (and close_notify); the other direction
                // goes on.
                return Pin::new(&mut *w).poll_shutdown(cx).map_err(on_write);
            }
            let buf = self.buf.get_or_insert_with(Buf::take);
            if self.pos == self.end {
                let mut chunk = ReadBuf::new(buf);
                match Pin::new(&mut *r).poll_read(cx, &mut chunk) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(on_read(e))),
                    Poll::Pending => {
                        // Idle here: no buffer while we wait (the reader
                        // keeps the waker, not the buffer), and nothing left
                        // in the writer that the peer may be waiting for.
                        self.buf = None;
                        if self.unflushed {
                            ready!(Pin::new(&mut *w).poll_flush(cx)).map_err(on_write)?;
                            self.unflushed = false;
                            // The peer took what the writer held: traffic.
                            clock.touch();
                        }
                        return Poll::Pending;
                    }
                }
                let n = chunk.filled().len();
                if n == 0 {
                    self.buf = None;
                    self.eof = true;
                    continue;
                }
                (self.pos, self.end) = (0, n);
                self.moved += n as u64;
                Meters::add(self.meters, n);
                clock.touch();
            }
            // Every write that makes progress counts as traffic: a slow
            // reader draining a large chunk is not idle.
            while self.pos < self.end {
                let written = ready!(Pin::new(&mut *w).poll_write(cx, &buf[self.pos..self.end]))
                    .map_err(on_write)?;
                if written == 0 {
                    return Poll::Ready(Err(on_write(io::ErrorKind::WriteZero.into())));
                }
                self.pos += written;
                self.unflushed = true;
                clock.touch();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
    use tokio::net::{TcpListener, TcpSocket, TcpStream};
    use tokio::task::JoinHandle;
    use tokio::time::{timeout, Instant};

    use super::*;
    use crate::net::copy::tests::{a_reply_flows_on_after_a_half_close, assert_done, pair, value};
    use crate::net::copy::{buffers_in_use, reset_after, End};
    use crate::net::sockopt;

    /// A loopback socket that the copy sees only through `AsyncRead` and
    /// `AsyncWrite`, and which, like a TLS stream, keeps small writes until
    /// it is flushed.
    type Wrapped = BufWriter<TcpStream>;

    /// Long enough for anything on loopback, even on a loaded machine.
    const DEADLINE: Duration = Duration::from_secs(15);

    /// app <-> copy_streams <-> backend, the copy's two sockets wrapped.
    struct Proxied {
        app: TcpStream,
        backend: TcpStream,
        stop: CancellationToken,
        copy: JoinHandle<Report>,
    }

    async fn proxied(limits: Limits) -> Proxied {
        let (app, client) = pair().await;
        let (server, backend) = pair().await;
        spawn_copy(app, client, server, backend, limits)
    }

    /// Runs the copy as its caller would: wrapped streams, then the resets
    /// through the sockets underneath.
    fn spawn_copy(
        app: TcpStream,
        client: TcpStream,
        server: TcpStream,
        backend: TcpStream,
        limits: Limits,
    ) -> Proxied {
        let stop = CancellationToken::new();
        let copy = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut client: Wrapped = BufWriter::new(client);
                let mut server: Wrapped = BufWriter::new(server);
                let report =
                    copy_streams(&mut client, &mut server, limits, Meters::default(), &stop).await;
                reset_after(&report.end, client.get_ref(), server.get_ref());
                report
            }
        });
        Proxied {
            app,
            backend,
            stop,
            copy,
        }
    }

    async fn ended(copy: JoinHandle<Report>) -> Report {
        timeout(DEADLINE, copy)
            .await
            .expect("the copy ends")
            .unwrap()
    }

    /// `a_to_b` arrives unchanged at `b` while `b_to_a` goes the other way.
    async fn both_ways(a: &mut TcpStream, b: &mut TcpStream, a_to_b: &[u8], b_to_a: &[u8]) {
        let (mut ar, mut aw) = a.split();
        let (mut br, mut bw) = b.split();
        let (mut at_b, mut at_a) = (vec![0; a_to_b.len()], vec![0; b_to_a.len()]);
        let moved = async {
            tokio::try_join!(
                aw.write_all(a_to_b),
                br.read_exact(&mut at_b),
                bw.write_all(b_to_a),
                ar.read_exact(&mut at_a),
            )
        };
        timeout(DEADLINE, moved)
            .await
            .expect("every byte arrives")
            .unwrap();
        assert!(at_b == a_to_b, "bytes changed on the way");
        assert!(at_a == b_to_a, "bytes changed on the way back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_go_both_ways_and_idle_copies_hold_no_buffer() {
        const CONNS: usize = 4;
        const LEN: usize = 1536 * 1024;
        let mut conns = Vec::new();
        for i in 0..CONNS {
            let mut p = proxied(Limits::default()).await;
            // A small request and its reply: the writer must be flushed,
            // or the request waits in it forever.
            both_ways(&mut p.app, &mut p.backend, b"PING\r\n", b"").await;
            both_ways(&mut p.backend, &mut p.app, b"+PONG\r\n", b"").await;
            // Large values, both ways at once.
            let (up, down) = (value(LEN, i as u8), value(LEN, !(i as u8)));
            both_ways(&mut p.app, &mut p.backend, &up, &down).await;
            conns.push(p);
        }
        // Every byte has been delivered, so each direction waits in a read
        // that pended: none may keep a buffer while its connection idles.
        let end = Instant::now() + DEADLINE;
        while buffers_in_use() != 0 {
            assert!(
                Instant::now() < end,
                "{} buffers held by {CONNS} idle connections",
                buffers_in_use()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(conns.iter().all(|p| !p.copy.is_finished()));

        // The client half-closes; the server still sends a large reply.
        let late = value(LEN, 7);
        for mut p in conns {
            p.app.shutdown().await.unwrap();
            let mut rest = Vec::new();
            timeout(DEADLINE, p.backend.read_to_end(&mut rest))
                .await
                .expect("the FIN is forwarded")
                .unwrap();
            assert!(rest.is_empty());
            both_ways(&mut p.backend, &mut p.app, &late, b"").await;
            p.backend.shutdown().await.unwrap();
            timeout(DEADLINE, p.app.read_to_end(&mut rest))
                .await
                .expect("the server's FIN is forwarded")
                .unwrap();
            assert!(rest.is_empty());
            let report = ended(p.copy).await;
            assert_done(&report, Side::Client);
            assert_eq!(report.from_client, (b"PING\r\n".len() + LEN) as u64);
            assert_eq!(report.from_server, (b"+PONG\r\n".len() + 2 * LEN) as u64);
        }
    }

    #[tokio::test]
    async fn the_server_may_finish_first() {
        let mut p = proxied(Limits::default()).await;
        both_ways(&mut p.backend, &mut p.app, b"+OK ready\r\n", b"").await;
        p.backend.shutdown().await.unwrap();
        let mut rest = Vec::new();
        timeout(DEADLINE, p.app.read_to_end(&mut rest))
            .await
            .expect("the FIN is forwarded")
            .unwrap();
        assert!(rest.is_empty());
        // The client keeps sending after the server finished.
        let up = value(1024 * 1024 + 1, 3);
        both_ways(&mut p.app, &mut p.backend, &up, b"").await;
        p.app.shutdown().await.unwrap();
        let report = ended(p.copy).await;
        assert_done(&report, Side::Server);
        assert_eq!(report.from_client, up.len() as u64);
        assert_eq!(report.from_server, b"+OK ready\r\n".len() as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_moving_ends_the_copy_at_the_idle_limit() {
        // Paused time: the clock jumps to the next timer as soon as nothing
        // runs, and nothing moves here, so this is exact.
        let idle = Duration::from_secs(5);
        let started = Instant::now();
        let p = proxied(Limits {
            idle: Some(idle),
            half_close: None,
        })
        .await;
        let report = timeout(Duration::from_secs(60), p.copy)
            .await
            .expect("idle timeout")
            .unwrap();
        assert!(matches!(report.end, End::Idle), "{:?}", report.end);
        assert!(started.elapsed() >= idle);
    }

    #[tokio::test]
    async fn a_silent_server_after_a_half_close_ends_the_copy() {
        let limit = Duration::from_millis(200);
        let mut p = proxied(Limits {
            idle: None,
            half_close: Some(limit),
        })
        .await;
        let half_closed = Instant::now();
        p.app.shutdown().await.unwrap();
        let mut rest = Vec::new();
        timeout(DEADLINE, p.backend.read_to_end(&mut rest))
            .await
            .expect("the FIN is forwarded")
            .unwrap();
        let report = ended(p.copy).await;
        assert!(matches!(report.end, End::HalfClose), "{:?}", report.end);
        assert!(half_closed.elapsed() >= limit, "ended before the limit");
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

    /// A connected pair whose kernel buffers towards the accepted end are
    /// small, so that a peer reading slowly pushes back on the writer soon.
    async fn narrow_pair() -> (TcpStream, TcpStream) {
        const KERNEL_BUF: u32 = 4 * 1024;
        let listener = TcpSocket::new_v4().unwrap();
        listener.set_recv_buffer_size(KERNEL_BUF).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = listener.listen(1).unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(KERNEL_BUF).unwrap();
        let c = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = listener.accept().await.unwrap();
        c.set_nodelay(true).unwrap();
        s.set_nodelay(true).unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn a_peer_draining_slowly_is_not_idle() {
        // The backend takes a slice every tick: a 64 KiB chunk takes far
        // longer than the idle limit to write, and each slice far less.
        const SLICE: usize = 4 * 1024;
        const TICK: Duration = Duration::from_millis(50);
        const LEN: usize = 192 * 1024;
        let idle = Duration::from_millis(500);
        let (app, client) = pair().await;
        let (server, backend) = narrow_pair().await;
        let mut p = spawn_copy(
            app,
            client,
            server,
            backend,
            Limits {
                idle: Some(idle),
                half_close: None,
            },
        );
        let up = value(LEN, 9);
        let send = async {
            p.app.write_all(&up).await.unwrap();
            p.app.shutdown().await.unwrap();
        };
        let drain = async {
            let mut got = Vec::with_capacity(LEN);
            let mut slice = [0; SLICE];
            loop {
                let n = p.backend.read(&mut slice).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&slice[..n]);
                // Pacing, the behaviour under test: a slow reader.
                tokio::time::sleep(TICK).await;
            }
        };
        let (_, got) = timeout(DEADLINE * 2, async { tokio::join!(send, drain) })
            .await
            .expect("the slow peer gets everything");
        // Had the copy taken the slow peer for idle, the backend would have
        // seen an early end of stream.
        assert!(got == up, "bytes changed on the way");
        // Past the last byte, the idle limit may end it or not: either way
        // it counted every byte.
        let report = ended(p.copy).await;
        assert_eq!(report.from_client, LEN as u64);
    }

    #[tokio::test]
    async fn stop_ends_the_copy_and_resets_both_sides() {
        let mut p = proxied(Limits::default()).await;
        p.stop.cancel();
        let report = ended(p.copy).await;
        assert!(matches!(report.end, End::Stopped), "{:?}", report.end);
        for peer in [&mut p.app, &mut p.backend] {
            let r = timeout(DEADLINE, peer.read(&mut [0; 1]))
                .await
                .expect("the peer hears of it");
            assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset));
        }
    }

    #[tokio::test]
    async fn a_failure_on_one_side_ends_the_copy_and_resets_the_other() {
        for reset in [Side::Server, Side::Client] {
            let p = proxied(Limits::default()).await;
            let (gone, mut peer) = match reset {
                Side::Server => (p.backend, p.app),
                Side::Client => (p.app, p.backend),
            };
            sockopt::reset_on_close(&gone).unwrap();
            drop(gone);
            let report = ended(p.copy).await;
            assert!(
                matches!(report.end, End::Failed { side, .. } if side == reset),
                "{reset:?}: {:?}",
                report.end
            );
            let r = timeout(DEADLINE, peer.read(&mut [0; 1]))
                .await
                .expect("the peer hears of it");
            assert_eq!(
                r.map_err(|e| e.kind()),
                Err(io::ErrorKind::ConnectionReset),
                "{reset:?} reset"
            );
        }
    }

    #[tokio::test]
    async fn an_idle_stream_copy_costs_little_more_than_its_future() {
        let (a, b) = pair().await;
        let (mut a, mut b): (Wrapped, Wrapped) = (BufWriter::new(a), BufWriter::new(b));
        let stop = CancellationToken::new();
        let copy = copy_streams(&mut a, &mut b, Limits::default(), Meters::default(), &stop);
        let size = std::mem::size_of_val(&copy);
        assert!(size <= 1536, "the stream copy future grew to {size} bytes");
    }
}
