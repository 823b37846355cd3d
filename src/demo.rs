//! `mesh-amb demo`: the ambassador pattern, end to end, on this machine.
//!
//! Three tiny built-in Redis-like servers (they answer PING) stand in for a
//! remote service; an ambassador listens in front of them the way it would
//! on `localhost:6379`. The demo drives clients through it, stops a backend
//! to show failover, brings it back, and prints what happened. Everything
//! binds to 127.0.0.1 on ephemeral ports, so it needs nothing else running
//! and touches no network.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProxySettings};
use crate::proxy::Service;
use crate::spec::{BackendAddr, ConsumeSpec, Host};
use crate::table::Health;
use crate::{Ambassador, Shutdown};

/// Clients per phase: enough for the spread to be visible.
const CLIENTS: usize = 300;
/// Clients in flight at once, like a small application's connection churn.
const CONCURRENCY: usize = 20;
/// Bound on each phase, so a broken build fails instead of hanging.
const PHASE_DEADLINE: Duration = Duration::from_secs(20);

/// How often the demo looks at the table while waiting for a backend.
const HEALTH_POLL: Duration = Duration::from_millis(50);

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
const PONG: &[u8] = b"+PONG\r\n";

pub async fn run() -> anyhow::Result<()> {
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(MiniRedis::start(None).await?);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let front = listener.local_addr()?;
    let config = Config {
        bind: front.ip(),
        consumes: vec![ConsumeSpec {
            name: "redis".into(),
            port: front.port(),
            backends: addrs
                .iter()
                .map(|a| BackendAddr {
                    host: Host::Ip(a.ip()),
                    port: a.port(),
                    weight: 1,
                })
                .collect(),
        }],
        provides: vec![],
        proxy: ProxySettings::default(),
        discovery: Default::default(),
        log_format: crate::cli::LogFormat::Text,
    };
    let amb = Arc::new(Ambassador::new(config));
    let svc = amb.services()[0].clone();
    let shutdown = Shutdown::new();
    let running = {
        let (amb, shutdown) = (amb.clone(), shutdown.clone());
        tokio::spawn(async move { amb.run(vec![listener], shutdown).await })
    };

    println!("mesh-amb demo: an ambassador standing in for a 'redis' service.\n");
    for (i, a) in addrs.iter().enumerate() {
        println!(
            "  backend {}      {a}   (a built-in server that answers PING)",
            i + 1
        );
    }
    println!("  ambassador     {front}   (what the app dials instead of localhost:6379)");
    println!("  policy         power of two choices, the default\n");

    let mut failures = 0;
    println!("1. {CLIENTS} clients each connect to the ambassador and send PING.");
    failures += phase(front, CLIENTS).await?;
    report(&svc, &addrs);

    println!("\n2. Backend 3 goes away (its server stops), then {CLIENTS} more clients.");
    backends.pop().expect("three backends").stop();
    failures += phase(front, CLIENTS).await?;
    report(&svc, &addrs);
    println!(
        "   The first connect to backend 3 was refused: the ambassador ejected it\n   \
         and retried on another backend, so no client saw an error."
    );

    println!("\n3. Backend 3 comes back on the same port. When its ejection period ends");
    println!("   the ambassador offers it new clients again.");
    backends.push(MiniRedis::start(Some(addrs[2])).await?);
    let waited = Instant::now();
    let back = &svc.table.snapshot().backends[2];
    while svc.table.health(&back.stats) != Health::Healthy {
        if waited.elapsed() > PHASE_DEADLINE {
            bail!("backend 3 stayed ejected for {PHASE_DEADLINE:?}");
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
    println!(
        "   (waited {:.1}s for the ejection to end) Then {CLIENTS} more clients:",
        waited.elapsed().as_secs_f64()
    );
    failures += phase(front, CLIENTS).await?;
    report(&svc, &addrs);

    println!("\n4. Shutdown: the ambassador stops accepting, lets open connections finish,");
    println!("   and exits.");
    shutdown.begin();
    running.await.context("ambassador task")??;
    for b in backends {
        b.stop();
    }

    let total = CLIENTS * 3;
    println!("\n{total} client connections, {failures} failed.");
    if failures > 0 {
        bail!("{failures} client connections failed");
    }
    println!("Next: `mesh-amb --consume redis:7379=127.0.0.1:6379` in front of a real Redis.");
    Ok(())
}

fn report(svc: &Service, addrs: &[SocketAddr]) {
    let snap = svc.table.snapshot();
    for (i, b) in snap.backends.iter().enumerate() {
        let s = &b.stats;
        let state = match svc.table.health(s) {
            Health::Healthy => "healthy".to_owned(),
            Health::Ejected { remaining } => {
                format!("ejected for another {:.1}s", remaining.as_secs_f64())
            }
        };
        println!(
            "   backend {} {}: {:4} connections so far, {} failed connects, {state}",
            i + 1,
            addrs[i],
            s.total.load(Ordering::Relaxed),
            s.failures.load(Ordering::Relaxed),
        );
    }
}

/// Runs `n` clients through the ambassador; returns how many failed.
async fn phase(front: SocketAddr, n: usize) -> anyhow::Result<usize> {
    let mut set = JoinSet::new();
    let mut failures = 0;
    let mut started = 0;
    let deadline = Instant::now() + PHASE_DEADLINE;
    while started < n || !set.is_empty() {
        while started < n && set.len() < CONCURRENCY {
            set.spawn(tokio::time::timeout_at(deadline, ping(front)));
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(Ok(())))) => {}
            Some(Ok(Ok(Err(e)))) => {
                failures += 1;
                eprintln!("   client failed: {e:#}");
            }
            Some(Ok(Err(_))) => bail!("clients did not finish within {PHASE_DEADLINE:?}"),
            Some(Err(e)) => bail!("client task failed: {e}"),
            None => {}
        }
    }
    Ok(failures)
}

async fn ping(front: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(front).await?;
    s.write_all(PING).await?;
    let mut reply = [0u8; PONG.len()];
    s.read_exact(&mut reply).await.context("no reply")?;
    if reply != PONG {
        bail!("unexpected reply {:?}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}

/// A stand-in Redis that answers PING, enough to show the data path.
struct MiniRedis {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl MiniRedis {
    async fn start(addr: Option<SocketAddr>) -> anyhow::Result<MiniRedis> {
        let bind = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("demo backend cannot bind {bind}"))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    Ok((s, _)) = listener.accept() => { conns.spawn(serve_pings(s)); }
                }
            }
            // Dropping the listener and the connections is the "crash".
        });
        Ok(MiniRedis { addr, stop })
    }

    fn stop(self) {
        self.stop.cancel();
    }
}

/// Answers every PING (RESP array or inline) until the client leaves.
async fn serve_pings(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some(len) = ping_len(&buf) {
            buf.drain(..len);
            if s.write_all(PONG).await.is_err() {
                return;
            }
        }
    }
}

/// Length of a complete PING command at the start of `buf`, if there is one.
fn ping_len(buf: &[u8]) -> Option<usize> {
    for form in [PING, b"PING\r\n".as_slice(), b"ping\r\n".as_slice()] {
        if buf.starts_with(form) {
            return Some(form.len());
        }
    }
    None
}
