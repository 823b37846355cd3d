//! The impaired segment of [`Lab::impaired`]: TAP devices and the
//! userspace hub between them (why, and what it does: the crate docs,
//! "Impaired links").

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::rogue::MDNS_PORT;
use crate::{ip, wait_until, Deadline, Host, Iface, Lab, LINK_UP_TIMEOUT, NET_A, NET_B};

/// How often the hub's blocked threads look at the stop flag: the bound
/// on how long dropping a [`Hub`] takes.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Largest frame a TAP device hands us: without `IFF_VNET_HDR` the kernel
/// segments and checksums everything first, so frames are at most the MTU
/// (1500) plus the Ethernet header; the rest is headroom.
const FRAME_MAX: usize = 2048;
/// `IFNAMSIZ`: the kernel's interface name buffer, NUL included.
const IFNAMSIZ: usize = 16;

/// What every link of an impaired segment does to the frames crossing it,
/// per direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    /// Probability (0..=1) that a frame is lost on one crossing of a link.
    pub loss: f64,
    /// Mean delay of one crossing of a link.
    pub delay: Duration,
    /// Half-width of the uniform spread around [`Impairment::delay`].
    pub jitter: Duration,
}

impl Impairment {
    /// A perfect link: the hub forwards at once and loses nothing.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };
}

/// Frames the hub has seen, counted per crossing of a host link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Frames read from the hosts' TAP devices.
    pub received: u64,
    /// Frames written to a host's TAP device.
    pub delivered: u64,
    /// Crossings of a host link (a delivered frame crossed two: its
    /// sender's and its receiver's).
    pub crossings: u64,
    /// Crossings that lost their frame to [`Impairment::loss`].
    pub lost: u64,
    /// Frames dropped because their sender or receiver was cut off.
    pub cut: u64,
}

/// A [`Lab`] whose segment is an impaired [`Hub`] (see the module docs).
/// Derefs to the lab; dropping it stops the hub, then tears the lab down.
#[derive(Debug)]
pub struct ImpairedLab {
    /// Declared first: it stops (closing the TAP devices) before the lab
    /// deletes the namespaces.
    hub: Hub,
    /// The hosts, their namespaces and processes.
    lab: Lab,
}

impl ImpairedLab {
    /// The hub, to change the impairment or cut a host off.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Deref for ImpairedLab {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.lab
    }
}

/// So that code holding either kind of lab can take both.
impl Borrow<Lab> for ImpairedLab {
    fn borrow(&self) -> &Lab {
        &self.lab
    }
}

impl Lab {
    /// `n` hosts `h1..hn` at `10.77.0.1..n`, as [`Lab::new`], but joined by
    /// a userspace hub that applies `impairment` to every link (see the
    /// module docs of `impair`). Panics (clearly) if it cannot be built.
    pub fn impaired(n: usize, impairment: Impairment) -> ImpairedLab {
        Self::try_impaired(n, impairment)
            .unwrap_or_else(|e| panic!("Lab::impaired({n}) failed: {e}"))
    }

    /// Fallible [`Lab::impaired`].
    pub fn try_impaired(n: usize, impairment: Impairment) -> io::Result<ImpairedLab> {
        assert!((1..255).contains(&n), "1..=254 hosts");
        let mut lab = Lab::empty(n)?;
        let mut taps = Vec::new();
        for i in 1..=n {
            let name = format!("h{i}");
            let ns = lab.add_netns(&name)?;
            ip(&format!("-n {ns} link set lo up"))?;
            let addr = Ipv4Addr::new(NET_A, NET_B, 0, i as u8);
            let dir = lab.shared.dir.join(&name);
            fs::create_dir_all(&dir)?;
            let host = Host {
                name,
                netns: ns.clone(),
                ip: addr,
                ifaces: vec![Iface {
                    name: "eth0".into(),
                    ip: addr,
                    prefix_len: 24,
                    bridge_netns: String::new(),
                }],
                dir,
                shared: lab.shared.clone(),
            };
            taps.push(host.enter(|| open_tap("eth0"))?);
            ip(&format!("-n {ns} link set eth0 multicast on up"))?;
            ip(&format!("-n {ns} addr add {addr}/24 dev eth0"))?;
            // As on a bridged host: mDNS goes out on the lab link only.
            ip(&format!("-n {ns} route add 224.0.0.0/4 dev eth0"))?;
            lab.hosts.push(host);
        }
        let deadline = Deadline::after(LINK_UP_TIMEOUT);
        for host in &lab.hosts {
            let up = wait_until(deadline, || {
                ip(&format!("-n {} -o link show dev eth0", host.netns))
                    .is_ok_and(|l| l.contains("LOWER_UP"))
            });
            if !up {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{}:eth0 not up after {LINK_UP_TIMEOUT:?}", host.name),
                ));
            }
        }
        let names = lab.hosts.iter().map(|h| h.name.clone()).collect();
        let hub = Hub::start(names, taps, impairment)?;
        Ok(ImpairedLab { hub, lab })
    }
}

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags, padded to
/// the kernel's 40 bytes.
#[repr(C)]
struct IfReq {
    /// Interface name, NUL-terminated.
    name: [u8; IFNAMSIZ],
    /// `IFF_TAP | IFF_NO_PI`.
    flags: libc::c_short,
    /// The rest of the kernel's union.
    _pad: [u8; 22],
}

/// Creates TAP device `name` in the calling thread's network namespace;
/// the device lives as long as the returned file.
fn open_tap(name: &str) -> io::Result<File> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "open /dev/net/tun: {e} (the impaired lab needs the tun driver: modprobe tun)"
                ),
            )
        })?;
    let mut req = IfReq {
        name: [0; IFNAMSIZ],
        // No packet-info header: the fd reads and writes bare frames.
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back) one ifreq through a
    // valid pointer to a struct of the kernel's layout and size.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
    }
    Ok(tun)
}

/// The userspace hub of an [`ImpairedLab`]: one reader thread per host
/// link and one thread that delivers delayed frames when they are due.
#[derive(Debug)]
pub struct Hub {
    /// State shared with the threads.
    shared: Arc<HubShared>,
    /// The readers and the deliverer, joined on drop.
    threads: Vec<JoinHandle<()>>,
}

/// What the hub's threads share.
#[derive(Debug)]
struct HubShared {
    /// Host names, by port number.
    names: Vec<String>,
    /// The TAP devices, by port number.
    taps: Vec<File>,
    /// What each link crossing does to a frame; changeable while running.
    impairment: Mutex<Impairment>,
    /// Per port: whether the host is cut off (see [`Hub::cut`]).
    cut: Vec<AtomicBool>,
    /// Per port: the UDP port the host hears nothing on, 0 for none (see
    /// [`Hub::deafen`]).
    deaf: Vec<AtomicU16>,
    /// The one mDNS response to lose (see [`Hub::lose_next_response`]).
    lose_next: Mutex<Option<LoseNext>>,
    /// Source MAC -> port, learnt from the frames, as a switch does.
    macs: Mutex<HashMap<[u8; 6], usize>>,
    /// Frames waiting for their delivery time.
    queue: Mutex<BinaryHeap<Reverse<Pending>>>,
    /// Numbers the queued frames (see [`Pending::seq`]).
    seq: AtomicU64,
    /// Wakes the deliverer when an earlier frame is queued or on stop.
    wake: Condvar,
    /// Set on drop: every thread exits.
    stop: AtomicBool,
    /// See [`HubStats`].
    received: AtomicU64,
    delivered: AtomicU64,
    crossings: AtomicU64,
    lost: AtomicU64,
    cut_frames: AtomicU64,
}

/// The packet [`Hub::lose_next_response`] is to lose.
#[derive(Debug)]
struct LoseNext {
    /// Bytes the DNS message holds.
    needle: Vec<u8>,
    /// The port whose frames are spared.
    except_port: usize,
    /// Lost already: the rule does nothing more.
    done: bool,
}

impl LoseNext {
    /// Whether `frame`, read from `port`, is the packet to lose.
    fn matches(&self, port: usize, frame: &[u8]) -> bool {
        !self.done
            && port != self.except_port
            && udp(frame).is_some_and(|(to, dns)| {
                to == MDNS_PORT
                    && dns.get(2).is_some_and(|flags| flags & 0x80 != 0)
                    && dns.windows(self.needle.len()).any(|w| w == self.needle)
            })
    }
}

/// A frame on its way to one port.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    /// When it is due (first: the heap orders by it).
    due: Instant,
    /// Arrival order, so equal due times keep it.
    seq: u64,
    /// Receiving port.
    port: usize,
    /// The frame, shared by all the ports a flood goes to.
    frame: Arc<[u8]>,
}

impl Hub {
    fn start(names: Vec<String>, taps: Vec<File>, impairment: Impairment) -> io::Result<Hub> {
        let ports = taps.len();
        let shared = Arc::new(HubShared {
            names,
            taps,
            impairment: Mutex::new(impairment),
            cut: (0..ports).map(|_| AtomicBool::new(false)).collect(),
            deaf: (0..ports).map(|_| AtomicU16::new(0)).collect(),
            lose_next: Mutex::new(None),
            macs: Mutex::new(HashMap::new()),
            queue: Mutex::new(BinaryHeap::new()),
            seq: AtomicU64::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            received: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            crossings: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            cut_frames: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for port in 0..ports {
            let s = shared.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("hub-{}", s.names[port]))
                    .spawn(move || s.read_port(port))?,
            );
        }
        let s = shared.clone();
        threads.push(
            thread::Builder::new()
                .name("hub-deliver".into())
                .spawn(move || s.deliver())?,
        );
        Ok(Hub { shared, threads })
    }

    /// Changes what every link does from now on (frames already queued
    /// keep their delivery time).
    pub fn set(&self, impairment: Impairment) {
        *lock(&self.shared.impairment) = impairment;
    }

    /// The impairment in force.
    pub fn impairment(&self) -> Impairment {
        *lock(&self.shared.impairment)
    }

    /// Cuts host `name` off (`true`) or reconnects it (`false`): while cut,
    /// every frame to or from it is dropped. Its link stays up. Panics if
    /// the hub has no such host.
    pub fn cut(&self, name: &str, cut: bool) {
        let port = self.port(name);
        self.shared.cut[port].store(cut, Ordering::SeqCst);
    }

    /// Makes host `name` hear nothing on UDP port `udp_port` (IPv4 and
    /// IPv6, unicast and multicast), or everything again (`None`): the
    /// frames are dropped on their way to it, counted as cut. Everything
    /// else it sends and receives, TCP included, goes on as before: a host
    /// whose responder is deaf while its processes run. Panics if the hub
    /// has no such host.
    pub fn deafen(&self, name: &str, udp_port: Option<u16>) {
        let port = self.port(name);
        self.shared.deaf[port].store(udp_port.unwrap_or(0), Ordering::SeqCst);
    }

    fn port(&self, name: &str) -> usize {
        self.shared
            .names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("the hub has no host {name:?}"))
    }

    /// Loses the next mDNS response (UDP to port 5353, the DNS header's
    /// QR bit set) that holds the bytes `needle` and that a host other
    /// than `except_from` sends: one packet gone, as a collision or a full
    /// queue loses one, where random loss cannot pick which. Replaces any
    /// earlier rule; [`Hub::lost_response`] tells whether the packet was
    /// lost (it is not counted in [`Hub::stats`], whose `lost` is the
    /// impairment's). Panics if the hub has no host `except_from`.
    pub fn lose_next_response(&self, needle: &[u8], except_from: &str) {
        assert!(!needle.is_empty(), "an empty needle matches every response");
        let rule = LoseNext {
            needle: needle.to_vec(),
            except_port: self.port(except_from),
            done: false,
        };
        *lock(&self.shared.lose_next) = Some(rule);
    }

    /// Whether the rule of [`Hub::lose_next_response`] has lost its packet.
    pub fn lost_response(&self) -> bool {
        lock(&self.shared.lose_next)
            .as_ref()
            .is_some_and(|r| r.done)
    }

    /// Frames counted so far.
    pub fn stats(&self) -> HubStats {
        let s = &self.shared;
        HubStats {
            received: s.received.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            crossings: s.crossings.load(Ordering::Relaxed),
            lost: s.lost.load(Ordering::Relaxed),
            cut: s.cut_frames.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Locks `m`, also after a panic elsewhere (the hub's state stays usable).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HubShared {
    /// Reads port `port`'s frames until stopped (or the device is gone)
    /// and queues each for the ports it goes to.
    fn read_port(&self, port: usize) {
        let mut tap = &self.taps[port];
        let mut buf = [0u8; FRAME_MAX];
        // Seeded per port so that the links' losses are independent.
        let mut rng = Rng::new(port as u64 + 1);
        while !self.stop.load(Ordering::Relaxed) {
            if !readable(tap, STOP_POLL) {
                continue;
            }
            let len = match tap.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The namespace (and with it the device) is gone.
                Err(_) => return,
            };
            if len < 14 {
                continue;
            }
            self.received.fetch_add(1, Ordering::Relaxed);
            let frame: Arc<[u8]> = Arc::from(&buf[..len]);
            let dst: [u8; 6] = frame[0..6].try_into().expect("6 bytes");
            let src: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
            let targets: Vec<usize> = {
                let mut macs = lock(&self.macs);
                macs.insert(src, port);
                let group = dst[0] & 1 == 1;
                match macs.get(&dst) {
                    Some(&to) if !group && to != port => vec![to],
                    Some(_) if !group => Vec::new(),
                    _ => (0..self.taps.len()).filter(|&p| p != port).collect(),
                }
            };
            let imp = *lock(&self.impairment);
            let now = Instant::now();
            if self.cut[port].load(Ordering::Relaxed) {
                self.cut_frames.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Some(rule) = lock(&self.lose_next)
                .as_mut()
                .filter(|r| r.matches(port, &frame))
            {
                rule.done = true;
                continue;
            }
            // The sender's link: one crossing for every receiver.
            self.crossings.fetch_add(1, Ordering::Relaxed);
            if rng.chance(imp.loss) {
                self.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let uplink = rng.delay(&imp);
            let mut queued = Vec::with_capacity(targets.len());
            let udp_to = udp(&frame).map(|(to, _)| to);
            for to in targets {
                let deaf = self.deaf[to].load(Ordering::Relaxed);
                if self.cut[to].load(Ordering::Relaxed) || (deaf != 0 && udp_to == Some(deaf)) {
                    self.cut_frames.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Each receiver's link: a crossing of its own.
                self.crossings.fetch_add(1, Ordering::Relaxed);
                if rng.chance(imp.loss) {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                queued.push(Pending {
                    due: now + uplink + rng.delay(&imp),
                    seq: self.seq.fetch_add(1, Ordering::Relaxed),
                    port: to,
                    frame: frame.clone(),
                });
            }
            if !queued.is_empty() {
                lock(&self.queue).extend(queued.into_iter().map(Reverse));
                self.wake.notify_one();
            }
        }
    }

    /// Writes each queued frame to its port when it is due, until stopped.
    fn deliver(&self) {
        let mut queue = lock(&self.queue);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = match queue.peek() {
                Some(Reverse(p)) if p.due <= now => {
                    let Reverse(p) = queue.pop().expect("peeked");
                    drop(queue);
                    // A full or vanished device drops the frame, as a
                    // congested link would.
                    if (&self.taps[p.port]).write(&p.frame).is_ok() {
                        self.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    queue = lock(&self.queue);
                    continue;
                }
                Some(Reverse(p)) => (p.due - now).min(STOP_POLL),
                None => STOP_POLL,
            };
            queue = self
                .wake
                .wait_timeout(queue, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The UDP destination port and payload of an Ethernet frame carrying
/// IPv4 or IPv6 (no VLAN tag, no IPv6 extension header: what the lab's
/// hosts send).
fn udp(frame: &[u8]) -> Option<(u16, &[u8])> {
    const UDP: u8 = 17;
    let (ether, ip) = (frame.get(12..14)?, frame.get(14..)?);
    let udp = match u16::from_be_bytes([ether[0], ether[1]]) {
        0x0800 if *ip.get(9)? == UDP => ip.get(usize::from(ip[0] & 0x0f) * 4..)?,
        0x86dd if *ip.get(6)? == UDP => ip.get(40..)?,
        _ => return None,
    };
    let to = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    Some((to, udp.get(8..)?))
}

/// Whether `f` has data to read within `timeout`.
fn readable(f: &File, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// xorshift64*: a per-link stream of random numbers; statistical quality
/// is all that matters here.
struct Rng(u64);

impl Rng {
    /// A stream of its own for each `seed` (never zero: xorshift's fixed
    /// point).
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// One crossing's delay: `delay` ± uniform `jitter`, never negative.
    fn delay(&mut self, imp: &Impairment) -> Duration {
        let spread = imp.jitter.as_secs_f64() * (2.0 * self.unit() - 1.0);
        Duration::from_secs_f64((imp.delay.as_secs_f64() + spread).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame carrying IPv4 and UDP to `port`, with `payload`.
    fn udp_frame(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 1, 17, 0, 0];
        ip.extend_from_slice(&[10, 77, 0, 2, 224, 0, 0, 251]);
        f.extend(ip);
        f.extend_from_slice(&5353u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_rule_picks_a_response_naming_the_needle_from_another_host() {
        let rule = |done| LoseNext {
            needle: b"web@n1".to_vec(),
            except_port: 0,
            done,
        };
        let response = udp_frame(MDNS_PORT, b"\0\0\x84\0 ... \x06web@n1\x04_amb");
        let query = udp_frame(MDNS_PORT, b"\0\0\0\0 ... \x06web@n1\x04_amb");
        let other = udp_frame(MDNS_PORT, b"\0\0\x84\0 ... \x06web@n2\x04_amb");
        let beat = udp_frame(40000, b"\0\0\x84\0 ... \x06web@n1\x04_amb");
        assert!(rule(false).matches(1, &response));
        assert!(!rule(true).matches(1, &response), "lost once already");
        assert!(!rule(false).matches(0, &response), "from the spared host");
        assert!(!rule(false).matches(1, &query), "a query");
        assert!(!rule(false).matches(1, &other), "another instance");
        assert!(!rule(false).matches(1, &beat), "not mDNS");
    }
}
