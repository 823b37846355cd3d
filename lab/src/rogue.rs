//! A rogue mDNS advertiser: a stranger on the link that announces whatever
//! `_amb._tcp` instances a test asks for, byte for byte, including what no
//! well-behaved responder would send (dots, control characters or invalid
//! UTF-8 in a label, port 0, huge TXT records, thousands of instances).
//!
//! It writes the DNS packets itself (no mDNS library would send these) and
//! multicasts them to 224.0.0.251:5353 from a socket created inside a lab
//! host, so nothing reaches a real network. As a real responder does, it
//! announces twice a second apart (RFC 6762 §8.3), answers queries for the
//! service type or one of its instances, re-announces every
//! [`REANNOUNCE_EVERY`], and sets the cache-flush bit on its unique records
//! (SRV, TXT, A/AAAA) but not on the shared PTR. It sends no goodbyes: when
//! the [`Rogue`] is dropped its records linger in caches for their TTL, as a
//! crashed host's would.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::unix::io::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::Host;

/// The mDNS group and port (RFC 6762).
const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
pub(crate) const MDNS_PORT: u16 = 5353;
/// The service type every instance is announced under.
const SERVICE_TYPE: [&[u8]; 3] = [b"_amb", b"_tcp", b"local"];
/// Packets stay below this, so they fit a 1500-byte Ethernet frame with IP
/// and UDP headers and are never fragmented. An instance too big for it
/// alone (a huge TXT) goes out in a packet of its own, fragmented.
pub const MAX_PACKET: usize = 1400;
/// TTLs a real responder uses (RFC 6762 §10): host-related records 120 s,
/// the shared PTR 75 minutes.
const TTL_UNIQUE: u32 = 120;
const TTL_SHARED: u32 = 4500;
/// Half the records' TTL: a cache never sees them expire.
pub const REANNOUNCE_EVERY: Duration = Duration::from_secs(60);
/// The second announcement of RFC 6762 §8.3.
const SECOND_ANNOUNCEMENT: Duration = Duration::from_secs(1);
/// At most one answer round per this, counted from the end of the last
/// round: a burst of queries from several browsers is one round.
const ANSWER_GAP: Duration = Duration::from_secs(1);
/// Pause after each [`BURST`] packets. 10,000 instances are ~850 packets:
/// about a second at this pace, slow enough that a receiver's socket buffer
/// (~200 KB by default, ~90 such packets) is drained between bursts.
const PACE: Duration = Duration::from_millis(10);
const BURST: usize = 8;
/// How often the thread looks at its stop flag while waiting for queries.
const POLL: Duration = Duration::from_millis(50);

/// One fake instance of `_amb._tcp.local.`.
#[derive(Clone, Debug)]
pub struct FakeInstance {
    /// Raw instance label bytes: may hold dots, control characters or
    /// invalid UTF-8. At most 63 bytes (what a DNS label can hold).
    pub label: Vec<u8>,
    /// Target host name of the SRV record, e.g. `rogue-1.local.`.
    pub host: String,
    /// SRV port; 0 is allowed.
    pub port: u16,
    /// Raw TXT strings (`svc=redis`), each at most 255 bytes.
    pub txt: Vec<Vec<u8>>,
    /// A/AAAA records of `host`, sent beside the SRV.
    pub addrs: Vec<IpAddr>,
}

impl FakeInstance {
    /// An ordinary-looking instance `label` with TXT `svc=<svc>` on
    /// `addr:port`, its host named after the label.
    pub fn service(label: &str, svc: &str, port: u16, addr: IpAddr) -> FakeInstance {
        FakeInstance {
            label: label.as_bytes().to_vec(),
            host: format!("{label}.local."),
            port,
            txt: vec![format!("svc={svc}").into_bytes()],
            addrs: vec![addr],
        }
    }

    /// `n` instances `<prefix>-<i>` of `svc` on one host `addr`, ports
    /// counting up from `first_port`: a stranger flooding the link.
    pub fn many(prefix: &str, n: usize, svc: &str, first_port: u16, addr: IpAddr) -> Vec<Self> {
        (0..n)
            .map(|i| {
                let mut f = FakeInstance::service(
                    &format!("{prefix}-{i}"),
                    svc,
                    first_port.wrapping_add(i as u16),
                    addr,
                );
                f.host = format!("{prefix}.local.");
                f
            })
            .collect()
    }
}

/// A running rogue advertiser; it stops when dropped.
pub struct Rogue {
    stop: Arc<AtomicBool>,
    /// Complete announcement rounds so far.
    rounds: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Rogue {
    /// Starts announcing `instances` from `host` (panics if the socket
    /// cannot be opened there). The first round starts at once.
    pub fn start(host: &Host, instances: Vec<FakeInstance>) -> Rogue {
        let packets = packets(&instances);
        let ours: Vec<Vec<u8>> = instances
            .iter()
            .map(|i| i.label.to_ascii_lowercase())
            .collect();
        let ip = host.ip;
        let socket = host
            .enter(|| mdns_socket(ip))
            .unwrap_or_else(|e| panic!("{}: cannot open the rogue's mDNS socket: {e}", host.name));
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), rounds.clone());
        let thread = thread::Builder::new()
            .name(format!("rogue-{}", host.name))
            .spawn(move || run(&socket, &packets, &ours, &flag, &count))
            .expect("spawn the rogue thread");
        Rogue {
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    /// Complete rounds of announcements sent so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket on port 5353 in the calling thread's namespace, in the mDNS
/// group on the interface holding `ip`, with the TTL of 255 that RFC 6762
/// requires. Shares the port with any responder already there.
fn mdns_socket(ip: Ipv4Addr) -> io::Result<UdpSocket> {
    // SAFETY: plain socket calls on a descriptor this function owns; it is
    // handed to `UdpSocket` (which closes it) as soon as it exists.
    let socket = unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = UdpSocket::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        socket
    };
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MDNS_PORT);
    // std cannot bind a socket it did not create; go through libc once more.
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: any.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*any.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sa` is a valid sockaddr_in for the call's duration.
    let rc = unsafe {
        libc::bind(
            std::os::unix::io::AsRawFd::as_raw_fd(&socket),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.join_multicast_v4(&MDNS_GROUP, &ip)?;
    socket.set_multicast_ttl_v4(255)?;
    socket.set_multicast_loop_v4(false)?;
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

/// Announces, answers and re-announces until `stop`.
fn run(
    socket: &UdpSocket,
    packets: &[Vec<u8>],
    ours: &[Vec<u8>],
    stop: &AtomicBool,
    rounds: &AtomicU64,
) {
    let group = SocketAddr::from((MDNS_GROUP, MDNS_PORT));
    let start = Instant::now();
    let mut next = Some(start);
    let mut second = true;
    let mut last_end = start;
    let mut buf = [0u8; 9000];
    while !stop.load(Ordering::Relaxed) {
        if next.is_some_and(|t| Instant::now() >= t) {
            for (i, p) in packets.iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                // A send error (a buffer full for a moment) loses one packet
                // of one round: the next round repeats it.
                let _ = socket.send_to(p, group);
                if (i + 1) % BURST == 0 {
                    thread::sleep(PACE);
                }
            }
            rounds.fetch_add(1, Ordering::Relaxed);
            last_end = Instant::now();
            let gap = if std::mem::take(&mut second) {
                SECOND_ANNOUNCEMENT
            } else {
                REANNOUNCE_EVERY
            };
            next = Some(last_end + gap);
        }
        if let Ok(n) = socket.recv(&mut buf) {
            if asks_for_us(&buf[..n], ours) {
                let soonest = last_end + ANSWER_GAP;
                next = Some(next.map_or(soonest, |t| t.min(soonest)));
            }
        }
    }
}

/// Whether `packet` is a query for the service type or for one of our
/// instance labels (lowercase).
fn asks_for_us(packet: &[u8], ours: &[Vec<u8>]) -> bool {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return false; // not a query
    }
    let questions = u16::from_be_bytes([packet[4], packet[5]]);
    let mut at = 12;
    for _ in 0..questions {
        let Some((labels, end)) = read_name(packet, at) else {
            return false;
        };
        at = end + 4; // type and class
        let n = labels.len();
        let service = n >= 3
            && labels[n - 3..]
                .iter()
                .zip(SERVICE_TYPE)
                .all(|(l, s)| l.eq_ignore_ascii_case(s));
        if service && (n == 3 || (n == 4 && ours.contains(&labels[0].to_ascii_lowercase()))) {
            return true;
        }
    }
    false
}

/// The labels of the name at `at`, and where the name ends in `packet`.
fn read_name(packet: &[u8], mut at: usize) -> Option<(Vec<Vec<u8>>, usize)> {
    let mut labels = Vec::new();
    let mut end = None;
    // Each pointer must go backwards, so a loop of pointers ends.
    let mut limit = at;
    loop {
        let len = *packet.get(at)? as usize;
        match len {
            0 => return Some((labels, end.unwrap_or(at + 1))),
            l if l & 0xc0 == 0xc0 => {
                let to = (l & 0x3f) << 8 | *packet.get(at + 1)? as usize;
                end.get_or_insert(at + 2);
                if to >= limit {
                    return None;
                }
                limit = to;
                at = to;
            }
            l if l <= 63 => {
                labels.push(packet.get(at + 1..at + 1 + l)?.to_vec());
                at += 1 + l;
            }
            _ => return None,
        }
    }
}

/// Every instance's records, packed into as few packets as fit
/// `MAX_PACKET` bytes. The records of one instance (PTR, SRV, TXT and the
/// addresses of its host) always share a packet, so a browser resolves it
/// from that packet alone.
pub fn packets(instances: &[FakeInstance]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut packet = Packet::new();
    for inst in instances {
        let before = packet.clone();
        packet.add_instance(inst);
        if packet.buf.len() > MAX_PACKET && before.answers > 0 {
            out.push(before.finish());
            packet = Packet::new();
            packet.add_instance(inst);
        }
    }
    if packet.answers > 0 {
        out.push(packet.finish());
    }
    out
}

/// DNS record types and the cache-flush bit.
const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
const CACHE_FLUSH: u16 = 0x8000;

/// One response packet being built, with its name-compression table.
#[derive(Clone)]
struct Packet {
    buf: Vec<u8>,
    answers: u16,
    /// Offsets of the names (as label sequences) written so far.
    names: HashMap<Vec<Vec<u8>>, u16>,
}

impl Packet {
    fn new() -> Packet {
        // id 0, flags: response, authoritative (RFC 6762 §18).
        let buf = vec![0, 0, 0x84, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        Packet {
            buf,
            answers: 0,
            names: HashMap::new(),
        }
    }

    fn add_instance(&mut self, inst: &FakeInstance) {
        assert!(
            inst.label.len() <= 63,
            "a DNS label holds at most 63 bytes, not {}",
            inst.label.len()
        );
        let service: Vec<Vec<u8>> = SERVICE_TYPE.iter().map(|l| l.to_vec()).collect();
        let mut instance = vec![inst.label.clone()];
        instance.extend(service.iter().cloned());
        let host: Vec<Vec<u8>> = inst
            .host
            .split('.')
            .filter(|l| !l.is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect();

        self.record(&service, TYPE_PTR, CLASS_IN, TTL_SHARED, |p| {
            p.name(&instance)
        });
        self.record(
            &instance,
            TYPE_SRV,
            CLASS_IN | CACHE_FLUSH,
            TTL_UNIQUE,
            |p| {
                p.buf.extend_from_slice(&[0, 0, 0, 0]); // priority, weight
                p.buf.extend_from_slice(&inst.port.to_be_bytes());
                p.name(&host);
            },
        );
        self.record(
            &instance,
            TYPE_TXT,
            CLASS_IN | CACHE_FLUSH,
            TTL_UNIQUE,
            |p| {
                if inst.txt.is_empty() {
                    p.buf.push(0); // RFC 6763 §6.1: an empty TXT is one empty string
                }
                for s in &inst.txt {
                    assert!(s.len() <= 255, "a TXT string holds at most 255 bytes");
                    p.buf.push(s.len() as u8);
                    p.buf.extend_from_slice(s);
                }
            },
        );
        for addr in &inst.addrs {
            let (ty, bytes) = match addr {
                IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
                IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
            };
            self.record(&host, ty, CLASS_IN | CACHE_FLUSH, TTL_UNIQUE, |p| {
                p.buf.extend_from_slice(&bytes)
            });
        }
    }

    /// Appends one resource record whose data `rdata` writes.
    fn record(
        &mut self,
        name: &[Vec<u8>],
        ty: u16,
        class: u16,
        ttl: u32,
        rdata: impl FnOnce(&mut Packet),
    ) {
        self.name(name);
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf.extend_from_slice(&class.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        rdata(self);
        let len = (self.buf.len() - len_at - 2) as u16;
        self.buf[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
        self.answers += 1;
    }

    /// Writes `labels` as a name, pointing at an earlier copy of its
    /// longest known suffix (RFC 1035 §4.1.4).
    fn name(&mut self, labels: &[Vec<u8>]) {
        for i in 0..labels.len() {
            if let Some(&at) = self.names.get(&labels[i..]) {
                self.buf.extend_from_slice(&(0xc000 | at).to_be_bytes());
                return;
            }
            // Pointers hold 14 bits: later copies of a name this far in are
            // written out in full.
            if self.buf.len() < 0x3fff {
                self.names
                    .insert(labels[i..].to_vec(), self.buf.len() as u16);
            }
            self.buf.push(labels[i].len() as u8);
            self.buf.extend_from_slice(&labels[i]);
        }
        self.buf.push(0);
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf[6..8].copy_from_slice(&self.answers.to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_split_over_packets_that_fit() {
        let many = FakeInstance::many("f", 10_000, "redis", 20_000, [10, 77, 0, 9].into());
        let packets = packets(&many);
        assert!(packets.iter().all(|p| p.len() <= MAX_PACKET));
        let answers: usize = packets
            .iter()
            .map(|p| u16::from_be_bytes([p[6], p[7]]) as usize)
            .sum();
        assert_eq!(answers, 10_000 * 4, "PTR, SRV, TXT and A of each");
        assert!(packets.len() < 1000, "{} packets", packets.len());
    }

    #[test]
    fn a_huge_instance_gets_a_packet_of_its_own() {
        let mut huge = FakeInstance::service("h", "redis", 1, [10, 77, 0, 9].into());
        huge.txt = vec![vec![b'x'; 255]; 8];
        let small = FakeInstance::service("s", "redis", 1, [10, 77, 0, 9].into());
        let packets = packets(&[small.clone(), huge, small]);
        assert_eq!(packets.len(), 3);
        assert!(packets[1].len() > MAX_PACKET);
    }

    #[test]
    fn names_are_compressed_and_read_back() {
        let f = FakeInstance::service("a.b\x01", "redis", 7, [10, 77, 0, 9].into());
        let p = packets(&[f])[0].clone();
        // The PTR's owner name is the first name, at offset 12.
        let (labels, _) = read_name(&p, 12).unwrap();
        assert_eq!(
            labels,
            [b"_amb".to_vec(), b"_tcp".to_vec(), b"local".to_vec()]
        );
        // The SRV's owner is the instance, ending in a pointer to it.
        let at = p.windows(5).position(|w| w == b"\x04a.b\x01").unwrap();
        let (labels, end) = read_name(&p, at).unwrap();
        assert_eq!(labels[0], b"a.b\x01");
        assert_eq!(labels.len(), 4);
        assert_eq!(end, at + 1 + 4 + 2, "label, then a pointer");
    }

    #[test]
    fn queries_for_the_type_or_our_instances_are_answered() {
        let query = |labels: &[&[u8]], response: bool| {
            let mut p = vec![
                0,
                0,
                if response { 0x84 } else { 0 },
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
            ];
            for l in labels {
                p.push(l.len() as u8);
                p.extend_from_slice(l);
            }
            p.extend_from_slice(&[0, 0, 12, 0, 1]);
            p
        };
        let ours = [b"fake-1".to_vec()];
        let ty: [&[u8]; 3] = [b"_amb", b"_tcp", b"local"];
        assert!(asks_for_us(&query(&ty, false), &ours));
        assert!(!asks_for_us(&query(&ty, true), &ours), "a response");
        let inst: [&[u8]; 4] = [b"FAKE-1", b"_amb", b"_tcp", b"local"];
        assert!(asks_for_us(&query(&inst, false), &ours));
        let other: [&[u8]; 4] = [b"real", b"_amb", b"_tcp", b"local"];
        assert!(!asks_for_us(&query(&other, false), &ours));
        assert!(!asks_for_us(&[0xc0, 0x0c, 0], &ours), "garbage");
        // A pointer loop ends.
        assert!(read_name(&[0xc0, 0x00], 0).is_none());
    }
}
