//! A multi-host network lab built from Linux network namespaces, for
//! integration tests that need real, separate network stacks and real
//! multicast between them (mDNS / DNS-SD) on one machine; and, for tests on
//! loopback, a backend that never answers ([`SilentListener`]); and a
//! stranger on the link that advertises whatever `_amb._tcp` instances a
//! test asks for, malformed ones included ([`Rogue`]).
//!
//! # Topology
//!
//! [`Lab::new`]`(n)` builds one Ethernet segment:
//!
//! ```text
//!   <id>-h1 [eth0 10.77.0.1/24] --veth--+
//!   <id>-h2 [eth0 10.77.0.2/24] --veth--+-- br0 (in namespace <id>-br, mcast_snooping 0)
//!   ...                                 |
//!   <id>-hN [eth0 10.77.0.N/24] --veth--+
//! ```
//!
//! [`Lab::two_segments`]`(a, b)` builds two segments joined by a router:
//!
//! ```text
//!   a1..aA  10.77.1.x/24 -- br0 (<id>-brA) -- ethA 10.77.1.254 [<id>-r] ethB 10.77.2.254 -- br0 (<id>-brB) -- b1..bB 10.77.2.x/24
//! ```
//!
//! The router forwards IPv4 unicast and every host's default route points
//! at it. Multicast is link-local and does *not* cross it, unless an
//! avahi-daemon with [`AvahiOptions::reflector`] runs on the router.
//!
//! Every host has `lo` up, its lab interface(s) up with multicast on, and
//! `224.0.0.0/4` routed out of its (first) lab interface. The lab's
//! addresses exist only inside the lab's namespaces; the root namespace's
//! interfaces and routes are never touched: veth pairs are created *inside*
//! the bridge namespace (`ip -n <br> link add ... peer ... netns <host>`).
//!
//! The kernel's neighbour tables (ARP, IPv6 neighbour discovery) keep
//! each namespace's entries apart but collect them by machine-wide
//! thresholds sized for one host; a lab of more than 8 hosts raises them
//! for its lifetime, so that its hosts keep their peers' link-layer
//! addresses as separate machines would (`neigh.rs` says what happens
//! otherwise).
//!
//! # Impaired links
//!
//! [`Lab::impaired`]`(n, impairment)` builds the one-segment topology with
//! a hub that loses and delays real Ethernet frames (an [`ImpairedLab`]).
//! The usual tool, `tc qdisc ... netem loss 5% delay 50ms 10ms`, needs
//! `sch_netem`, which some kernels (this project's CI machine among them)
//! are built without, and nf_tables can drop at random (`numgen random`)
//! but cannot delay. So [`Lab::impaired`] gives every host a TAP device as
//! its `eth0` (created from a thread that entered the host's namespace, so
//! the device lives there) and the lab process forwards the frames between
//! them:
//!
//! ```text
//!   <id>-h1 [eth0 = tap 10.77.0.1/24] ==fd==+
//!   <id>-h2 [eth0 = tap 10.77.0.2/24] ==fd==+== Hub (threads of the test process)
//!   ...                                     |   learns MACs like a switch, floods
//!   <id>-hN [eth0 = tap 10.77.0.N/24] ==fd==+   multicast/unknown, impairs each hop
//! ```
//!
//! Each host's link is impaired in both directions, as `netem` on both
//! ends of a cable would be: a frame from h1 to h2 crosses h1's link
//! (towards the hub) and h2's link (from the hub), and each crossing
//! independently loses the frame with probability [`Impairment::loss`] and
//! delays it by [`Impairment::delay`] ± a uniform [`Impairment::jitter`].
//! A multicast frame is lost or delayed independently on each receiver's
//! link. Jitter reorders frames, as netem's does. [`Hub::cut`] partitions a
//! host: every frame to or from it vanishes while its link stays up (the
//! host cannot tell, as behind a failed switch port).
//! [`Hub::lose_next_response`] loses one chosen mDNS packet, where random
//! loss cannot pick which. Everything else about the hosts (`lo`, the
//! multicast route, [`Host::enter`], processes) is as in [`Lab::new`].
//!
//! The hub's frames are counted ([`Hub::stats`]), so a test can show the
//! loss it really applied.
//!
//! # Names and cleanup
//!
//! A lab's id is `amb-<pid>-<counter>`, so labs of concurrent test threads
//! and concurrent test processes never collide. Namespaces are called
//! `<id>-<host>` (`amb-4242-0-h1`), `<id>-br`, `<id>-brA`, `<id>-brB`,
//! `<id>-r`. Interface names (`eth0`, `ethA`, `br0`, `h1`) are per
//! namespace, so they are short and fixed.
//!
//! Dropping the [`Lab`] (also while unwinding from a panic) SIGKILLs every
//! process the lab started (by PID), then any process left inside its
//! namespaces, deletes the namespaces (which destroys the veth pairs) and
//! removes the lab's temp dir (set `LAB_KEEP=1` to keep it for debugging).
//! A [`Proc`] dropped while its thread panics prints the tail of its
//! stdout/stderr, so a failing test shows what the daemons said.
//!
//! # Running code inside a host
//!
//! * [`Host::spawn`] / [`Host::run`]: a program under `ip netns exec`.
//! * [`Host::enter`]: a closure on a fresh thread that called `setns()`
//!   into the host's namespace. Sockets remember the namespace they were
//!   created in, so a `TcpListener` bound inside `enter` can be returned and
//!   used from any thread; threads spawned from inside (e.g. a tokio
//!   runtime's workers) inherit the namespace.
//! * [`Host::start_avahi`]: a private avahi-daemon (own D-Bus, own `/run`),
//!   plus [`Host::avahi_browse`] / [`Host::avahi_publish`].
//!
//! Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and the Debian packages
//! `iproute2` (plus `avahi-daemon`, `avahi-utils`, `dbus` for the avahi
//! helpers). Without the privileges [`Lab::new`] panics with a clear
//! message instead of skipping.

mod impair;
mod neigh;
mod rogue;
mod silent;

pub use impair::{Hub, HubStats, ImpairedLab, Impairment};
pub use rogue::{packets as announcement_packets, FakeInstance, Rogue};
pub use silent::SilentListener;

use neigh::NeighbourRoom;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Bound on one-shot commands (`ip ...` takes milliseconds; the margin is for
/// a loaded 2-core CI machine). A command exceeding it is killed.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long links may take to come up after creation. veth carrier and the
/// STP-less bridge port are normally up within milliseconds.
pub const LINK_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// dbus-daemon prints its address once it listens, normally in ~10 ms.
pub const DBUS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// avahi-daemon reports "Server startup complete" after probing its host
/// name (3 probes, 250 ms apart, plus jitter: ~1 s). Headroom for CI load.
pub const AVAHI_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// `avahi-browse -t` exits after "all for now" (~1 s) plus resolving, whose
/// per-record timeout is 5 s when a record vanished meanwhile.
pub const AVAHI_BROWSE_TIMEOUT: Duration = Duration::from_secs(20);
/// `avahi-publish` prints "Established" after the name probe (~1 s).
pub const AVAHI_PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// First and last sleep of the polling back-off in [`wait_until`].
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(100);
/// Lines of each output file shown by [`Proc::output_tail`] on failure.
pub const TAIL_LINES: usize = 40;

/// The lab subnets are `10.77.<segment>.0/24`. They exist only inside the
/// lab's own namespaces.
const NET_A: u8 = 10;
const NET_B: u8 = 77;
/// Host part of the router's address on each segment.
const ROUTER_HOST: u8 = 254;

/// Distinguishes labs created by one process.
static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------
// Deadlines and polling
// ---------------------------------------------------------------------------

/// A point in time after which waiting is pointless, with the budget it
/// was made from (for error messages).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// When the wait gives up.
    at: Instant,
    /// The duration the deadline was created with.
    budget: Duration,
}

impl Deadline {
    /// A deadline `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Deadline {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// A deadline `secs` seconds from now.
    pub fn secs(secs: u64) -> Self {
        Self::after(Duration::from_secs(secs))
    }

    /// A deadline `ms` milliseconds from now.
    pub fn millis(ms: u64) -> Self {
        Self::after(Duration::from_millis(ms))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Time left (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The duration this deadline was created with.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The instant it expires.
    pub fn instant(&self) -> Instant {
        self.at
    }
}

impl From<Duration> for Deadline {
    fn from(d: Duration) -> Self {
        Deadline::after(d)
    }
}

/// Polls `cond` with a short exponential back-off until it returns true
/// (-> `true`) or the deadline passes (-> `false`). `cond` is always
/// evaluated at least once, and once more at the deadline.
pub fn wait_until(deadline: impl Into<Deadline>, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(deadline, || cond().then_some(())).is_some()
}

/// Like [`wait_until`], for a condition that yields a value.
pub fn wait_for<T>(deadline: impl Into<Deadline>, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = deadline.into();
    let mut pause = POLL_MIN;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if deadline.expired() {
            return None;
        }
        thread::sleep(pause.min(deadline.remaining()));
        pause = (pause * 2).min(POLL_MAX);
    }
}

// ---------------------------------------------------------------------------
// Lab
// ---------------------------------------------------------------------------

/// A set of network namespaces wired into one or two Ethernet segments.
/// See the module docs for the topology. Everything is torn down on drop.
#[derive(Debug)]
pub struct Lab {
    /// `amb-<pid>-<n>`: prefix of every namespace and of the temp dir.
    id: String,
    /// State shared with the hosts and their processes.
    shared: Arc<Shared>,
    /// The end hosts, in creation order.
    hosts: Vec<Host>,
    /// The router of a two-segment lab.
    router: Option<Host>,
    /// Every namespace created so far, in creation order (deleted in
    /// reverse). Filled as we go so a half-built lab is cleaned up too.
    namespaces: Vec<String>,
    /// Room for the hosts in the machine's neighbour tables; given back
    /// after the namespaces are gone (fields drop after `Drop::drop`).
    _neighbours: NeighbourRoom,
}

/// State shared between a [`Lab`], its [`Host`]s and their [`Proc`]s.
#[derive(Debug)]
struct Shared {
    /// The lab's temp dir (`$TMPDIR/<id>`): logs, configs, D-Bus sockets.
    dir: PathBuf,
    /// Processes started through the lab and not yet reaped, by PID, so
    /// that dropping the lab kills stragglers. A [`Proc`] reaps its child
    /// only while holding this lock, so a PID found here is never recycled.
    procs: Mutex<BTreeMap<u32, ProcInfo>>,
    /// Numbers the log files.
    seq: AtomicUsize,
}

/// What the lab remembers of a running [`Proc`].
#[derive(Debug, Clone)]
struct ProcInfo {
    label: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Shared {
    fn procs(&self) -> MutexGuard<'_, BTreeMap<u32, ProcInfo>> {
        // A panic while holding the lock must not stop the cleanup.
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Lab {
    /// One segment with hosts `h1..hn` at `10.77.0.1..n`. Panics (clearly)
    /// if the lab cannot be built, e.g. when not root.
    pub fn new(n: usize) -> Lab {
        Self::try_new(n).unwrap_or_else(|e| panic!("Lab::new({n}) failed: {e}"))
    }

    /// Fallible [`Lab::new`].
    pub fn try_new(n: usize) -> io::Result<Lab> {
        assert!((1..ROUTER_HOST as usize).contains(&n), "1..=253 hosts");
        let mut lab = Lab::empty(n)?;
        let br = lab.add_bridge("br")?;
        for i in 1..=n {
            let ip = Ipv4Addr::new(NET_A, NET_B, 0, i as u8);
            let host = lab.add_host(&format!("h{i}"), &[(&br, "eth0", ip)], None)?;
            lab.hosts.push(host);
        }
        lab.wait_links_up()?;
        Ok(lab)
    }

    /// Two segments joined by router `r`: hosts `a1..aA` at `10.77.1.x`
    /// and `b1..bB` at `10.77.2.x`, router at `.254` on both, IPv4
    /// forwarding on, every host's default route via the router.
    pub fn two_segments(a: usize, b: usize) -> Lab {
        Self::try_two_segments(a, b)
            .unwrap_or_else(|e| panic!("Lab::two_segments({a}, {b}) failed: {e}"))
    }

    /// Fallible [`Lab::two_segments`].
    pub fn try_two_segments(a: usize, b: usize) -> io::Result<Lab> {
        assert!(a < ROUTER_HOST as usize && b < ROUTER_HOST as usize);
        let mut lab = Lab::empty(a + b + 1)?;
        let br_a = lab.add_bridge("brA")?;
        let br_b = lab.add_bridge("brB")?;
        let gw_a = Ipv4Addr::new(NET_A, NET_B, 1, ROUTER_HOST);
        let gw_b = Ipv4Addr::new(NET_A, NET_B, 2, ROUTER_HOST);
        let router = lab.add_host("r", &[(&br_a, "ethA", gw_a), (&br_b, "ethB", gw_b)], None)?;
        // Per-namespace sysctl: the root namespace's ip_forward is untouched.
        let forward = "echo 1 > /proc/sys/net/ipv4/ip_forward";
        ip_args(&["netns", "exec", &router.netns, "sh", "-c", forward])?;
        lab.router = Some(router);
        for (prefix, br, segment, count, gw) in [("a", &br_a, 1, a, gw_a), ("b", &br_b, 2, b, gw_b)]
        {
            for i in 1..=count {
                let ip = Ipv4Addr::new(NET_A, NET_B, segment, i as u8);
                let host = lab.add_host(&format!("{prefix}{i}"), &[(br, "eth0", ip)], Some(gw))?;
                lab.hosts.push(host);
            }
        }
        lab.wait_links_up()?;
        Ok(lab)
    }

    /// The lab id (`amb-<pid>-<n>`), prefix of all its namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lab's temp dir (logs and configs of everything it runs).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The end hosts (not the router), in creation order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A host (or the router, `"r"`) by short name; panics if unknown.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .chain(self.router.as_ref())
            .find(|h| h.name == name)
            .unwrap_or_else(|| {
                let names: Vec<_> = self
                    .hosts
                    .iter()
                    .chain(self.router.as_ref())
                    .map(|h| h.name.as_str())
                    .collect();
                panic!("lab {} has no host {name:?}; it has {names:?}", self.id)
            })
    }

    /// The router of a two-segment lab.
    pub fn router(&self) -> Option<&Host> {
        self.router.as_ref()
    }

    /// Every namespace this lab created (hosts, router, bridges).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// A lab with no namespaces yet, with room for `hosts` hosts.
    fn empty(hosts: usize) -> io::Result<Lab> {
        let id = format!(
            "amb-{}-{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&id);
        if dir.exists() {
            fs::remove_dir_all(&dir)?; // left over by a crashed run with our pid
        }
        fs::create_dir_all(&dir)?;
        Ok(Lab {
            id,
            shared: Arc::new(Shared {
                dir,
                procs: Mutex::new(BTreeMap::new()),
                seq: AtomicUsize::new(0),
            }),
            hosts: Vec::new(),
            router: None,
            namespaces: Vec::new(),
            _neighbours: NeighbourRoom::for_hosts(hosts),
        })
    }

    /// Creates namespace `<id>-<suffix>` and records it for cleanup.
    fn add_netns(&mut self, suffix: &str) -> io::Result<String> {
        let name = format!("{}-{suffix}", self.id);
        ip(&format!("netns add {name}")).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create network namespace {name}: {e}\n\
                     (the lab needs root with CAP_SYS_ADMIN/CAP_NET_ADMIN and iproute2)"
                ),
            )
        })?;
        self.namespaces.push(name.clone());
        Ok(name)
    }

    /// A namespace holding bridge `br0` (see `lab/netns.sh`).
    fn add_bridge(&mut self, suffix: &str) -> io::Result<String> {
        let ns = self.add_netns(suffix)?;
        topology(&["netns_bridge", &ns])?;
        Ok(ns)
    }

    /// Creates host namespace `<id>-<name>` with one interface per
    /// `(bridge namespace, interface name, address)`, all /24. The bridge
    /// port of each is named after the host.
    fn add_host(
        &mut self,
        name: &str,
        links: &[(&String, &str, Ipv4Addr)],
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<Host> {
        let ns = self.add_netns(name)?;
        ip(&format!("-n {ns} link set lo up"))?;
        let gw = gateway.map(|g| g.to_string()).unwrap_or_default();
        let mut ifaces = Vec::new();
        for (br, ifname, addr) in links {
            let a = addr.to_string();
            topology(&["netns_plug", br, name, &ns, ifname, &a, &gw])?;
            ifaces.push(Iface {
                name: ifname.to_string(),
                ip: *addr,
                prefix_len: 24,
                bridge_netns: br.to_string(),
            });
        }
        let dir = self.shared.dir.join(name);
        fs::create_dir_all(&dir)?;
        Ok(Host {
            name: name.to_string(),
            netns: ns,
            ip: ifaces[0].ip,
            ifaces,
            dir,
            shared: self.shared.clone(),
        })
    }

    /// Waits until every host interface has carrier and every bridge port
    /// forwards.
    fn wait_links_up(&self) -> io::Result<()> {
        let deadline = Deadline::after(LINK_UP_TIMEOUT);
        for host in self.hosts.iter().chain(self.router.as_ref()) {
            for iface in &host.ifaces {
                let up = wait_until(deadline, || {
                    let host_side = ip(&format!(
                        "-n {} -o link show dev {}",
                        host.netns, iface.name
                    ));
                    let port = ip(&format!(
                        "-n {} -d -o link show dev {}",
                        iface.bridge_netns, host.name
                    ));
                    matches!((host_side, port), (Ok(h), Ok(p))
                        if h.contains("state UP") && p.contains("state forwarding"))
                });
                if !up {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{}:{} not up after {:?}",
                            host.name, iface.name, LINK_UP_TIMEOUT
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        // 1. Everything we started, by PID (still unreaped: see `Shared`).
        {
            let procs = self.shared.procs();
            for (pid, info) in procs.iter() {
                if panicking {
                    eprintln!("{}", tail_of(info, TAIL_LINES));
                }
                // SAFETY: plain syscall; the PID is our unreaped child.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        // 2. Anything else still inside our namespaces (descendants of what
        //    we started): only processes of ours can be in there.
        for ns in &self.namespaces {
            if let Ok(pids) = ip(&format!("netns pids {ns}")) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        // 3. The namespaces, hosts before bridges; a veth dies with either end.
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&format!("netns del {ns}")) {
                eprintln!("lab {}: deleting namespace {ns}: {e}", self.id);
            }
        }
        // 4. The temp dir.
        if std::env::var_os("LAB_KEEP").is_some() {
            eprintln!("lab {}: kept {}", self.id, self.shared.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.shared.dir) {
            eprintln!(
                "lab {}: removing {}: {e}",
                self.id,
                self.shared.dir.display()
            );
        }
    }
}

/// Lists the names in `ip netns list`.
pub fn list_netns() -> Vec<String> {
    ip("netns list")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Inode of the calling *thread's* network namespace (compare with
/// [`Host::netns_inode`]).
pub fn current_netns_inode() -> u64 {
    fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino()
}

/// Runs `ip <cmdline>` (split on whitespace: lab names and addresses
/// contain none); see [`ip_args`].
fn ip(cmdline: &str) -> io::Result<String> {
    ip_args(&cmdline.split_whitespace().collect::<Vec<_>>())
}

/// A host's private D-Bus and avahi-daemon configurations, shared with
/// scenarios/lib/lab.sh.
const DBUS_CONF: &str = include_str!("../dbus-bus.conf");
const AVAHI_CONF: &str = include_str!("../avahi-daemon.conf");

/// The topology's ip commands, shared with scenarios/lib/lab.sh.
const TOPOLOGY_SH: &str = include_str!("../netns.sh");

/// Runs one function of `lab/netns.sh` (`netns_bridge`, `netns_plug`) with
/// `args`, under the same timeout as `ip`.
fn topology(args: &[&str]) -> io::Result<()> {
    let script = format!("{TOPOLOGY_SH}\n\"$@\"");
    let out = run_cmd(
        Command::new("bash")
            .args(["-c", &script, "netns.sh"])
            .args(args),
        RUN_TIMEOUT,
    )?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs `ip <args>`; its stdout on success, an error holding its stderr
/// otherwise.
fn ip_args(args: &[&str]) -> io::Result<String> {
    let out = run_cmd(Command::new("ip").args(args), RUN_TIMEOUT).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("`ip {}`: {e} (is iproute2 installed?)", args.join(" ")),
        )
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to completion with captured output, killing it after
/// `timeout`.
fn run_cmd(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let deadline = Deadline::after(timeout);
    let status = wait_for(deadline, || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{cmd:?} did not finish within {timeout:?}"),
        ));
    };
    let join = |h: Option<JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: join(out),
        stderr: join(err),
    })
}

/// Reads a pipe to its end on a helper thread.
fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

// ---------------------------------------------------------------------------
// Host
// ---------------------------------------------------------------------------

/// One network interface of a [`Host`].
#[derive(Clone, Debug)]
pub struct Iface {
    /// Interface name inside the host (`eth0`, or `ethA`/`ethB` on the router).
    pub name: String,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its prefix length (always 24).
    pub prefix_len: u8,
    /// The namespace of the bridge it is plugged into (empty on an
    /// [`ImpairedLab`], whose hub runs in the lab's own process).
    pub bridge_netns: String,
}

/// A handle on one namespace of a [`Lab`]. Cheap to clone; only valid while
/// the lab lives.
#[derive(Clone, Debug)]
pub struct Host {
    /// Short name: `h1`, `a2`, `r`, ...
    pub name: String,
    /// Network namespace name (`amb-<pid>-<n>-<name>`), unique per run;
    /// also used as the avahi host name.
    pub netns: String,
    /// Address of the first lab interface.
    pub ip: Ipv4Addr,
    /// All lab interfaces (one, or two on the router).
    pub ifaces: Vec<Iface>,
    /// Per-host part of the lab temp dir (logs, avahi config).
    dir: PathBuf,
    /// The lab's process registry and temp dir.
    shared: Arc<Shared>,
}

impl Host {
    /// Per-host temp dir (logs, avahi config, D-Bus socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Inode of the namespace (compare with [`current_netns_inode`]).
    pub fn netns_inode(&self) -> u64 {
        fs::metadata(format!("/run/netns/{}", self.netns))
            .expect("stat /run/netns/<ns>")
            .ino()
    }

    /// `ip netns exec <ns> <program>`, to add args/env to and pass to
    /// [`Host::spawn_cmd`] (or run yourself).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Starts `program args...` in this host, stdout/stderr going to files
    /// in the host's temp dir. See [`Proc`].
    pub fn spawn<I, S>(&self, program: &str, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        self.spawn_cmd(program, cmd)
    }

    /// Starts a prepared command (usually from [`Host::command`]); `label`
    /// names its log files and appears in output tails.
    pub fn spawn_cmd(&self, label: &str, mut cmd: Command) -> Proc {
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        let base: String = Path::new(label)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| label.to_string())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let stdout = self.dir.join(format!("{seq:03}-{base}.out"));
        let stderr = self.dir.join(format!("{seq:03}-{base}.err"));
        let open =
            |p: &Path| File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        cmd.stdin(Stdio::null())
            .stdout(open(&stdout))
            .stderr(open(&stderr));
        let info = ProcInfo {
            label: format!("{}:{}", self.name, label),
            stdout,
            stderr,
        };
        let mut procs = self.shared.procs();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot spawn {cmd:?}: {e}", info.label));
        procs.insert(child.id(), info.clone());
        drop(procs);
        Proc {
            info,
            child,
            status: None,
            shared: self.shared.clone(),
        }
    }

    /// Runs `program args...` in this host to completion (killed after
    /// [`RUN_TIMEOUT`]) and returns its output, whatever its exit status.
    pub fn run<I, S>(&self, program: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_cmd(&mut cmd, RUN_TIMEOUT).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// Like [`Host::run`], but panics unless it succeeds; returns stdout.
    pub fn run_ok<I, S>(&self, program: &str, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.run(program, &args);
        assert!(
            out.status.success(),
            "{}: `{program} {args:?}` failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a fresh thread that has joined this host's network
    /// namespace, and returns its result (a panic in `f` propagates).
    ///
    /// Sockets created in `f` live in the host's namespace for their whole
    /// life, wherever they are used afterwards; threads spawned in `f`
    /// (e.g. a multi-thread tokio runtime's workers) inherit the namespace.
    /// Other kinds of namespace (mount, ...) are not changed.
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let ns = self.open_netns();
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(s, move || {
                    setns(&ns, &self.netns);
                    drop(ns);
                    f()
                })
                .expect("spawn thread");
            handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Like [`Host::enter`], but returns at once with the thread's handle
    /// (for servers that run while the test does something else).
    pub fn thread<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.open_netns();
        let name = self.netns.clone();
        thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                setns(&ns, &name);
                drop(ns);
                f()
            })
            .expect("spawn thread")
    }

    fn open_netns(&self) -> File {
        let path = format!("/run/netns/{}", self.netns);
        File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"))
    }

    // -- avahi --------------------------------------------------------------

    /// Path of this host's private D-Bus socket (used by its avahi-daemon).
    fn bus_socket(&self) -> PathBuf {
        self.dir.join("avahi").join("bus.sock")
    }

    /// `DBUS_SYSTEM_BUS_ADDRESS` for this host's avahi-daemon and clients.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.bus_socket().display())
    }

    /// Starts avahi-daemon in this host with [`AvahiOptions::default`].
    pub fn start_avahi(&self) -> AvahiGuard {
        self.start_avahi_with(AvahiOptions::default())
    }

    /// Starts a private dbus-daemon and an avahi-daemon in this host and
    /// waits until the daemon reports "Server startup complete" (it is then
    /// on the bus and has its host name). Panics with the daemons' logs if
    /// that does not happen within [`AVAHI_READY_TIMEOUT`].
    ///
    /// The daemon runs as `ip netns exec <ns> unshare -m sh -c '...'`: a
    /// tmpfs on `/run` gives it its own `/run/avahi-daemon/{pid,socket}`,
    /// and a per-host dir is bind-mounted on `/etc/avahi/services` (filled
    /// from [`AvahiOptions::service_files`]). It keeps root and skips the
    /// chroot, because the private bus only admits our uid.
    pub fn start_avahi_with(&self, opts: AvahiOptions) -> AvahiGuard {
        let mut guard = self.launch_avahi(opts);
        guard.wait_ready();
        guard
    }

    /// Starts the daemons without waiting for avahi to be up.
    fn launch_avahi(&self, opts: AvahiOptions) -> AvahiGuard {
        let adir = self.dir.join("avahi");
        let services_dir = adir.join("services");
        let socket = self.bus_socket();
        assert!(
            !socket.exists(),
            "{}: avahi already started on this host",
            self.name
        );
        fs::create_dir_all(&services_dir).expect("create avahi dir");
        for (file, xml) in &opts.service_files {
            fs::write(services_dir.join(file), xml).expect("write service file");
        }

        // A private bus: anyone (that is, root) may own any name on it.
        let bus_conf = adir.join("bus.conf");
        fs::write(
            &bus_conf,
            DBUS_CONF.replace("@SOCKET@", &socket.display().to_string()),
        )
        .expect("write bus.conf");
        let mut cmd = self.command("dbus-daemon");
        cmd.arg(format!("--config-file={}", bus_conf.display()))
            .args(["--nofork", "--print-address"]);
        let bus = self.spawn_cmd("dbus-daemon", cmd);
        // It prints its address once it listens.
        let ready = wait_until(DBUS_READY_TIMEOUT, || {
            bus.stdout().contains("unix:") && socket.exists()
        });
        assert!(
            ready,
            "{}: dbus-daemon not ready within {DBUS_READY_TIMEOUT:?} \
             (is the `dbus-daemon` package installed?)\n{}",
            self.name,
            bus.output_tail(TAIL_LINES)
        );

        let interfaces = opts
            .interfaces
            .clone()
            .unwrap_or_else(|| self.ifaces.iter().map(|i| i.name.clone()).collect());
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let avahi_conf = adir.join("avahi-daemon.conf");
        fs::write(
            &avahi_conf,
            AVAHI_CONF
                .replace("@HOST@", &self.netns)
                .replace("@IPV6@", yes_no(opts.ipv6))
                .replace("@IFACES@", &interfaces.join(","))
                .replace("@REFLECTOR@", yes_no(opts.reflector))
                .replace("@DISALLOW@", yes_no(opts.disallow_other_stacks)),
        )
        .expect("write avahi-daemon.conf");

        // $1 = config, $2 = services dir. `exec` keeps one PID throughout
        // (ip -> unshare -> sh -> avahi-daemon), so Proc kills the daemon.
        let script = "set -e; \
            mount -t tmpfs -o mode=0755 lab-run /run; \
            mkdir -p /run/avahi-daemon; \
            mount --bind \"$2\" /etc/avahi/services; \
            exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f \"$1\"";
        let mut cmd = self.command("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(&avahi_conf)
            .arg(&services_dir)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address());
        let daemon = self.spawn_cmd("avahi-daemon", cmd);
        AvahiGuard {
            daemon,
            bus,
            host_name: format!("{}.local", self.netns),
            bus_address: self.bus_address(),
            services_dir,
        }
    }

    /// `ip netns exec <ns> <program>` with `DBUS_SYSTEM_BUS_ADDRESS` set to
    /// this host's private bus: for avahi-browse, avahi-publish,
    /// avahi-resolve, ... (needs [`Host::start_avahi`] first).
    pub fn avahi_command(&self, program: &str) -> Command {
        let mut cmd = self.command(program);
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address());
        cmd
    }

    /// `avahi-browse -rtp <service_type>` in this host: the parsable
    /// listing (`+` lines for instances, `=` lines for resolved ones).
    /// Bounded by [`AVAHI_BROWSE_TIMEOUT`]; panics if it fails.
    pub fn avahi_browse(&self, service_type: &str) -> String {
        let mut cmd = self.avahi_command("avahi-browse");
        cmd.args(["-r", "-t", "-p", service_type]);
        let out = run_cmd(&mut cmd, AVAHI_BROWSE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: avahi-browse: {e}", self.name));
        assert!(
            out.status.success(),
            "{}: avahi-browse {service_type} failed ({}): {} (did you start_avahi()?)",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`Host::avahi_browse`], parsed: the resolved (`=`) records.
    pub fn avahi_browse_resolved(&self, service_type: &str) -> Vec<BrowseRecord> {
        parse_avahi_browse(&self.avahi_browse(service_type))
    }

    /// `avahi-publish -s <name> <type> <port> <txt>...` in this host, once
    /// avahi reports the service established (panics otherwise within
    /// [`AVAHI_PUBLISH_TIMEOUT`]). The service lives as long as the Proc.
    pub fn avahi_publish(&self, name: &str, service_type: &str, port: u16, txt: &[&str]) -> Proc {
        let port = port.to_string();
        let mut args = vec!["-s", name, service_type, &port];
        args.extend_from_slice(txt);
        self.avahi_publish_args(&args)
    }

    /// `avahi-publish ARGS` (any of its modes: `-s`, `-a`, `-H ...`),
    /// returned once it reports success.
    pub fn avahi_publish_args(&self, args: &[&str]) -> Proc {
        let mut cmd = self.avahi_command("avahi-publish");
        cmd.args(args);
        let mut p = self.spawn_cmd("avahi-publish", cmd);
        let ok = wait_until(AVAHI_PUBLISH_TIMEOUT, || {
            p.stderr().contains("Established") || !p.is_running()
        });
        assert!(
            ok && p.is_running(),
            "{}: avahi-publish {args:?} not established within {AVAHI_PUBLISH_TIMEOUT:?}\n{}",
            self.name,
            p.output_tail(TAIL_LINES)
        );
        p
    }
}

/// Moves the calling thread into the network namespace `ns`.
fn setns(ns: &File, name: &str) {
    // SAFETY: plain syscall on a valid fd; affects only the calling thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!("setns({name}): {}", io::Error::last_os_error());
    }
}

// ---------------------------------------------------------------------------
// Proc
// ---------------------------------------------------------------------------

/// A process started in a host, with stdout/stderr in files. Dropping it
/// SIGKILLs it (by PID) and reaps it; if the thread is panicking it first
/// prints the tail of its output.
#[derive(Debug)]
pub struct Proc {
    /// Label and log file paths.
    info: ProcInfo,
    /// The `ip netns exec` child, which execs the program (same PID).
    child: Child,
    /// Exit status once reaped.
    status: Option<ExitStatus>,
    /// The lab's registry, which we leave when reaped.
    shared: Arc<Shared>,
}

impl Proc {
    /// The PID (of the program itself: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`, `libc::SIGKILL`) unless the
    /// process has already been reaped.
    pub fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: plain syscall; the PID is our unreaped child.
            unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        }
    }

    /// Exit status if it has exited (reaping it), without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let mut procs = self.shared.procs();
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
                procs.remove(&self.pid());
            }
        }
        self.status
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits for it to exit until `deadline`; `None` if it is still running.
    pub fn wait_exit(&mut self, deadline: impl Into<Deadline>) -> Option<ExitStatus> {
        wait_for(deadline, || self.try_status())
    }

    /// SIGKILLs and reaps it (what Drop does).
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(st) = self.status {
            return st;
        }
        self.signal(libc::SIGKILL);
        let mut procs = self.shared.procs();
        let st = self.child.wait().expect("wait for child");
        procs.remove(&self.pid());
        self.status = Some(st);
        st
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.info.stdout).unwrap_or_default()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.info.stderr).unwrap_or_default()
    }

    /// Paths of its stdout and stderr files.
    pub fn log_paths(&self) -> (&Path, &Path) {
        (&self.info.stdout, &self.info.stderr)
    }

    /// The last `lines` lines of stdout and of stderr, labelled, for
    /// assertion messages.
    pub fn output_tail(&self, lines: usize) -> String {
        tail_of(&self.info, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.output_tail(TAIL_LINES));
        }
        if self.status.is_none() {
            self.signal(libc::SIGKILL);
            let mut procs = self.shared.procs();
            let _ = self.child.wait();
            procs.remove(&self.pid());
        }
    }
}

fn tail_of(info: &ProcInfo, lines: usize) -> String {
    let tail = |p: &Path| {
        let text = fs::read_to_string(p).unwrap_or_else(|e| format!("<{}: {e}>", p.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    };
    format!(
        "----- {} stdout (last {lines} lines) -----\n{}\n----- {} stderr (last {lines} lines) -----\n{}",
        info.label,
        tail(&info.stdout),
        info.label,
        tail(&info.stderr)
    )
}

// ---------------------------------------------------------------------------
// Avahi
// ---------------------------------------------------------------------------

/// How [`Host::start_avahi_with`] configures avahi-daemon.
#[derive(Clone, Debug, Default)]
pub struct AvahiOptions {
    /// `enable-reflector=yes`: repeat mDNS between the host's interfaces.
    /// For the router of [`Lab::two_segments`], so that both segments see
    /// each other's services.
    pub reflector: bool,
    /// `use-ipv6`. Off by default so records are IPv4 only and listings
    /// deterministic.
    pub ipv6: bool,
    /// `allow-interfaces`; `None` means all the host's lab interfaces
    /// (`lo` is never used unless listed).
    pub interfaces: Option<Vec<String>>,
    /// Static service files `(file name, XML)` for the daemon's private
    /// `/etc/avahi/services` (how a third-party host provides a service).
    pub service_files: Vec<(String, String)>,
    /// `disallow-other-stacks=yes`: the daemon binds port 5353 without
    /// sharing it, so no other mDNS stack on the host can.
    pub disallow_other_stacks: bool,
}

impl AvahiOptions {
    /// Default options with the reflector on.
    pub fn reflector() -> Self {
        AvahiOptions {
            reflector: true,
            ..Default::default()
        }
    }
}

/// A running avahi-daemon and its private dbus-daemon; both are killed
/// on drop (daemon first).
#[derive(Debug)]
pub struct AvahiGuard {
    /// avahi-daemon (declared first: dropped before its bus).
    daemon: Proc,
    /// The private dbus-daemon avahi uses as its system bus.
    bus: Proc,
    /// `<netns>.local`: the daemon's mDNS host name.
    host_name: String,
    /// `DBUS_SYSTEM_BUS_ADDRESS` of the private bus.
    bus_address: String,
    /// Host dir bind-mounted on the daemon's `/etc/avahi/services`.
    services_dir: PathBuf,
}

/// Starts avahi on several hosts at once and waits until all are up:
/// faster than one [`Host::start_avahi_with`] after another, as each
/// daemon spends ~1 s probing its host name.
pub fn start_avahi_many<'a>(
    hosts: impl IntoIterator<Item = (&'a Host, AvahiOptions)>,
) -> Vec<AvahiGuard> {
    let mut guards: Vec<AvahiGuard> = hosts
        .into_iter()
        .map(|(host, opts)| host.launch_avahi(opts))
        .collect();
    for g in &mut guards {
        g.wait_ready();
    }
    guards
}

impl AvahiGuard {
    /// Waits until avahi-daemon reports "Server startup complete" (it is
    /// then on the bus and owns its host name); panics with the logs if it
    /// dies or does not within [`AVAHI_READY_TIMEOUT`].
    fn wait_ready(&mut self) {
        let daemon = &mut self.daemon;
        let ready = wait_until(AVAHI_READY_TIMEOUT, || {
            daemon.stderr().contains("Server startup complete") || !daemon.is_running()
        });
        assert!(
            ready && self.daemon.is_running(),
            "{}: avahi-daemon not up within {AVAHI_READY_TIMEOUT:?} \
             (are `avahi-daemon` and `dbus` installed?)\n{}",
            self.host_name,
            self.log()
        );
    }

    /// The daemon's mDNS host name (`<netns>.local`).
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// `DBUS_SYSTEM_BUS_ADDRESS` for clients of this daemon.
    pub fn bus_address(&self) -> &str {
        &self.bus_address
    }

    /// The avahi-daemon process (to signal it, read its log, ...).
    pub fn daemon(&mut self) -> &mut Proc {
        &mut self.daemon
    }

    /// avahi-daemon's and dbus-daemon's output tails.
    pub fn log(&self) -> String {
        format!(
            "{}\n{}",
            self.daemon.output_tail(TAIL_LINES),
            self.bus.output_tail(TAIL_LINES)
        )
    }

    /// Adds (or replaces) a static service file and makes the daemon
    /// reload its services (SIGHUP).
    pub fn add_service_file(&self, file_name: &str, xml: &str) {
        fs::write(self.services_dir.join(file_name), xml).expect("write service file");
        self.daemon.signal(libc::SIGHUP);
    }

    /// Removes a static service file and makes the daemon reload.
    pub fn remove_service_file(&self, file_name: &str) {
        let _ = fs::remove_file(self.services_dir.join(file_name));
        self.daemon.signal(libc::SIGHUP);
    }
}

/// One resolved (`=`) line of `avahi-browse -p -r`, unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowseRecord {
    /// Interface it was seen on (`eth0`).
    pub iface: String,
    /// `IPv4` or `IPv6`.
    pub protocol: String,
    /// Instance name, unescaped (`redis@7f3a9c21`).
    pub name: String,
    /// Service type (`_amb._tcp`).
    pub service_type: String,
    /// Domain (`local`).
    pub domain: String,
    /// Target host name (`amb-1-0-h1.local`).
    pub host_name: String,
    /// Address, as printed (`10.77.0.1`).
    pub address: String,
    /// SRV port.
    pub port: u16,
    /// TXT strings, unquoted (`svc=redis`); avahi prints them in reverse
    /// order.
    pub txt: Vec<String>,
}

impl BrowseRecord {
    /// The value of TXT key `key`, if present.
    pub fn txt_value(&self, key: &str) -> Option<&str> {
        self.txt.iter().find_map(|t| {
            let (k, v) = t.split_once('=').unwrap_or((t, ""));
            (k == key).then_some(v)
        })
    }
}

/// Parses the `=` lines of `avahi-browse -p -r` output.
pub fn parse_avahi_browse(output: &str) -> Vec<BrowseRecord> {
    output
        .lines()
        .filter(|l| l.starts_with("=;"))
        .filter_map(|line| {
            let f: Vec<&str> = line.splitn(10, ';').collect();
            if f.len() < 10 {
                return None;
            }
            Some(BrowseRecord {
                iface: f[1].to_string(),
                protocol: f[2].to_string(),
                name: unescape(f[3]),
                service_type: f[4].to_string(),
                domain: f[5].to_string(),
                host_name: f[6].to_string(),
                address: f[7].to_string(),
                port: f[8].parse().ok()?,
                txt: parse_txt(f[9]),
            })
        })
        .collect()
}

/// Undoes avahi's label escaping: `\DDD` (decimal byte) and `\X`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let digits = &b[i + 1..(i + 4).min(b.len())];
            if digits.len() == 3 && digits.iter().all(u8::is_ascii_digit) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
                out.push(v as u8);
                i += 4;
            } else {
                out.push(b[i + 1]);
                i += 2;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits avahi's `"a=1" "b=2"` TXT rendering into unescaped strings.
fn parse_txt(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut raw = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => {
                    raw.push('\\');
                    if let Some(n) = chars.next() {
                        raw.push(n);
                    }
                }
                _ => raw.push(c),
            }
        }
        items.push(unescape(&raw));
    }
    items
}
