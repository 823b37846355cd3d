//! A provider's TLS terminator: with a cluster key (or PKI), each provided
//! service is offered to the mesh only through a port of its own that
//! speaks mutual TLS, requires a member's certificate, and forwards to the
//! local service. The plaintext local port is never advertised.
//!
//! ```text
//! consumer ─TLS─> [accept] ─> [handshake] ─> [dial local] ─> [copy]
//! ```
//!
//! A handshake that fails or stalls (a stranger, a consumer without the
//! key, a port scanner) costs one connection slot for at most
//! [`tls::HANDSHAKE_TIMEOUT`] and is logged at most once a second. The
//! terminators' slots are their own (the node gives them a connection limit
//! apart from its consume listeners'), so a flood from the LAN cannot take
//! the slots of local applications; and one source address may hold at
//! most [`MAX_HANDSHAKES_PER_PEER`] handshakes at once, so one stranger
//! cannot take them all from the other members either.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::backends::table::Target;
use crate::net::accept::{Handler, Shared};
use crate::net::copy::{self, End};
use crate::net::dial::dial;
use crate::net::loglimit::LogLimit;
use crate::net::sockopt;
use crate::security::tls::{self, Tls};
use crate::spec::ProvideSpec;

/// Failed handshakes, process-wide: a scanner must not flood the log.
static HANDSHAKE_FAILURES: LogLimit = LogLimit::new();
/// Local service refusals, process-wide (its own check withdraws it soon).
static LOCAL_FAILURES: LogLimit = LogLimit::new();

/// Handshakes one source address may have in progress at once. A member
/// under a burst of clients opens many connections, each handshake taking
/// a millisecond or two on a LAN: far below this. A stranger holding
/// connections open without a word reaches it and is refused at once.
pub const MAX_HANDSHAKES_PER_PEER: u32 = 256;

/// The terminator of one provided service.
pub struct Terminator {
    provide: ProvideSpec,
    /// Where the local service answers (see `discovery::provider::check_target`).
    local: Target,
    tls: Arc<Tls>,
    /// Handshakes in progress, by source address.
    handshaking: Mutex<HashMap<IpAddr, u32>>,
}

impl Terminator {
    pub fn new(provide: ProvideSpec, local: Target, tls: Arc<Tls>) -> Terminator {
        Terminator {
            provide,
            local,
            tls,
            handshaking: Mutex::new(HashMap::new()),
        }
    }

    /// A handshake slot for `peer`, or `None` when it holds all of its own.
    fn handshake_slot(&self, peer: IpAddr) -> Option<HandshakeSlot<'_>> {
        let mut counts = self.handshaking.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(peer).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *n += 1;
        Some(HandshakeSlot { of: self, peer })
    }

    /// A listener on every address of the host (dual-stack where IPv6
    /// exists), on `port`, or one the kernel picks (`None`): consumers learn
    /// it from the SRV record.
    pub fn bind(port: Option<u16>) -> io::Result<TcpListener> {
        let port = port.unwrap_or(0);
        let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        sockopt::bind_listener(any6).or_else(|_| sockopt::bind_listener(any4))
    }
}

impl Handler for Terminator {
    fn name(&self) -> &str {
        &self.provide.name
    }

    async fn handle(self: Arc<Self>, client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
        let settings = &shared.settings;
        if !sockopt::ACCEPTED_INHERIT_OPTIONS {
            if let Err(e) = sockopt::tune_stream(&client, settings) {
                debug!(provide = %self.provide, client = %peer, error = %e, "cannot set socket options");
            }
        }
        let Some(slot) = self.handshake_slot(peer.ip()) else {
            return refused(
                &self.provide,
                peer,
                "too many handshakes from this address at once",
            );
        };
        let handshake = timeout(tls::HANDSHAKE_TIMEOUT, self.tls.accept(client));
        let mut client = tokio::select! {
            r = handshake => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return refused(&self.provide, peer, &e.to_string()),
                Err(_) => return refused(&self.provide, peer, "handshake timed out"),
            },
            _ = shared.hard_stop.cancelled() => return,
        };
        drop(slot);
        let local = tokio::select! {
            r = dial(&self.local, settings.connect_timeout) => r,
            _ = shared.hard_stop.cancelled() => return,
        };
        let mut local = match local {
            Ok(s) => s,
            Err(e) => {
                if let Some(more) = LOCAL_FAILURES.admit() {
                    warn!(provide = %self.provide, client = %peer, error = %e, held_back = more,
                        "local service did not answer; closing the mesh connection");
                }
                return;
            }
        };
        let _ = local.set_nodelay(true);
        // Only now may the consumer forward (see `security::tls`).
        if let Err(e) = tls::ready(&mut client).await {
            debug!(provide = %self.provide, client = %peer, error = %e, "consumer left before ready");
            return;
        }
        let limits = copy::Limits {
            idle: settings.idle_timeout,
            half_close: settings.half_close_timeout,
        };
        let report = copy::copy_streams(
            &mut client,
            &mut local,
            limits,
            copy::Meters::default(),
            &shared.hard_stop,
        )
        .await;
        copy::reset_after(&report.end, client.get_ref().0, &local);
        match report.end {
            End::Failed { side, error } => debug!(provide = %self.provide, client = %peer,
                error = %error, failed = ?side, "mesh connection failed"),
            end => debug!(provide = %self.provide, client = %peer,
                bytes_in = report.from_client, bytes_out = report.from_server, end = ?end,
                "mesh connection closed"),
        }
    }
}

/// One handshake in progress, counted for its source address until dropped.
struct HandshakeSlot<'a> {
    of: &'a Terminator,
    peer: IpAddr,
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self
            .of
            .handshaking
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// A client that did not complete the handshake: logged, rate-limited.
fn refused(provide: &ProvideSpec, peer: SocketAddr, why: &str) {
    match HANDSHAKE_FAILURES.admit() {
        Some(more) => warn!(provide = %provide, client = %peer, held_back = more,
            "refused a mesh connection: {why}"),
        None => debug!(provide = %provide, client = %peer, "refused a mesh connection: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::key::{ClusterKey, KEY_LEN};

    #[test]
    fn one_address_cannot_hold_every_handshake() {
        let key = ClusterKey::from_bytes([9; KEY_LEN]);
        let tls = Tls::new(Some(&key), None, "t1").unwrap().unwrap();
        let provide: ProvideSpec = "redis:6379".parse().unwrap();
        let t = Terminator::new(provide, Target::Addrs(vec![]), tls);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let mut held: Vec<_> = (0..MAX_HANDSHAKES_PER_PEER)
            .map(|_| t.handshake_slot(a).expect("below the cap"))
            .collect();
        assert!(t.handshake_slot(a).is_none(), "over the cap");
        assert!(
            t.handshake_slot(b).is_some(),
            "another address is not held back"
        );
        held.pop();
        assert!(
            t.handshake_slot(a).is_some(),
            "a finished handshake frees its slot"
        );
        drop(held);
        assert!(
            t.handshaking.lock().unwrap().is_empty(),
            "no address left behind"
        );
    }
}
