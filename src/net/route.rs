//! Whether this host's own link towards an address is down: the address
//! is on the network of an interface of ours that is not running (taken
//! down, or without carrier), or the route to it goes out through one.
//!
//! Without a working link (a cable pulled, Wi-Fi dropped, `ifdown`, a
//! network service restarted) a dial fails for a reason of ours, not the
//! backend's: at once (`ENETUNREACH` once the interface is down,
//! `EADDRNOTAVAIL` for a link-local address whose interface lost it), or
//! at the connect timeout (a link without carrier keeps its routes and
//! drops the SYNs). And mdns-sd, which leaves an interface that is not
//! running, forgets every instance it learnt over it, though the peers
//! are still there. Both ask here before blaming the backend or the peer.
//!
//! Only such evidence counts: an address this host never had a route to
//! (a stranger's, a VM's NAT address, a global IPv6 address without an
//! IPv6 default route) is the backend's problem, as before. Nor is a link
//! lost behind something that stays running seen (a bridge whose other
//! ports are up, a default route through another interface): those dials
//! are blamed on the backend, as before.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use if_addrs::{IfAddr, Interface};

/// How long a reading of the interfaces answers for: held clients dial
/// again once a second each while the link is down, and a mass removal
/// asks about every instance, so one reading serves a burst of them.
const FRESH_FOR: Duration = Duration::from_millis(250);

/// The last reading of the interfaces, and when it was taken.
static READ: Mutex<Option<(Instant, Vec<Interface>)>> = Mutex::new(None);

/// How long after this host's link towards an address was last found down
/// a dial there that fails is still this host's doing
/// ([`no_link_lately_towards_any`]): a dial begun while the link was down
/// (a held client dials again once a second) can fail once it is back,
/// when the neighbour resolution it started gives up (three probes a
/// second apart): `No route to host` 60 ms after the link's return, seen
/// in the test suite, ejected the backend.
const SETTLES_WITHIN: Duration = Duration::from_secs(5);
/// Most addresses remembered as found unlinked: a host's backends.
const SEEN_DOWN_MOST: usize = 1024;

/// When this host's link towards each address was last found down.
static SEEN_DOWN: Mutex<Option<HashMap<IpAddr, Instant>>> = Mutex::new(None);

/// Whether this host's link towards every one of `addrs` is down (and
/// there is at least one). Anything this cannot tell (out of descriptors,
/// interfaces unreadable) counts as a link.
pub fn no_link_towards_any(addrs: &[SocketAddr]) -> bool {
    if addrs.is_empty() {
        return false;
    }
    let Some(interfaces) = interfaces() else {
        return false;
    };
    let down = addrs.iter().all(|a| unlinked(*a, &interfaces));
    if down {
        let now = Instant::now();
        let mut seen = SEEN_DOWN.lock().unwrap_or_else(|e| e.into_inner());
        let seen = seen.get_or_insert_with(HashMap::new);
        if seen.len() + addrs.len() > SEEN_DOWN_MOST {
            seen.retain(|_, at| now.duration_since(*at) < SETTLES_WITHIN);
        }
        for a in addrs {
            if seen.len() < SEEN_DOWN_MOST || seen.contains_key(&a.ip()) {
                seen.insert(a.ip(), now);
            }
        }
    }
    down
}

/// Whether this host's link towards every one of `addrs` is down, or was
/// found down less than `SETTLES_WITHIN` ago: what a failed dial asks.
pub fn no_link_lately_towards_any(addrs: &[SocketAddr]) -> bool {
    // (Just after boot, nothing can be that old.)
    let since = Instant::now().checked_sub(SETTLES_WITHIN);
    no_link_towards_any(addrs) || since.is_some_and(|s| found_down_since(addrs, s))
}

/// Whether the link towards every one of `addrs` (at least one) was found
/// down at `since` or later.
fn found_down_since(addrs: &[SocketAddr], since: Instant) -> bool {
    let seen = SEEN_DOWN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(seen) = seen.as_ref() else {
        return false;
    };
    !addrs.is_empty()
        && addrs
            .iter()
            .all(|a| seen.get(&a.ip()).is_some_and(|at| *at >= since))
}

/// Whether this host's link towards `addr` is down (see
/// [`no_link_towards_any`]).
pub fn no_link_towards(addr: SocketAddr) -> bool {
    no_link_towards_any(&[addr])
}

/// The interfaces, read at most [`FRESH_FOR`] ago; `None` if they cannot
/// be read. Read here, not through `discovery::ifaces`, whose last list
/// read (kept when a read fails) may predate the link's loss.
fn interfaces() -> Option<Vec<Interface>> {
    let mut read = READ.lock().unwrap_or_else(|e| e.into_inner());
    match &*read {
        Some((at, list)) if at.elapsed() < FRESH_FOR => Some(list.clone()),
        _ => {
            let list = if_addrs::get_if_addrs().ok()?;
            *read = Some((Instant::now(), list.clone()));
            Some(list)
        }
    }
}

fn unlinked(addr: SocketAddr, interfaces: &[Interface]) -> bool {
    if addr.ip().is_loopback() {
        return false;
    }
    let running = |i: &&Interface| i.is_oper_up();
    // A link-local address names its interface: down when that interface
    // is not running or has lost its addresses (taken down, IPv6 goes).
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unicast_link_local() && v6.scope_id() != 0 {
            return !interfaces
                .iter()
                .filter(running)
                .any(|i| i.index == Some(v6.scope_id()));
        }
    }
    let on = |i: &&Interface| holds(i, addr.ip());
    match source_towards(addr) {
        // The route goes out through the interface of the source address
        // (a link without carrier keeps its routes, marked `linkdown`).
        Ok(source) => {
            let mut under = interfaces.iter().filter(|i| i.ip() == source).peekable();
            under.peek().is_some() && under.all(|i| !i.is_oper_up())
        }
        // No route (taken down, the routes went with it): down only if
        // the address is on the network of an interface of ours that is
        // not running, and of none that is.
        Err(_) => {
            interfaces.iter().filter(on).any(|i| !i.is_oper_up())
                && !interfaces.iter().filter(on).any(|i| i.is_oper_up())
        }
    }
}

/// The source address the kernel picks towards `addr` (a connected UDP
/// socket asks its route lookup and sends nothing); an error when it has
/// no route, or no source address, there.
pub fn source_towards(addr: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(addr)?;
    Ok(socket.local_addr()?.ip())
}

/// Whether `ip` is on the network of `interface`'s address.
fn holds(interface: &Interface, ip: IpAddr) -> bool {
    match &interface.addr {
        IfAddr::V4(a) => on_network(ip, a.ip.into(), a.prefixlen),
        IfAddr::V6(a) => on_network(ip, a.ip.into(), a.prefixlen),
    }
}

/// Whether `ip` is on the network `net`/`prefix_len` (never on a /0,
/// which says nothing, nor across families).
pub fn on_network(ip: IpAddr, net: IpAddr, prefix_len: u8) -> bool {
    let (ip, net, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    let prefix = u32::from(prefix_len).min(bits);
    prefix != 0 && ip >> (bits - prefix) == net >> (bits - prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_an_empty_list_are_never_said_unlinked() {
        assert!(!no_link_towards("127.0.0.1:9".parse().unwrap()));
        assert!(!no_link_towards("[::1]:9".parse().unwrap()));
        assert!(!no_link_towards_any(&[]));
    }

    #[test]
    fn a_link_found_down_counts_for_a_while_for_its_addresses_only() {
        let before = Instant::now();
        let (down, other): (SocketAddr, SocketAddr) = (
            "192.0.2.7:9".parse().unwrap(),
            "192.0.2.8:9".parse().unwrap(),
        );
        SEEN_DOWN
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(down.ip(), Instant::now());
        assert!(found_down_since(&[down], before));
        assert!(!found_down_since(&[down, other], before));
        assert!(!found_down_since(&[other], before));
        assert!(!found_down_since(&[], before));
        assert!(!found_down_since(
            &[down],
            Instant::now() + Duration::from_secs(1)
        ));
    }

    #[test]
    fn an_address_is_held_by_the_network_of_an_interface() {
        let iface = |addr: IfAddr| Interface {
            name: "eth0".into(),
            addr,
            index: Some(2),
            oper_status: if_addrs::IfOperStatus::Up,
            is_p2p: false,
        };
        let v4 = iface(IfAddr::V4(if_addrs::Ifv4Addr {
            ip: "10.9.0.3".parse().unwrap(),
            netmask: "255.255.255.0".parse().unwrap(),
            prefixlen: 24,
            broadcast: None,
        }));
        assert!(holds(&v4, "10.9.0.200".parse().unwrap()));
        assert!(!holds(&v4, "10.9.1.1".parse().unwrap()));
        assert!(!holds(&v4, "fe80::1".parse().unwrap()));
    }
}
