//! The addresses a peer's records carry: any host on the link can claim
//! any address, and the consumer must not be sent astray by them.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use mesh_amb::discovery::addr::{choose, LocalAddr, PeerAddr};
use proptest::prelude::*;
use proptest::sample::select;

/// Addresses of this test's host: loopback, as every host has, and a few
/// interfaces.
fn locals() -> Vec<LocalAddr> {
    [
        ("127.0.0.1", 8),
        ("::1", 128),
        ("10.77.0.2", 24),
        ("10.0.2.15", 24),
        ("fe80::2", 64),
        ("fd00::2", 64),
    ]
    .into_iter()
    .map(|(ip, prefix_len)| LocalAddr {
        ip: ip.parse().unwrap(),
        prefix_len,
    })
    .collect()
}

/// An address as a peer may advertise it: one of ours, ours written as an
/// IPv4-mapped IPv6 address, one of the special kinds, or any.
fn ip() -> impl Strategy<Value = IpAddr> {
    let special: Vec<IpAddr> = [
        "127.0.0.1",
        "127.3.2.1",
        "::1",
        "0.0.0.0",
        "::",
        "224.0.0.251",
        "ff02::fb",
        "255.255.255.255",
        "10.77.0.1",
        "10.77.0.2",
        "10.0.2.15",
        "192.168.9.9",
        "fe80::1",
        "fe80::2",
        "fd00::1",
        "2001:db8::1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let one = prop_oneof![select(special), any::<IpAddr>()];
    prop_oneof![
        3 => one.clone(),
        1 => one.prop_map(|ip| match ip {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        }),
    ]
}

fn peer() -> impl Strategy<Value = Vec<PeerAddr>> {
    let addr =
        (ip(), prop_oneof![Just(0u32), 1..4u32]).prop_map(|(ip, scope)| PeerAddr { ip, scope });
    prop::collection::vec(addr, 0..6)
}

/// What the address is, whichever way it is written: `::ffff:127.0.0.1`
/// reaches 127.0.0.1.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn is_link_local_v6(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn never_an_address_that_leads_astray(peer in peer(), port in 1..=u16::MAX) {
        let local = locals();
        let ours = |ip: IpAddr| local.iter().any(|l| l.ip == canonical(ip));
        let got = choose(&peer, port, &local);
        // A peer with an address that is neither loopback nor ours lives in
        // another network stack.
        let foreign = peer
            .iter()
            .any(|p| !canonical(p.ip).is_loopback() && !ours(p.ip));
        let mut seen = HashSet::new();
        for a in &got {
            let ip = canonical(a.ip());
            prop_assert_eq!(a.port(), port);
            prop_assert!(seen.insert(*a), "{a} twice in {got:?}");
            prop_assert!(!ip.is_unspecified() && !ip.is_multicast(), "{a} from {peer:?}");
            if foreign {
                prop_assert!(!ip.is_loopback(), "loopback {a} for a foreign peer {peer:?}");
                prop_assert!(!ours(ip), "our own {a} for a foreign peer {peer:?}");
            }
            if let SocketAddr::V6(v6) = a {
                if is_link_local_v6(v6.ip()) {
                    prop_assert!(v6.scope_id() != 0, "{a} has no scope");
                }
            }
            // Only what the peer advertised.
            prop_assert!(
                peer.iter().any(|p| canonical(p.ip) == ip),
                "{a} was not advertised: {peer:?}"
            );
        }
    }

    /// Records arrive in any order; the choice must not depend on it, or
    /// every re-resolution would churn the table.
    #[test]
    fn the_order_of_the_records_does_not_matter(
        (peer, shuffled) in peer().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle())),
    ) {
        let local = locals();
        prop_assert_eq!(choose(&peer, 6379, &local), choose(&shuffled, 6379, &local));
    }
}
