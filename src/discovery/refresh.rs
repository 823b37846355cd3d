//! The periodic refresh of our records: one packet per interface.
//!
//! mdns-sd announces a registration twice, a second apart, over IPv4 and
//! over IPv6: four packets per instance each time it is handed one. That
//! suits a new record, which RFC 6762 §8.3 will not have missed; a refresh
//! of records every cache on the link already holds only has to reach the
//! caches before they query for them (at 80 % of the 120 s TTL, see
//! [`super::mdns::REFRESH_EVERY`]), and a cache that misses it asks once,
//! by multicast, and every cache hears the answer. So the refresh is sent
//! here: one response per interface holding every record mdns-sd announces
//! for each instance of ours (PTR, SRV, TXT, address records), with its
//! TTLs and cache-flush bits, from port 5353 as responses must be (§11),
//! over IPv4 where the interface has an IPv4 address, else over IPv6. The
//! AAAA records ride in the IPv4 packet: mdns-sd caches a record by the
//! interface it came in on, not by the family that carried it. (So a node
//! whose mDNS is IPv4 alone, `--advertise-addr <its IPv4 address>`, learns
//! our IPv6 addresses too, which mdns-sd's IPv4 announcements leave out.)
//!
//! Only this timed refresh is sent here. New records, changed ones, and
//! announcements after a conflict probe (which may have renamed them:
//! mdns-sd knows the names it won) still go through mdns-sd.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mdns_sd::{IfKind, ServiceInfo};

use super::wire::{
    put_name, CACHE_FLUSH, CLASS_IN, MDNS_PORT, MDNS_V4, MDNS_V6, SERVICE_TYPE, TYPE_A, TYPE_AAAA,
    TYPE_PTR, TYPE_SRV, TYPE_TXT,
};

/// Most bytes per packet: instances beyond it go in another one.
const MAX_PACKET: usize = 1400;
/// A DNS message's header.
const HEADER: usize = 12;

/// One interface our records are announced on, as mdns-sd selects it.
#[derive(Debug, Default)]
pub(super) struct Interface {
    index: u32,
    /// Its selected addresses, with their netmasks.
    v4: Vec<(Ipv4Addr, Ipv4Addr)>,
    v6: Vec<(Ipv6Addr, Ipv6Addr)>,
}

/// The interfaces mdns-sd announces on under `kinds` (the node's
/// `--interface` and `--advertise-addr` choices, or every interface):
/// those up and not point-to-point, loopback included, as mdns-sd's own
/// selection. An address selects every address of its family on its
/// interface, as mdns-sd turns it into that interface's index.
pub(super) fn interfaces(kinds: &[IfKind]) -> Vec<Interface> {
    let all = super::ifaces::current();
    let by_addr: Vec<(Option<u32>, bool)> = kinds
        .iter()
        .filter_map(|k| match k {
            IfKind::Addr(a) => all.iter().find(|i| i.ip() == *a),
            _ => None,
        })
        .map(|i| (i.index, i.ip().is_ipv4()))
        .collect();
    let mut by_index: BTreeMap<u32, Interface> = BTreeMap::new();
    for i in all {
        let selected = by_addr.contains(&(i.index, i.ip().is_ipv4()))
            || kinds.iter().any(|k| match k {
                IfKind::All => true,
                IfKind::Name(name) => *name == i.name,
                _ => false,
            });
        let Some(index) = i
            .index
            .filter(|_| selected && i.is_oper_up() && !i.is_p2p())
        else {
            continue;
        };
        let intf = by_index.entry(index).or_insert_with(|| Interface {
            index,
            ..Interface::default()
        });
        match i.addr {
            if_addrs::IfAddr::V4(a) => intf.v4.push((a.ip, a.netmask)),
            if_addrs::IfAddr::V6(a) => intf.v6.push((a.ip, a.netmask)),
        }
    }
    by_index.into_values().collect()
}

impl Interface {
    /// Which of `addrs` mdns-sd announces on this interface: those in the
    /// subnet of one of its addresses.
    fn on_link(&self, addrs: &[IpAddr]) -> Vec<IpAddr> {
        addrs
            .iter()
            .filter(|a| match a {
                IpAddr::V4(a) => self.v4.iter().any(|(ip, mask)| {
                    u32::from(*ip) & u32::from(*mask) == u32::from(*a) & u32::from(*mask)
                }),
                IpAddr::V6(a) => self.v6.iter().any(|(ip, mask)| {
                    u128::from(*ip) & u128::from(*mask) == u128::from(*a) & u128::from(*mask)
                }),
            })
            .copied()
            .collect()
    }

    /// Multicasts `packet` from port 5353 on this interface: over IPv4
    /// where it has an IPv4 address, else over IPv6.
    fn multicast(&self, packet: &[u8]) -> io::Result<()> {
        self.multicast_over(true, packet)
    }

    /// The same over IPv4 if `v4` (and the interface has an IPv4
    /// address), else over IPv6 if it has an IPv6 address; over the
    /// family it has otherwise.
    pub(super) fn multicast_over(&self, v4: bool, packet: &[u8]) -> io::Result<()> {
        match (v4 || self.v6.is_empty(), self.v4.first()) {
            (true, Some((local, _))) => send_v4(*local, packet),
            _ => send_v6(self.index, packet),
        }
    }

    fn addrs(&self) -> Vec<IpAddr> {
        let v4 = self.v4.iter().map(|(ip, _)| IpAddr::V4(*ip));
        v4.chain(self.v6.iter().map(|(ip, _)| IpAddr::V6(*ip)))
            .collect()
    }
}

/// Sends the refresh of `instances` (all announced under one host name) on
/// every interface of `intfs`, with `advertise` as the addresses when given
/// (else each interface's own). Fails if any interface could not be sent
/// on, or none could: the caller then leaves the refresh to mdns-sd.
pub(super) fn send(
    instances: &[&ServiceInfo],
    intfs: &[Interface],
    advertise: &[IpAddr],
) -> io::Result<()> {
    let all: Vec<IpAddr> = if advertise.is_empty() {
        intfs.iter().flat_map(Interface::addrs).collect()
    } else {
        advertise.to_vec()
    };
    let mut sent = false;
    for intf in intfs {
        let addrs = intf.on_link(&all);
        if addrs.is_empty() {
            continue;
        }
        for packet in packets(instances, &addrs) {
            intf.multicast(&packet)?;
            sent = true;
        }
    }
    if sent || instances.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(
            "no interface with an address to send it on",
        ))
    }
}

/// Responses holding the records of `instances` and, in each, the address
/// records of their host for `addrs`.
fn packets(instances: &[&ServiceInfo], addrs: &[IpAddr]) -> Vec<Vec<u8>> {
    let Some(first) = instances.first() else {
        return Vec::new();
    };
    let mut host_records = Records::default();
    for addr in addrs {
        let (ty, rdata) = match addr {
            IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
            IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
        };
        let ttl = first.get_host_ttl();
        host_records.add(first.get_hostname(), ty, CACHE_FLUSH, ttl, &rdata);
    }
    let mut out = Vec::new();
    let mut batch = Records::default();
    for info in instances {
        let records = instance_records(info);
        let len = HEADER + batch.bytes.len() + records.bytes.len() + host_records.bytes.len();
        if batch.count > 0 && len > MAX_PACKET {
            out.push(batch.packet(&host_records));
            batch = Records::default();
        }
        batch.append(records);
    }
    out.push(batch.packet(&host_records));
    out
}

/// The PTR, SRV and TXT records of one instance, as mdns-sd announces them.
fn instance_records(info: &ServiceInfo) -> Records {
    let fullname = info.get_fullname();
    let mut r = Records::default();
    let mut ptr = Vec::new();
    put_name(&mut ptr, fullname);
    r.add(SERVICE_TYPE, TYPE_PTR, 0, info.get_other_ttl(), &ptr);
    let mut srv = Vec::new();
    srv.extend_from_slice(&info.get_priority().to_be_bytes());
    srv.extend_from_slice(&info.get_weight().to_be_bytes());
    srv.extend_from_slice(&info.get_port().to_be_bytes());
    put_name(&mut srv, info.get_hostname());
    r.add(fullname, TYPE_SRV, CACHE_FLUSH, info.get_host_ttl(), &srv);
    r.add(
        fullname,
        TYPE_TXT,
        CACHE_FLUSH,
        info.get_other_ttl(),
        &txt(info),
    );
    r
}

/// The TXT record data of `info`, byte for byte as mdns-sd encodes it:
/// properties in order, each `key=value` (or `key`) after its length; a
/// single empty string for none. A different encoding would replace the
/// record in every cache and look like a change of the advertisement.
fn txt(info: &ServiceInfo) -> Vec<u8> {
    let mut bytes = Vec::new();
    for p in info.get_properties().iter() {
        let mut s = p.key().as_bytes().to_vec();
        if let Some(v) = p.val() {
            s.push(b'=');
            s.extend_from_slice(v);
        }
        s.truncate(u8::MAX as usize);
        bytes.push(s.len() as u8);
        bytes.extend(s);
    }
    if bytes.is_empty() {
        bytes.push(0);
    }
    bytes
}

/// Resource records in wire form, and how many.
#[derive(Default)]
struct Records {
    bytes: Vec<u8>,
    count: u16,
}

impl Records {
    fn add(&mut self, name: &str, ty: u16, flush: u16, ttl: u32, rdata: &[u8]) {
        put_name(&mut self.bytes, name);
        self.bytes.extend_from_slice(&ty.to_be_bytes());
        self.bytes
            .extend_from_slice(&(CLASS_IN | flush).to_be_bytes());
        self.bytes.extend_from_slice(&ttl.to_be_bytes());
        self.bytes
            .extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(rdata);
        self.count += 1;
    }

    fn append(&mut self, other: Records) {
        self.bytes.extend(other.bytes);
        self.count += other.count;
    }

    /// A response (id 0, authoritative) with these records and `more` as
    /// its answers.
    fn packet(&self, more: &Records) -> Vec<u8> {
        let mut p = vec![0, 0, 0x84, 0, 0, 0];
        p.extend_from_slice(&(self.count + more.count).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(&self.bytes);
        p.extend_from_slice(&more.bytes);
        p
    }
}

/// A UDP socket sharing the daemon's port 5353 (SO_REUSEPORT, as mdns-sd's
/// own), multicasting with TTL 255.
fn mdns_socket(domain: socket2::Domain) -> io::Result<socket2::Socket> {
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    Ok(s)
}

/// Multicasts `packet` from port 5353 on the interface that has `local`.
pub(super) fn send_v4(local: Ipv4Addr, packet: &[u8]) -> io::Result<()> {
    let s = mdns_socket(socket2::Domain::IPV4)?;
    s.set_multicast_if_v4(&local)?;
    s.set_multicast_ttl_v4(255)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, MDNS_PORT)).into())?;
    s.send_to(packet, &SocketAddr::from((MDNS_V4, MDNS_PORT)).into())?;
    Ok(())
}

/// Multicasts `packet` from port 5353 on interface `index` (0: the
/// system's default for the group).
pub(super) fn send_v6(index: u32, packet: &[u8]) -> io::Result<()> {
    let s = mdns_socket(socket2::Domain::IPV6)?;
    s.set_multicast_if_v6(index)?;
    s.set_multicast_hops_v6(255)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, MDNS_PORT)).into())?;
    s.send_to(packet, &SocketAddr::from((MDNS_V6, MDNS_PORT)).into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(label: &str, txt: &[(&str, &str)]) -> ServiceInfo {
        let props: Vec<(String, String)> = txt
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServiceInfo::new(SERVICE_TYPE, label, "amb-n1.local.", "", 7000, &props[..]).unwrap()
    }

    /// The answer count of a response.
    fn answers(packet: &[u8]) -> u16 {
        u16::from_be_bytes([packet[6], packet[7]])
    }

    #[test]
    fn txt_data_is_encoded_as_mdns_sd_encodes_it() {
        let i = info("web@n1", &[("svc", "web"), ("state", ""), ("w", "10")]);
        assert_eq!(txt(&i), b"\x07svc=web\x06state=\x04w=10");
        assert_eq!(txt(&info("web@n1", &[])), [0]);
    }

    #[test]
    fn one_instance_is_one_packet_with_its_host_addresses() {
        let i = info("web@n1", &[("svc", "web")]);
        let addrs: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fe80::1".parse().unwrap()];
        let packets = packets(&[&i], &addrs);
        assert_eq!(packets.len(), 1);
        let p = &packets[0];
        assert_eq!(&p[..4], &[0, 0, 0x84, 0], "an authoritative response");
        assert_eq!(answers(p), 5, "PTR, SRV, TXT, A and AAAA");
        let has = |needle: &[u8]| p.windows(needle.len()).any(|w| w == needle);
        assert!(has(&[10, 0, 0, 1]) && has(&"fe80::1".parse::<Ipv6Addr>().unwrap().octets()));
        assert!(has(b"\x06web@n1\x04_amb\x04_tcp\x05local\x00"));
        // The SRV record: type and class with cache-flush, TTL 120; its
        // data: priority and weight 0, port 7000, the host name.
        assert!(has(&[0, 33, 0x80, 1, 0, 0, 0, 120]));
        assert!(has(b"\x00\x00\x00\x00\x1b\x58\x06amb-n1\x05local\x00"));
    }

    #[test]
    fn many_instances_are_split_into_packets_that_each_fit() {
        let big = "x".repeat(200);
        let infos: Vec<ServiceInfo> = (0..12)
            .map(|n| info(&format!("svc{n}@n1"), &[("seal", &big)]))
            .collect();
        let refs: Vec<&ServiceInfo> = infos.iter().collect();
        let addrs: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        let packets = packets(&refs, &addrs);
        assert!(packets.len() > 1);
        for p in &packets {
            assert!(p.len() <= MAX_PACKET, "{} bytes", p.len());
        }
        let records: u16 = packets.iter().map(|p| answers(p)).sum();
        let instances = records - packets.len() as u16; // one A record each
        assert_eq!(instances, 12 * 3);
    }
}
