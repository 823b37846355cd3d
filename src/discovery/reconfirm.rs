//! Before a sweep removes a backend, its own responder is asked whether it
//! still holds the instance.
//!
//! A sweep (see `replay`) removes the discovered backends that a restarted
//! browse's replay of mdns-sd's cache lacks: their removal events were
//! lost. But the replay also leaves out records about to expire, and a
//! goodbye said for a live instance (forged, or a false verdict) in the
//! second before the restart leaves its records so; the answers to the
//! new browse's first query then renew them without an event, and a
//! stranger that says the goodbye again every few hundred milliseconds
//! keeps them out of every replay. Swept then, a live backend stays out
//! of the table until a later restart's replay has it, which may never
//! come: mdns-sd reports an instance only when its records are new or
//! changed, and its owner's refreshes change nothing.
//!
//! So the sweep asks first: an RFC 6762 §6.7 legacy-unicast question for
//! the instance's SRV record, from an ephemeral port straight to port 5353
//! at the backend's address, which the owner's responder answers by
//! unicast, touching no cache on the link. An answer keeps the backend; a
//! refusal (nothing listens there) or [`ASKS`] questions unanswered remove
//! it. Limits: a responder that is not at the backend's address, or whose
//! host has another daemon on port 5353 that takes unicast questions (see
//! `witness`), never answers, and the backend is swept as before.

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::{AbortHandle, JoinSet};
use tracing::debug;

use super::wire::{question, MDNS_PORT, TYPE_SRV};
use super::witness::unspecified;
use crate::backends::table::Target;

/// How long one question waits for its answer: a responder answers a
/// unicast question at once (as the witness's probes, whose timeout this
/// is).
const ASK_TIMEOUT: Duration = Duration::from_millis(700);
/// Questions before an instance counts as gone: a lost packet costs a
/// retry, not a live backend.
pub const ASKS: u32 = 3;
/// Questions in flight at once; the rest wait their turn. A sweep after a
/// flood may lack hundreds of the flood's dead instances.
const MOST_AT_ONCE: usize = 32;
/// Largest answer read.
const MAX_PACKET: usize = 9000;

/// The instances being asked about.
#[derive(Default)]
pub struct Reconfirms {
    running: JoinSet<(String, bool)>,
    /// The running questions, by instance.
    asking: HashMap<String, AbortHandle>,
    /// Those waiting for room, with the responder to ask.
    waiting: VecDeque<(String, SocketAddr)>,
}

impl Reconfirms {
    /// Asks the responder at `responder` whether it still holds
    /// `instance`, unless that is already being asked.
    pub fn ask(&mut self, instance: String, responder: SocketAddr) {
        if self.asking.contains_key(&instance) || self.waiting.iter().any(|(i, _)| *i == instance) {
            return;
        }
        self.waiting.push_back((instance, responder));
        self.fill();
    }

    /// `instance` resolved again meanwhile: it lives, whatever its
    /// responder says.
    pub fn resolved(&mut self, instance: &str) {
        if let Some(task) = self.asking.remove(instance) {
            task.abort();
        }
        self.waiting.retain(|(i, _)| i != instance);
    }

    /// The next answer: an instance, and whether its responder holds it.
    /// Pending while nothing is being asked.
    pub async fn next(&mut self) -> (String, bool) {
        loop {
            let Some(done) = self.running.join_next().await else {
                return std::future::pending().await;
            };
            self.fill();
            if let Ok((instance, held)) = done {
                // Else it resolved again while its task was ending.
                if self.asking.remove(&instance).is_some() {
                    return (instance, held);
                }
            }
        }
    }

    fn fill(&mut self) {
        while self.asking.len() < MOST_AT_ONCE {
            let Some((instance, responder)) = self.waiting.pop_front() else {
                return;
            };
            let name = instance.clone();
            let task = self.running.spawn(async move {
                let held = holds(&name, responder).await;
                (name, held)
            });
            self.asking.insert(instance, task);
        }
    }
}

/// Where the responder of a backend at `target` listens: port 5353 at its
/// first IPv4 address, else its first address.
pub fn responder(target: &Target) -> Option<SocketAddr> {
    let Target::Addrs(addrs) = target else {
        return None;
    };
    let mut at = *addrs.iter().find(|a| a.is_ipv4()).or(addrs.first())?;
    // A link-local IPv6 address keeps its interface.
    at.set_port(MDNS_PORT);
    Some(at)
}

/// Whether the responder at `responder` answers for `instance`.
async fn holds(instance: &str, responder: SocketAddr) -> bool {
    // Connected, so that a host with nothing on port 5353 says so at once
    // (ICMP port unreachable comes back as ECONNREFUSED).
    let sock = async {
        let sock = UdpSocket::bind(unspecified(responder.ip())).await?;
        sock.connect(responder).await?;
        Ok::<_, std::io::Error>(sock)
    };
    let sock = match sock.await {
        Ok(sock) => sock,
        Err(e) => {
            debug!(instance, error = %e, "cannot ask the responder; taken for gone");
            return false;
        }
    };
    for _ in 0..ASKS {
        let id = fastrand::u16(..);
        match sock.send(&question(instance, TYPE_SRV, id)).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return false,
            _ => {}
        }
        match answer(&sock, responder.ip(), id).await {
            Some(held) => return held,
            None => debug!(instance, "the responder did not answer for the instance"),
        }
    }
    false
}

/// What came to question `id` within [`ASK_TIMEOUT`]: `Some(true)` an
/// answer from `from`, `Some(false)` a refusal, `None` nothing.
async fn answer(sock: &UdpSocket, from: IpAddr, id: u16) -> Option<bool> {
    let mut buf = vec![0u8; MAX_PACKET];
    let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            Err(_) => return None,
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => return Some(false),
            // Another ICMP error (an unreachable host): no answer, but the
            // question keeps its pace.
            Ok(Err(_)) => {
                tokio::time::sleep_until(deadline).await;
                return None;
            }
            Ok(Ok((n, src))) => {
                if src.ip() == from && answers(&buf[..n], id) {
                    return Some(true);
                }
            }
        }
    }
}

/// Whether `packet` is a response to question `id` with an answer in it.
fn answers(packet: &[u8], id: u16) -> bool {
    packet.len() >= 12
        && u16::from_be_bytes([packet[0], packet[1]]) == id
        && packet[2] & 0x80 != 0
        && u16::from_be_bytes([packet[6], packet[7]]) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_responder_is_asked_at_the_backends_ipv4_address_first() {
        let v6: SocketAddr = "[fe80::1%3]:7000".parse().unwrap();
        let v4: SocketAddr = "10.0.0.2:7000".parse().unwrap();
        let both = Target::Addrs(vec![v6, v4]);
        assert_eq!(responder(&both), Some("10.0.0.2:5353".parse().unwrap()));
        // A link-local address keeps its interface.
        let only_v6 = Target::Addrs(vec![v6]);
        assert_eq!(
            responder(&only_v6),
            Some("[fe80::1%3]:5353".parse().unwrap())
        );
        assert_eq!(responder(&Target::Name("db.example".into(), 7000)), None);
    }

    #[test]
    fn only_a_response_to_the_question_with_an_answer_counts() {
        let mut p = question("redis@h1._amb._tcp.local.", TYPE_SRV, 7);
        assert!(!answers(&p, 7), "the question itself");
        p[2] |= 0x80;
        assert!(!answers(&p, 7), "a response without an answer");
        p[7] = 1;
        assert!(answers(&p, 7));
        assert!(!answers(&p, 8), "a response to another question");
    }
}
