//! `mesh-amb demo`: the ambassador pattern and the discovery mesh, end to
//! end, on this machine.
//!
//! Three tiny built-in Redis-like servers (they answer PING) play a remote
//! service; three provider nodes advertise them over mDNS; a consumer node
//! discovers them and stands in for the service the way it would on
//! `localhost:6379`. All four hold one cluster key, made for the run: their
//! advertisements are signed and every hop between them is mutual TLS. A
//! stranger without the key advertises the service too, and an intruder
//! without the key tries to use it. The demo drives clients through the
//! consumer while one backend crashes and comes back and another node leaves
//! gracefully, and prints what happened.
//!
//! Nothing reaches the network: when the OS allows it the process first moves
//! into a network namespace of its own that holds only `lo`; otherwise mDNS
//! is still restricted to `lo`. Everything binds 127.0.0.1 on ephemeral
//! ports, so the demo needs nothing else running.
//!
//! Stdout tells the story; the nodes' own log lines go to a file whose path
//! the story ends with. With `--keep` the nodes stay up after the story,
//! until SIGINT or SIGTERM, and the demo says how to reach them.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use mesh_amb::backends::table::Health;
use mesh_amb::backends::Service;
use mesh_amb::resp::{self, Value};
use mesh_amb::security::ClusterKey;
use mesh_amb::settings::{Config, DiscoverySettings, ProxySettings, SecuritySettings};
use mesh_amb::spec::{ConsumeSpec, ProvideSpec};
use mesh_amb::status::{Document, Observer};
use mesh_amb::{Node, NodeHandle};

use crate::cli::DemoArgs;

/// `println!` for the story, an error instead of a panic when stdout is
/// gone (`mesh-amb demo | head -2`): the `?` after it ends the story, and
/// the nodes with it (their tasks end with the runtime; the namespace,
/// this process's own, with the process).
macro_rules! tell {
    ($($arg:tt)*) => {{
        let mut out = io::stdout().lock();
        writeln!(out, $($arg)*)
            .and_then(|()| out.flush())
            .context("cannot write to stdout")
    }};
}

/// Clients per phase: enough for the spread to be visible.
const CLIENTS: usize = 300;
/// Clients in flight at once, like a small application's connection churn.
const CONCURRENCY: usize = 20;
/// Connection limit of each demo node: ample for the clients above, and
/// four nodes of it fit a default soft fd limit of 1024 with no warning.
const DEMO_MAX_CONNECTIONS: usize = 200;
/// Bound on each phase, so a broken build fails instead of hanging.
const PHASE_DEADLINE: Duration = Duration::from_secs(20);
/// How often the demo looks at the table while waiting for a change.
const POLL: Duration = Duration::from_millis(20);
/// Providers check their service this often, so the crash in step 2 is
/// noticed quickly enough to watch (the default is 500 ms).
const DEMO_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Short drain period so step 4 does not keep the reader waiting.
const DEMO_DRAIN_PERIOD: Duration = Duration::from_millis(500);

/// Log files of earlier runs tried before giving up (their names differ
/// only by a counter after the process id).
const LOG_FILE_TRIES: u32 = 100;

/// Where the demo's mDNS runs.
pub enum Isolation {
    /// A network namespace of its own: nothing can leave the process.
    /// `user`: entered through a user namespace (not as root), which
    /// changes how another process can join it.
    Private { user: bool },
    /// The OS refused a namespace (why): mDNS is restricted to `lo`.
    Loopback(io::Error),
}

/// Moves this process, which must still be single-threaded, into a network
/// namespace of its own with only `lo` up: as root directly, otherwise
/// inside a user namespace. Multicast sent there cannot reach any network.
/// An error means the namespace was entered but could not be set up: the
/// demo cannot run then.
pub fn isolate_network() -> io::Result<Isolation> {
    let mut user = false;
    // SAFETY: plain syscalls on this process, before any thread exists.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            user = true;
            let (uid, gid) = (libc::geteuid(), libc::getegid());
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                return Ok(Isolation::Loopback(io::Error::last_os_error()));
            }
            std::fs::write("/proc/self/setgroups", "deny")?;
            std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
            std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
        let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(Isolation::Private { user })
}

/// Creates the file the nodes log into: in the temporary directory, owner
/// only, never over an existing file (a name taken by an earlier run gets
/// the next counter).
pub fn open_log() -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut n = 0;
    loop {
        let path = std::env::temp_dir().join(match n {
            0 => format!("mesh-amb-demo-{pid}.log"),
            n => format!("mesh-amb-demo-{pid}-{n}.log"),
        });
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < LOG_FILE_TRIES => n += 1,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
}

/// Settings of every demo node: mDNS on `lo` only, quick checks.
fn node(id: &str) -> DiscoverySettings {
    DiscoverySettings {
        node_id: id.into(),
        interfaces: vec!["lo".into()],
        check_interval: DEMO_CHECK_INTERVAL,
        drain_period: DEMO_DRAIN_PERIOD,
        ..DiscoverySettings::default()
    }
}

/// A demo node's config; `key`: the cluster key it holds, if any.
fn config(
    id: &str,
    consumes: Vec<ConsumeSpec>,
    provides: Vec<ProvideSpec>,
    key: Option<&Arc<ClusterKey>>,
) -> Config {
    Config {
        bind: [127, 0, 0, 1].into(),
        consumes,
        provides,
        proxy: ProxySettings {
            max_connections: DEMO_MAX_CONNECTIONS,
            ..ProxySettings::default()
        },
        discovery: node(id),
        security: SecuritySettings {
            cluster_key: key.cloned(),
            ..SecuritySettings::default()
        },
    }
}

/// Tells the story, then names the log file, whatever the outcome.
pub async fn run(
    isolation: Isolation,
    args: &DemoArgs,
    log: &Path,
    admin: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    let shown = Arc::new(Shown::default());
    let stop_admin = CancellationToken::new();
    let page = match admin {
        Some(listener) => {
            let url = format!("http://{}/", listener.local_addr()?);
            let serving = tokio::spawn(mesh_amb::admin::serve(
                listener,
                shown.clone(),
                stop_admin.clone(),
            ));
            Some((url, serving))
        }
        None => None,
    };
    let result = story(
        &isolation,
        args,
        log,
        &shown,
        page.as_ref().map(|p| p.0.as_str()),
    )
    .await;
    stop_admin.cancel();
    if let Some((_, serving)) = page {
        serving
            .await
            .context("the stats page task")?
            .context("the stats page failed")?;
    }
    let named = tell!("\nThe nodes' own log lines: {}", log.display());
    if named.is_err() {
        // Where the error goes: stdout is gone, and the file stays.
        let _ = writeln!(io::stderr(), "The nodes' own log lines: {}", log.display());
    }
    result.and(named)
}

/// The demo nodes the stats page shows: those running now.
#[derive(Default)]
struct Shown(std::sync::Mutex<Vec<Observer>>);

impl Shown {
    fn add(&self, node: &NodeHandle) {
        self.nodes().push(node.observer());
    }

    fn remove(&self, node: &NodeHandle) {
        self.remove_id(&node.config().discovery.node_id);
    }

    fn remove_id(&self, id: &str) {
        self.nodes().retain(|o| o.node_id() != id);
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, Vec<Observer>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl mesh_amb::admin::Source for Shown {
    fn document(&self) -> Document {
        self.nodes().document()
    }
}

async fn story(
    isolation: &Isolation,
    args: &DemoArgs,
    log: &Path,
    shown: &Shown,
    page: Option<&str>,
) -> anyhow::Result<()> {
    tell!("mesh-amb demo: three providers advertise a 'redis' service over mDNS,")?;
    tell!("a consumer discovers them and stands in for the service.\n")?;
    let key = Arc::new(ClusterKey::generate());
    match isolation {
        Isolation::Private { .. } => {
            tell!("  network        a private network namespace: nothing leaves this process")?
        }
        Isolation::Loopback(e) => {
            tell!("  network        mDNS on loopback only (no private namespace: {e})")?
        }
    }
    tell!(
        "  cluster key    made for this run (fingerprint {}), held by the four nodes:\n                 \
         signed advertisements, mutual TLS between ambassadors",
        key.fingerprint()
    )?;
    if let Some(url) = page {
        tell!("  stats page     {url}   every node, live (from this machine's browser)")?;
    }

    let mut backends = Vec::new();
    let mut providers = Vec::new();
    for i in 1..=3 {
        let b = MiniRedis::start(None).await?;
        let provide = ProvideSpec {
            name: "redis".into(),
            port: b.addr.port(),
            weight: 1,
            tls_port: None,
        };
        tell!(
            "  backend {i}      {}   a built-in server that answers PING, advertised\n                 \
             by provider node demo-p{i} as redis@demo-p{i}",
            b.addr
        )?;
        let provider = Node::start(
            config(&format!("demo-p{i}"), vec![], vec![provide], Some(&key)),
            vec![],
        )?;
        shown.add(&provider);
        providers.push(provider);
        backends.push(b);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let front = listener.local_addr()?;
    let consume = ConsumeSpec {
        name: "redis".into(),
        port: front.port(),
        backends: vec![],
    };
    let consumer = Node::start(
        config("demo-c", vec![consume], vec![], Some(&key)),
        vec![listener],
    )?;
    shown.add(&consumer);
    let svc = consumer.services()[0].clone();
    tell!("  consumer       {front}   what the app dials instead of localhost:6379\n")?;

    let started = Instant::now();
    wait_table(&svc, "all three backends to be discovered", |n, _| n == 3).await?;
    tell!(
        "1. The consumer discovered the three providers in {} ms, with no registry.",
        started.elapsed().as_millis()
    )?;
    let mut failures = phase(front, CLIENTS, Expect::Served).await?;
    tell!("   {CLIENTS} clients connected and sent PING, each over mutual TLS to a provider:")?;
    report(&svc)?;

    tell!("\n   A stranger without the key advertises 'redis' too.")?;
    let stranger = MiniRedis::start(None).await?;
    let stranger_ad = stranger_node(Some(&stranger), None)?;
    shown.add(&stranger_ad);
    wait_until("the consumer to ignore the stranger", || {
        ignored(&consumer) > 0
    })
    .await?;
    failures += phase(front, CLIENTS, Expect::Served).await?;
    let fooled = stranger.answered.load(Ordering::Relaxed);
    tell!("   {CLIENTS} more clients through the consumer: {fooled} reached the stranger.")?;
    shown.remove(&stranger_ad);
    stop(stranger_ad).await?;
    stranger.stop();
    tell!("   An intruder without the key stands in for 'redis' on a port of its own.")?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let intruder_front = listener.local_addr()?;
    let intruder = stranger_node(None, Some(listener))?;
    shown.add(&intruder);
    wait_until("the intruder to see the providers", || {
        ignored(&intruder) >= 3
    })
    .await?;
    let intruders = CLIENTS / 10;
    let turned_away = phase(intruder_front, intruders, Expect::TurnedAway).await?;
    tell!("   It saw the three providers but cannot use them: {turned_away} of its {intruders} clients turned away.")?;
    shown.remove(&intruder);
    stop(intruder).await?;
    if fooled > 0 || turned_away < intruders {
        bail!("the cluster key did not keep the stranger out");
    }

    tell!("\n2. Backend 3's server crashes. Clients keep coming.")?;
    backends.pop().expect("three backends").stop();
    let crashed = Instant::now();
    failures += phase(front, CLIENTS, Expect::Served).await?;
    wait_table(&svc, "backend 3 to be withdrawn", |n, _| n == 2).await?;
    tell!(
        "   Its terminator found the service gone and failed the consumer's next connect:\n   \
         the consumer ejected it and retried elsewhere, before any byte was sent.\n   \
         Its provider's health check withdrew the advertisement; it left the\n   \
         consumer's table {} ms after the crash.",
        crashed.elapsed().as_millis()
    )?;
    report(&svc)?;

    tell!("\n3. Backend 3 comes back on the same port; its provider advertises it again.")?;
    let back = MiniRedis::start(Some(provided_addr(&providers[2]))).await?;
    backends.push(back);
    let restarted = Instant::now();
    wait_table(&svc, "backend 3 to return", |n, _| n == 3).await?;
    tell!(
        "   It was back in the table after {} ms.",
        restarted.elapsed().as_millis()
    )?;
    failures += phase(front, CLIENTS, Expect::Served).await?;
    tell!("   {CLIENTS} more clients:")?;
    report(&svc)?;

    tell!("\n4. Provider 1 leaves gracefully: it advertises 'draining', waits, says goodbye.")?;
    let leaving = providers.remove(0);
    let leaving_id = leaving.config().discovery.node_id.clone();
    leaving.shutdown().begin();
    let left = tokio::spawn(leaving.join());
    wait_table(&svc, "provider 1 to drain", |_, draining| draining == 1).await?;
    tell!("   The consumer saw it draining and sends new clients elsewhere.")?;
    failures += phase(front, CLIENTS, Expect::Served).await?;
    left.await.context("leaving node")??;
    shown.remove_id(&leaving_id);
    wait_table(&svc, "provider 1 to leave", |n, _| n == 2).await?;
    tell!("   After its goodbye it left the table. {CLIENTS} more clients meanwhile:")?;
    report(&svc)?;

    if args.keep {
        keep_running(isolation, front, &backends, log, page).await?;
        tell!("   The consumer's table now:")?;
        report(&svc)?;
    }

    tell!("\n5. Shutdown: every node stops accepting, drains, and withdraws what it advertised.")?;
    consumer.shutdown().begin();
    consumer.join().await?;
    for p in &providers {
        p.shutdown().begin();
    }
    for p in providers {
        p.join().await?;
    }
    for b in backends {
        b.stop();
    }

    let total = CLIENTS * 5;
    tell!("\n{total} client connections, {failures} failed.")?;
    if failures > 0 {
        bail!("{failures} client connections failed");
    }
    tell!(
        "Every hop between ambassadors was mutual TLS under the cluster key {}; the\n\
         stranger got no client and the intruder no backend.",
        key.fingerprint()
    )?;
    tell!("\nNext: `mesh-amb keygen cluster.key`, copy the file to two hosts, then")?;
    tell!("`mesh-amb --cluster-key cluster.key --provide redis:6379` on one and")?;
    tell!("`mesh-amb --cluster-key cluster.key --consume redis:6379` on the other:")?;
    tell!("`redis-cli ping` on the second reaches Redis on the first.")?;
    Ok(())
}

/// `--keep`: says how to reach the nodes in the demo's network namespace,
/// then waits for SIGINT or SIGTERM.
async fn keep_running(
    isolation: &Isolation,
    front: SocketAddr,
    backends: &[MiniRedis],
    log: &Path,
    page: Option<&str>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let pid = std::process::id();
    // Everything listens inside the demo's own network namespace: another
    // process reaches it only by joining that namespace.
    let (enter, who) = match isolation {
        Isolation::Private { user: false } => {
            (format!("nsenter --target {pid} --net "), " as root")
        }
        Isolation::Private { user: true } => (
            format!("nsenter --target {pid} --user --net --preserve-credentials "),
            "",
        ),
        Isolation::Loopback(_) => (String::new(), ""),
    };
    tell!("\nKeeping everything running until Ctrl-C (SIGINT or SIGTERM). From another terminal{who}:")?;
    tell!(
        "   {enter}redis-cli -p {} ping\n      the consumer: PONG from one of the providers' backends",
        front.port()
    )?;
    // Backend 2: its provider is still up (provider 1 left in step 4).
    if let Some(b) = backends.get(1) {
        tell!(
            "   {enter}redis-cli -p {} ping\n      backend 2 directly, as provider demo-p2 checks it",
            b.addr.port()
        )?;
    }
    tell!("   tail -f {}\n      what the nodes log", log.display())?;
    if let Some(url) = page {
        tell!("   a browser on {url}\n      the stats page: every node's tables, live")?;
    }
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tell!()?;
    Ok(())
}

/// Where a provider node's (first) service listens.
fn provided_addr(node: &NodeHandle) -> SocketAddr {
    let p = &node.config().provides[0];
    SocketAddr::from(([127, 0, 0, 1], p.port))
}

/// A node without the cluster key that provides `server` as 'redis' or
/// stands in for 'redis' on `listener`.
fn stranger_node(
    server: Option<&MiniRedis>,
    listener: Option<TcpListener>,
) -> anyhow::Result<NodeHandle> {
    let provides = server.map(|s| ProvideSpec {
        name: "redis".into(),
        port: s.addr.port(),
        weight: 1,
        tls_port: None,
    });
    let consumes = match &listener {
        Some(l) => vec![ConsumeSpec {
            name: "redis".into(),
            port: l.local_addr()?.port(),
            backends: vec![],
        }],
        None => vec![],
    };
    let mut config = config("demo-x", consumes, provides.into_iter().collect(), None);
    // The intruder never gets a backend: its clients are turned away at
    // once instead of after --wait-for-backend, which would only slow the
    // story down.
    config.proxy.wait_for_backend = Duration::ZERO;
    Node::start(config, listener.into_iter().collect())
}

/// Instances a node's discovery ignored, for whatever reason.
fn ignored(node: &NodeHandle) -> u64 {
    node.discovery_stats().ignored()
}

async fn stop(node: NodeHandle) -> anyhow::Result<()> {
    node.shutdown().force();
    node.join().await
}

/// Polls `cond` until it holds, for at most [`PHASE_DEADLINE`].
async fn wait_until(what: &str, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    while !cond() {
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {PHASE_DEADLINE:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Waits until `cond(backends, draining)` holds for the consumer's table.
async fn wait_table(
    svc: &Service,
    what: &str,
    cond: impl Fn(usize, usize) -> bool,
) -> anyhow::Result<()> {
    wait_until(what, || {
        let snap = svc.table.snapshot();
        let draining = snap.backends.iter().filter(|b| b.spec.draining).count();
        cond(snap.backends.len(), draining)
    })
    .await
}

fn report(svc: &Service) -> anyhow::Result<()> {
    let snap = svc.table.snapshot();
    let mut rows: Vec<_> = snap.backends.iter().collect();
    rows.sort_by(|a, b| a.spec.key.cmp(&b.spec.key));
    for b in rows {
        let s = &b.stats;
        let state = match (b.spec.draining, svc.table.health(s)) {
            (true, _) => "draining".to_owned(),
            (false, Health::Healthy) => "healthy".to_owned(),
            (false, Health::Ejected { remaining }) => {
                format!("ejected for another {:.1}s", remaining.as_secs_f64())
            }
        };
        let instance = b.spec.key.split('.').next().unwrap_or(&b.spec.key);
        tell!(
            "   {instance:<14} {:4} connections, {} failed connects, {state}",
            s.total.load(Ordering::Relaxed),
            s.failures.load(Ordering::Relaxed),
        )?;
    }
    Ok(())
}

/// What a phase's clients should see; failures that were not expected are
/// printed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Served,
    TurnedAway,
}

/// Runs `n` clients through the ambassador; returns how many failed.
async fn phase(front: SocketAddr, n: usize, expect: Expect) -> anyhow::Result<usize> {
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
                if expect == Expect::Served {
                    // Stderr gone too (`2>&-`) is no reason to stop.
                    let _ = writeln!(io::stderr(), "   client failed: {e:#}");
                }
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
    match resp::command(&mut s, &[b"PING"])
        .await
        .context("no reply")?
    {
        Value::Simple(p) if p == "PONG" => Ok(()),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// A stand-in Redis that answers PING, enough to show the data path.
struct MiniRedis {
    addr: SocketAddr,
    /// Commands it answered.
    answered: Arc<AtomicUsize>,
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
        let answered = Arc::new(AtomicUsize::new(0));
        let counter = answered.clone();
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    Ok((s, _)) = listener.accept() => { conns.spawn(serve_pings(s, counter.clone())); }
                }
            }
            // Dropping the listener and the connections is the "crash".
        });
        Ok(MiniRedis {
            addr,
            answered,
            stop,
        })
    }

    fn stop(self) {
        self.stop.cancel();
    }
}

/// Answers every command with PONG until the client leaves: RESP arrays
/// as redis-cli sends them, or inline lines (`PING` typed into nc).
async fn serve_pings(mut s: TcpStream, answered: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        loop {
            let len = if buf.first() == Some(&b'*') {
                match resp::parse(&buf) {
                    Ok(Some((_, len))) => len,
                    Ok(None) => break,
                    Err(_) => return,
                }
            } else {
                match buf.windows(2).position(|w| w == b"\r\n") {
                    Some(end) => end + 2,
                    None => break,
                }
            };
            buf.drain(..len);
            if s.write_all(b"+PONG\r\n").await.is_err() {
                return;
            }
            answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}
