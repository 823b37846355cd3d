//! Whether this host has a working link towards an address: a route to
//! it, through an interface that is up with its carrier.
//!
//! Without one (a cable pulled, Wi-Fi dropped, `ifdown`, a network
//! service restarted) a dial fails for a reason of ours, not the
//! backend's: at once (`ENETUNREACH` once the interface is down,
//! `EADDRNOTAVAIL` for a link-local address whose interface lost it), or
//! at the connect timeout (a link without carrier keeps its routes and
//! drops the SYNs). And mdns-sd, which leaves an interface that is not
//! running, forgets every instance it learnt over it, though the peers
//! are still there. Both ask here before blaming the backend or the peer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Whether this host has no working link towards any of `addrs` (and
/// there is at least one): no route, or only through interfaces that are
/// down or without carrier. Anything this cannot tell (out of
/// descriptors, interfaces unreadable) counts as a link.
pub fn no_link_towards_any(addrs: &[SocketAddr]) -> bool {
    !addrs.is_empty() && addrs.iter().all(|a| no_link_towards(*a))
}

/// Whether this host has no working link towards `addr` (see
/// [`no_link_towards_any`]). A connected UDP socket asks the kernel's
/// route lookup and sends nothing.
pub fn no_link_towards(addr: SocketAddr) -> bool {
    if addr.ip().is_loopback() {
        return false;
    }
    let any: IpAddr = match addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let Ok(socket) = UdpSocket::bind((any, 0)) else {
        return false;
    };
    if let Err(e) = socket.connect(addr) {
        // No route, no source address on the link (a link-local address
        // whose interface is down), no such interface: no link. Anything
        // else says nothing of the link.
        return matches!(
            e.raw_os_error(),
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EADDRNOTAVAIL | libc::ENODEV)
        );
    }
    let Ok(source) = socket.local_addr() else {
        return false;
    };
    // The route is there; a link without carrier keeps it (the kernel
    // only marks it `linkdown`), so the interface under the source
    // address decides. Read now, not through `discovery::ifaces`: the
    // last list read when this one cannot be (out of descriptors) may
    // predate the link's loss, and an unread list says nothing.
    let Ok(interfaces) = if_addrs::get_if_addrs() else {
        return false;
    };
    let mut under = interfaces
        .iter()
        .filter(|i| i.ip() == source.ip())
        .peekable();
    under.peek().is_some() && under.all(|i| !i.is_oper_up())
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
}
