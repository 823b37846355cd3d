//! Which of a peer's advertised addresses to dial, and in what order.
//!
//! A peer advertises every address of the interfaces it announces on, and
//! mdns-sd adds what it saw on the wire (loopback for a peer in the same
//! network stack, link-local IPv6 with the interface it arrived on). Dialing
//! the wrong one costs a connect timeout, so the order is deliberate:
//!
//! 1. a peer in our own network stack (every address it advertises is one
//!    of ours, or it advertises only loopback): loopback first;
//! 2. addresses on one of our subnets: one hop, no router;
//! 3. routed addresses (IPv4, then global IPv6): a reflector across segments;
//! 4. IPv6 link-local, only with the scope id of the interface it came on.
//!
//! A peer in another stack loses its loopback addresses and any address
//! that is also one of ours: dialing those would reach us, not it. That is
//! the Vagrant trap, where every VM's NAT adapter is 10.0.2.15: a peer that
//! wrongly advertises it is still reached on its other addresses. Link-local
//! IPv6 addresses without a scope are dropped as undialable, and an
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is judged and dialed as the
//! IPv4 address it reaches.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// One address of one of our interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddr {
    pub ip: IpAddr,
    pub prefix_len: u8,
}

/// Our own interface addresses (as last read, when they cannot be read).
pub fn local_addrs() -> Vec<LocalAddr> {
    super::ifaces::current()
        .into_iter()
        .map(|i| match i.addr {
            if_addrs::IfAddr::V4(a) => LocalAddr {
                ip: IpAddr::V4(a.ip),
                prefix_len: a.prefixlen,
            },
            if_addrs::IfAddr::V6(a) => LocalAddr {
                ip: IpAddr::V6(a.ip),
                prefix_len: a.prefixlen,
            },
        })
        .collect()
}

/// A peer address as resolved: the IP and, for IPv6, the index of the
/// interface it is scoped to (0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub ip: IpAddr,
    pub scope: u32,
}

fn is_link_local_v6(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

fn same_subnet(a: IpAddr, b: &LocalAddr) -> bool {
    crate::net::route::on_network(a, b.ip, b.prefix_len)
}

/// The addresses to dial, best first; empty when none is usable.
pub fn choose(peer: &[PeerAddr], port: u16, local: &[LocalAddr]) -> Vec<SocketAddr> {
    // An IPv4-mapped IPv6 address (::ffff:127.0.0.1) reaches its IPv4
    // address: judge and dial it as that, or a stranger's record could
    // pass our own loopback off as its address.
    let peer: Vec<PeerAddr> = peer
        .iter()
        .map(|p| PeerAddr {
            ip: p.ip.to_canonical(),
            ..*p
        })
        .collect();
    let ours = |ip: &IpAddr| local.iter().any(|l| &l.ip == ip);
    let same_stack = peer.iter().all(|p| p.ip.is_loopback() || ours(&p.ip));
    let mut ranked: Vec<(u8, SocketAddr)> = Vec::new();
    for p in &peer {
        let rank = match p.ip {
            ip if ip.is_unspecified() || ip.is_multicast() => continue,
            // Even one of our own: connect refuses it without a scope.
            IpAddr::V6(v6) if is_link_local_v6(&v6) && p.scope == 0 => continue,
            ip if ip.is_loopback() || ours(&ip) => {
                if !same_stack {
                    continue;
                }
                u8::from(!ip.is_loopback())
            }
            IpAddr::V6(v6) if is_link_local_v6(&v6) => 5,
            ip if local
                .iter()
                .any(|l| !l.ip.is_loopback() && same_subnet(ip, l)) =>
            {
                if ip.is_ipv4() {
                    1
                } else {
                    2
                }
            }
            IpAddr::V4(_) => 3,
            IpAddr::V6(_) => 4,
        };
        let addr = match p.ip {
            IpAddr::V6(v6) if is_link_local_v6(&v6) => {
                SocketAddr::V6(SocketAddrV6::new(v6, port, 0, p.scope))
            }
            ip => SocketAddr::new(ip, port),
        };
        ranked.push((rank, addr));
    }
    // Sort by rank, then address, so that repeated resolutions of the same
    // set give the same target and do not churn the table.
    ranked.sort();
    ranked.dedup();
    ranked.into_iter().map(|(_, a)| a).collect()
}

/// Whether dialing `addr` reaches one of `listeners` (this node's own
/// consume listeners, as bound): its address, or, for a listener on every
/// address (`0.0.0.0`, `::`), any address of ours or loopback on its port.
/// A `::` listener is taken to hold IPv4 too (`net.ipv6.bindv6only` is 0
/// by default): no provider can share the port with it anyway.
pub fn is_listener(addr: SocketAddr, listeners: &[SocketAddr], local: &[LocalAddr]) -> bool {
    let ip = addr.ip().to_canonical();
    let ours = ip.is_loopback() || local.iter().any(|l| l.ip == ip);
    listeners.iter().any(|l| {
        let bound = l.ip().to_canonical();
        let every = match bound {
            IpAddr::V4(v4) => v4.is_unspecified() && ip.is_ipv4(),
            IpAddr::V6(v6) => v6.is_unspecified(),
        };
        l.port() == addr.port() && (bound == ip || (every && ours))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(specs: &[(&str, u8)]) -> Vec<LocalAddr> {
        specs
            .iter()
            .map(|(ip, p)| LocalAddr {
                ip: ip.parse().unwrap(),
                prefix_len: *p,
            })
            .collect()
    }

    fn peer(specs: &[(&str, u32)]) -> Vec<PeerAddr> {
        specs
            .iter()
            .map(|(ip, scope)| PeerAddr {
                ip: ip.parse().unwrap(),
                scope: *scope,
            })
            .collect()
    }

    /// Peer addresses with scope ids, and the dial order expected.
    type Case<'a> = (&'a [(&'a str, u32)], &'a [&'a str]);

    #[test]
    fn address_choice() {
        let me = local(&[
            ("127.0.0.1", 8),
            ("::1", 128),
            ("10.77.0.2", 24),
            ("10.0.2.15", 24),
            ("fe80::2", 64),
            ("fd00::2", 64),
        ]);
        let cases: &[Case] = &[
            // A peer on our subnet: its subnet address; its loopback is ours, not its.
            (&[("10.77.0.1", 0), ("127.0.0.1", 0)], &["10.77.0.1:6379"]),
            // Subnet IPv4, subnet IPv6, routed, then link-local with scope.
            (
                &[
                    ("fe80::1", 3),
                    ("192.168.9.9", 0),
                    ("fd00::1", 0),
                    ("10.77.0.1", 0),
                    ("2001:db8::1", 0),
                ],
                &[
                    "10.77.0.1:6379",
                    "[fd00::1]:6379",
                    "192.168.9.9:6379",
                    "[2001:db8::1]:6379",
                    "[fe80::1%3]:6379",
                ],
            ),
            // Link-local without a scope is undialable, ours too (found by
            // tests/properties.rs).
            (&[("fe80::1", 0)], &[]),
            (&[("fe80::2", 0), ("127.0.0.1", 0)], &["127.0.0.1:6379"]),
            (&[("fe80::2", 1)], &["[fe80::2%1]:6379"]),
            // Our own node: loopback first, then our address.
            (
                &[("10.77.0.2", 0), ("127.0.0.1", 0)],
                &["127.0.0.1:6379", "10.77.0.2:6379"],
            ),
            // A peer seen only on loopback is in our stack.
            (&[("127.0.0.1", 0)], &["127.0.0.1:6379"]),
            // A peer that advertises an address we also have (every Vagrant
            // VM's NAT adapter is 10.0.2.15) is reached on its other ones.
            (&[("10.0.2.15", 0), ("10.77.0.9", 0)], &["10.77.0.9:6379"]),
            (&[("0.0.0.0", 0), ("224.0.0.251", 0)], &[]),
            // An IPv4 address written as IPv6 reaches that IPv4 address: a
            // stranger's ::ffff:127.0.0.1 is our loopback (found by
            // tests/properties.rs), ::ffff:0.0.0.0 is unspecified.
            (
                &[
                    ("::ffff:127.0.0.1", 0),
                    ("::ffff:10.0.2.15", 0),
                    ("10.77.0.9", 0),
                ],
                &["10.77.0.9:6379"],
            ),
            (&[("::ffff:0.0.0.0", 0), ("::ffff:224.0.0.251", 0)], &[]),
            (&[("::ffff:10.77.0.1", 0)], &["10.77.0.1:6379"]),
        ];
        for (p, want) in cases {
            let got: Vec<String> = choose(&peer(p), 6379, &me)
                .iter()
                .map(|a| a.to_string())
                .collect();
            assert_eq!(&got, want, "{p:?}");
        }
    }

    #[test]
    fn subnets() {
        let l = |ip: &str, p| LocalAddr {
            ip: ip.parse().unwrap(),
            prefix_len: p,
        };
        assert!(same_subnet(
            "10.1.2.3".parse().unwrap(),
            &l("10.1.2.200", 24)
        ));
        assert!(!same_subnet(
            "10.1.3.3".parse().unwrap(),
            &l("10.1.2.200", 24)
        ));
        assert!(same_subnet(
            "10.1.3.3".parse().unwrap(),
            &l("10.1.2.200", 16)
        ));
        assert!(!same_subnet(
            "10.1.3.3".parse().unwrap(),
            &l("10.1.2.200", 0)
        ));
        assert!(same_subnet("fd00::9".parse().unwrap(), &l("fd00::1", 64)));
        assert!(!same_subnet("fd00::9".parse().unwrap(), &l("10.0.0.1", 8)));
    }

    #[test]
    fn what_reaches_a_listener_of_ours() {
        let local = local(&[("127.0.0.1", 8), ("10.77.0.4", 24)]);
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let cases = [
            // Listener, dialed address, whether it is that listener.
            ("127.0.0.1:6390", "127.0.0.1:6390", true),
            ("127.0.0.1:6390", "[::ffff:127.0.0.1]:6390", true),
            ("127.0.0.1:6390", "127.0.0.1:6391", false),
            ("127.0.0.1:6390", "127.9.9.9:6390", false),
            ("127.0.0.1:6390", "10.77.0.4:6390", false),
            ("0.0.0.0:6390", "127.9.9.9:6390", true),
            ("0.0.0.0:6390", "10.77.0.4:6390", true),
            ("0.0.0.0:6390", "10.77.0.5:6390", false),
            ("0.0.0.0:6390", "[::1]:6390", false),
            ("[::]:6390", "127.0.0.1:6390", true),
            ("[::]:6390", "[::1]:6390", true),
            ("[::1]:6390", "[::1]:6390", true),
            ("[::1]:6390", "127.0.0.1:6390", false),
        ];
        for (listener, dialed, want) in cases {
            let got = is_listener(at(dialed), &[at(listener)], &local);
            assert_eq!(got, want, "{listener} {dialed}");
        }
        assert!(!is_listener(at("127.0.0.1:6390"), &[], &local));
    }
}
