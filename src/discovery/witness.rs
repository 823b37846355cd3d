//! Crash removal for the whole link: the witness ring.
//!
//! A provider killed without goodbye stays in every browser's cache for its
//! records' TTL (two minutes with mdns-sd, whose TTLs cannot be set from
//! outside). Polling every peer from every node would cost O(N²) packets;
//! instead the mesh-amb nodes on the link form a ring ordered by node id
//! (TXT `node=`), and each node watches its successor, the next node id
//! after its own (one that consumes nothing learns the ring by listening,
//! without a query: [`super::mdns::browse`]): O(N) probes in total, all
//! unicast. It also holds a TCP connection to it, the ring link ([`super::link`]), whose
//! close says at once that the process died, and on which the successor
//! beats: one UDP datagram a period to its watcher, so that a live node
//! costs one packet a period, and the watcher probes only when a beat is
//! late (or the link closed, or it has none).
//!
//! The probe is an RFC 6762 §6.7 legacy-unicast question (from an
//! ephemeral port, straight to the peer's responder on port 5353) for the
//! peer's host name (`amb-<node>.local.`), which mdns-sd answers by unicast
//! while the node has any service announced: nothing is multicast while the
//! peer lives. After [`MISSES_TO_DEAD`] unanswered probes in a row (retried
//! at once after a miss, so a lost packet costs one quick retry, not a
//! verdict) and, when none of them was refused, multicast confirmations
//! (see `Prober::confirm`: another daemon on the peer's port 5353, Avahi
//! say, can swallow unicast probes for good) and a byte the node's
//! process did not echo on the ring link (a responder that hears nothing
//! for a while does not make a live process dead), the
//! witness multicasts the goodbye the dead responder could
//! not send: the PTR record of each of its instances with TTL 0 (RFC 6762
//! §10.1), sent from port 5353 as responses must be (§11), and again a
//! second later (one lost packet must not leave the dead node in every
//! table for its TTL). Every browser on
//! the link, mesh-amb, `mesh-amb ls` and Avahi alike, drops the instances
//! one second later (mesh-amb's tables a second after that: see
//! `mdns::REMOVAL_GRACE`).
//!
//! A false goodbye (a probe path broken while the peer lives, or a forged
//! one) costs little: a live node that sees its own instance removed
//! announces it again at once ([`super::mdns`]), a provider only too,
//! since it listens. Third-party instances (Avahi service files, no
//! `node=`) are not in the ring and keep the TTL expiry.
//!
//! A node that just started is not probed: its responder leaves unicast
//! questions unanswered for a few seconds, so silence proves nothing for
//! [`WATCH_AFTER`]. Its watcher holds the ring link to it meanwhile, and
//! when that closes a refused probe (nothing listens on its mDNS port any
//! more) is enough: a node that crashes young leaves the tables within
//! seconds as well. Only a young node that hangs, or whose host falls
//! silent, waits for the full watch.
//!
//! A node new in the ring may not know the nodes after it yet: one that
//! only provides hears of the nodes started before it only from their
//! announcements, the next one up to 80 s away. So a node that sees a new
//! node before it announces its records again ([`Aim::introduced`]: one
//! packet per interface, twice, at most [`INTRODUCE_MOST`] times in
//! [`INTRODUCE_WINDOW`]), and
//! the new node's own watcher holds the nodes it may not know for
//! [`BLIND_FOR`] (an introduction lost or late; `MAX_WATCHED` nodes
//! watched in all, at most): through their ring links only, as a young
//! node is watched, so that a crash is seen within seconds (a host that
//! falls silent is not).
//!
//! A node restarted under the same node id at once (a supervisor's
//! restart) announces its new process before its watcher's goodbye takes
//! it out of the ring, and that process listens for its ring link on
//! another port. The ring keeps the first port heard (it is not sealed),
//! so the watcher finds the kept port refused while the node answers its
//! probes, and tells the browse, which takes the port heard last once a
//! link answers there (a stranger's port must not move the watch) and
//! counts the node as new since it was heard ([`Ring::restarted`]): the
//! new process is watched as a young node, linked at once (its link
//! answered already), and the nodes after it are held. The node after it
//! introduces itself when the port it hears for the node before it
//! changes. A successor restarted and killed again between two of its
//! watcher's probes announced a new process (another link port) since
//! its goodbye, which it undid: its goodbye is said again. Its watcher
//! probes it as soon as it hears that port, not a period later.
//!
//! The same check answers a failed connect ([`Trials::suspect`]): a
//! consumer whose dial to a mesh node failed probes that node's responder
//! (up to [`MISSES_TO_DEAD`] times) instead of trusting one unanswered
//! multicast query, and when it is dead tells the whole link with the
//! goodbye. One lost packet on a lossy link no longer removes a live
//! provider.
//!
//! A node declared dead stays on trial: it is probed for up to
//! [`FORGET_AFTER`], at first once per [`PROBE_EVERY`], then less often
//! the longer it stays dead, and it is forgotten once its host has said
//! for a minute that nothing listens on its mDNS port any more. A node
//! that answers again was cut off, not dead (a partition, a link that
//! lost every probe), and nobody else would find it soon: its link never
//! went down, so it announces again only at its next refresh (within
//! 80 s), and browsers query only as their back-off allows (up to an
//! hour). So the node that sees it return restarts its browse (the
//! query carries the known answers, so only the missing responders answer,
//! by multicast, which every browser hears; a node that only provides
//! asks this once and listens again) and announces its own
//! instances once: it cannot tell which side of the cut it was on, and if
//! it was the one cut off the others have dropped it.
//!
//! Bounded work: one ring probe in flight to the successor, whatever the
//! link says, and to each of the (at most two) nodes held for a new one:
//! a former successor keeps its full watch while held, another is probed
//! only when its ring link closed or could not be opened, once a period;
//! at most [`MAX_TRIALS`] nodes on trial, one probe per period each once
//! declared dead. A stranger's records can change which node is watched
//! (without the cluster key), and which node is before this one (an
//! introduction at most [`INTRODUCE_MOST`] times in
//! [`INTRODUCE_WINDOW`]); with fake nodes that came in one after another,
//! up to two more are held for 90 s (a link and its probes each, and a
//! stranger pointing their link ports at a real node puts up to three
//! links from each node on it, where its [`super::link`] holds 64). Not where a node is watched: at the address
//! of its oldest instance, and its goodbye names only the instances that
//! resolved where it fell silent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::addr::PeerAddr;
use super::held::{Held, Mark};
use super::link::{Event, Link};
use super::refresh;
use super::wire::{
    put_name, question, CLASS_IN, MDNS_PORT, MDNS_V4, MDNS_V6, SERVICE_TYPE, TYPE_A, TYPE_AAAA,
    TYPE_PTR,
};
use crate::net::route;

/// Time between probes of a healthy peer with no ring link up
/// ([`super::link`]). With the retries below, a crashed process (its port
/// refuses) is detected within about `PROBE_EVERY` plus a few
/// milliseconds, a silent host (powered off, cut off) within
/// `PROBE_EVERY + MISSES_TO_DEAD x PROBE_TIMEOUT` plus the multicast
/// confirmations (~10.5 s; a link it cannot connect to fails its 3 s
/// connect within them), and the browsers drop it a second or two after
/// the goodbye; each watching node sends one query and gets one answer per
/// period: at 64 nodes, 32 unicast packets a second on the whole link.
pub const PROBE_EVERY: Duration = Duration::from_secs(4);
/// The same while the link to the peer is up, in a ring of up to 30 nodes:
/// a dead process closes the link and is probed at once, and a live node
/// beats on it once a period ([`super::link`]), so that it is probed only
/// when a beat is late. The period bounds how long a silent host (powered
/// off, cut off, hung) stays: within about 40 s with the beat's margin,
/// the misses and the wait for the link's answer (`link::ANSWER_WITHIN`),
/// plus the goodbye's second or two.
pub const LINKED_PROBE_EVERY: Duration = Duration::from_secs(15);
/// Unicast packets a second that a whole ring with its links up may put
/// on the link: each node's beat once a period (a node that does not beat,
/// of an older version, costs its probe and answer, two). In rings of more
/// than 30 nodes the period grows with the ring (32 s at 64 nodes, where a
/// silent host then stays up to about 60 s), so the beats cost the link
/// the same however many nodes share it, up to [`LINKED_PROBE_MOST`].
pub const RING_PACKETS_PER_SECOND: f64 = 2.0;
/// The longest linked probe period, reached at 120 nodes: a silent host
/// stops announcing, so caches drop its records by their 120 s TTL even
/// unprobed, and strangers that flood the link with fake nodes (which
/// join the ring without a cluster key) cannot stretch the period past it.
pub const LINKED_PROBE_MOST: Duration = Duration::from_secs(60);
/// A node is probed only once it has been in the ring this long: a
/// responder that just started leaves unicast questions unanswered for a
/// few seconds (measured in the lab: probes 2 to 7 s after a node's start
/// went unanswered, and with 64 nodes starting together, start-up
/// verdicts were all false). Until then only the death of its process is
/// watched for, through its ring link and a refused probe
/// (see the module documentation).
pub const WATCH_AFTER: Duration = Duration::from_secs(30);
/// How long a node must stay a watcher's successor before the watcher
/// opens a link to a young one: while nodes start together each one's
/// successor changes several times in the first second or two, and a
/// link opened for each would cost the join a handshake apiece. A node
/// that crashes meanwhile refuses the link, and then the probe.
const YOUNG_SETTLE: Duration = Duration::from_secs(2);
/// How long a node new in the ring may not know the nodes after it: one
/// that only provides learns the ring by listening
/// ([`super::mdns::browse`]), so it hears of the nodes started before it
/// only at their next announcement (within
/// [`super::mdns::REFRESH_EVERY`]), and watches the wrong one, or none,
/// until then. Its watcher keeps the nodes after it meanwhile
/// (`watched_now`): before, a node after a new listener that crashed in
/// that time stayed in every table for its records' TTL (up to 70 s
/// measured). Ten seconds more for the announcement's way.
pub const BLIND_FOR: Duration = Duration::from_secs(super::mdns::REFRESH_EVERY.end.as_secs() + 10);
/// Most nodes watched at once: the successor, and up to two after it
/// while the ones before them are new ([`BLIND_FOR`]). Three nodes that
/// only provide, started within a minute and next to each other in the
/// ring, would leave a gap; each node held costs a ring link while it is.
const MAX_WATCHED: usize = 3;
/// Probe periods after a watcher gave up on a node's beats before it asks
/// for them again, and the most this doubles to at each failed ask. What
/// stopped them (a firewall, a beat lost twice at the start, an older
/// node upgraded in place) may be gone; each ask costs a new link and the
/// two beats it waits for, about a dozen packets, against the two of each
/// period's probe: at the cap, one ask in 32 periods, about a sixth more
/// than probing alone.
const BEATS_AGAIN_AFTER: u32 = 4;
const BEATS_AGAIN_MOST: u32 = 32;
/// Random spread of each period, as a share of it, so nodes started
/// together do not probe in step.
const PROBE_JITTER: f64 = 0.2;
/// How long a probe waits for its answer: mdns-sd answers a unicast
/// question at once; this covers a busy 2-core machine and a 50 ms jitter
/// link several times over.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// The same for a suspect, a node whose instance just failed a connect:
/// the client already waited out the connect timeout, and the dialing
/// consumer wants the verdict within a few seconds of the crash. A late
/// answer still counts in the next probe's window, so what a lossy link
/// with 50 ms jitter must fit is one round trip (~300 ms there) within the
/// whole check (five of these, 1.5 s).
pub const SUSPECT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Unanswered probes in a row before the peer counts as dead. A probe is
/// lost with ~10 % odds on a link losing 5 % of packets each way; five
/// misses in a row then happen once in 100,000 probes (a false goodbye,
/// which the live peer answers by announcing again).
pub const MISSES_TO_DEAD: u32 = 5;
/// How long a node declared dead stays on trial (probed once a period):
/// a partition or a flapping link rarely lasts longer, and a node that
/// crashed never answers under its old id (a restarted mesh-amb is a new
/// node, or announces itself if given the same id). Afterwards it is
/// found again only by the browsers' own queries.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// A node declared dead is probed once per this share of the time since
/// (within [`PROBE_EVERY`] and [`TRIAL_PROBE_MOST`]): once per 4 s for its
/// first two minutes, so that the end of a short cut is seen within
/// seconds, and a return after a long one within about 3 % of its length.
/// Each probe of a host that is gone costs the link the neighbour layer's
/// broadcasts for its address (three ARP requests), and one of a host
/// whose process crashed a probe and its ICMP error: over the hour on
/// trial about 140 probes instead of the 770-900 of a fixed period (a
/// probe that goes unanswered waits 0.7 s for its answer first).
const TRIAL_SLOWS_BY: u32 = 30;
/// The longest period between probes of a node declared dead.
const TRIAL_PROBE_MOST: Duration = Duration::from_secs(64);
/// How long the probes of a node declared dead must all be refused (by
/// an ICMP port unreachable: the host is up, and nothing listens on its
/// mDNS port) before it is forgotten: its process is gone, its responder
/// with it (a live process keeps its responder across reloads). Not at
/// the first refusal: a firewall that cuts a host off with REJECT rules
/// refuses for it too, and a cut shorter than this keeps the quick return
/// of the trial; after a longer one the node is found again at its next
/// announcement ([`super::mdns::REFRESH_EVERY`], within 80 s). While
/// refused, it is still probed once per [`PROBE_EVERY`]: about 15 probes
/// and their errors, against about 140 over the hour.
const REFUSED_FOR_TO_FORGET: Duration = Duration::from_secs(60);
/// Most nodes on trial at once: a burst of failed connects to many nodes
/// (this node's own link went down) is checked a few dozen at a time, and
/// the rest wait for their next failure. A suspect takes the place of the
/// oldest watch for a dead node's return when all are taken.
pub const MAX_TRIALS: usize = 32;
/// Longest answer read; mdns-sd's unicast answers are a few hundred bytes.
const MAX_PACKET: usize = 9000;
/// How long each multicast confirmation of a silent peer waits before the
/// next, for the ring and for a suspect. Measured at 64 hosts started
/// together: about a minute after the start, their browses' back-off
/// brought every node's query (with ~60 known answers, several packets)
/// within the same few seconds, responders missed five unicast probes and
/// two 0.7 s confirmations, and each false goodbye took a live provider
/// out of ~60 tables for a moment. Longer waits ride out such a burst; a
/// suspect's, whose dialing consumer wants its verdict soon, stay short.
/// A node whose process died is refused and needs none of them. (Waits
/// of 1, 2, 4 and 8 s were tried too: in two 64-host runs live nodes
/// still fell silent that long, in waves, and a silent host took 12 s
/// longer to leave. Those waves were later traced to the lab's kernel
/// re-resolving its hosts' neighbours (`link::ANSWER_WITHIN`); the waits
/// stay as margin for real links.)
const RING_CONFIRMS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];
const SUSPECT_CONFIRMS: [Duration; 2] = [Duration::from_millis(300), Duration::from_millis(600)];
/// The goodbye is one packet that only this node sends: it is sent again
/// after this, as RFC 6762 §8.3 has announcements sent twice. At 64 hosts
/// in the namespace lab a single goodbye was lost now and then (the
/// kernel's input queue overflowing), and the dead node stayed in every
/// other table for its TTL. Receivers remove an instance once.
///
/// Within the second that a goodbye leaves the record cached (RFC 6762
/// §10.1): a repeat that finds it gone makes mdns-sd (0.21) cache it anew
/// with a TTL of 1 s and query for it at 80 % of that, so every node
/// queried the service type with all its known answers in the same 200
/// ms (at 64 hosts about 440 packets, and the receive buffers of a third
/// of the hosts overflowed). A repeat that finds the record only renews
/// its last second. (mdns-sd repeats its own goodbyes 120 ms apart.)
const GOODBYE_AGAIN: Duration = Duration::from_millis(500);
const _: () = assert!(
    GOODBYE_AGAIN.as_millis() < 1000,
    "a goodbye leaves a record cached for 1 s"
);
/// Most instances named in one goodbye: one node's services, with room to
/// spare; more would not fit one packet anyway.
const MAX_GOODBYE_INSTANCES: usize = 32;

/// A mesh-amb node seen on the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its mDNS host name, the probe's question.
    pub host: String,
    /// Where its responder is asked; `None` while only addresses it
    /// cannot be probed at (loopback, link-local) are known.
    pub addr: Option<IpAddr>,
    /// Its instances' full names, for the goodbye.
    pub instances: Vec<String>,
    /// Its ring link port, if it advertises one.
    pub link: Option<u16>,
    /// When this node first saw it (since it last left the ring).
    pub since: tokio::time::Instant,
    /// Whether its link port was taken from a restart under its node id,
    /// once a link answered there ([`Ring::restarted`]): the ring around
    /// it did not change, so its watcher links to it at once, without
    /// `YOUNG_SETTLE`.
    pub restarted: bool,
}

impl Peer {
    /// Where its ring link is, if it advertises one and can be probed.
    pub fn link_at(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.addr?, self.link?))
    }
}

/// The ring as this node sees it: every mesh-amb node that advertises,
/// by node id.
#[derive(Debug, Default)]
pub struct Ring {
    /// This node's id: it sits in the ring whether it advertises or not.
    me: String,
    /// The other nodes, by id.
    nodes: BTreeMap<String, Peer>,
    /// The nodes that list each instance, in id order, as `nodes` has
    /// them: a failed connect, a sweep and each removal look an instance
    /// up, and a flood of fake nodes fills the ring, where a scan per
    /// lookup held the discovery loop about 50 us per removal.
    owners: HashMap<String, BTreeSet<String>>,
    /// Where each node's instance resolved, by (node, instance): a node is
    /// watched at the address of its oldest instance, and declared dead
    /// there only for the instances at that address. Without the key, a
    /// stranger's one record under a live node's id (`evil@real`, `node=`
    /// that id, an address where nothing answers) moved the node's probe
    /// there, and its verdict said the goodbye of the node's real
    /// instances to the whole link.
    at: HashMap<(String, String), Option<IpAddr>>,
    /// The last link port heard for each node, and when it was first
    /// heard: a process restarted under the same node id listens on
    /// another port (see [`Ring::restarted`]).
    heard: HashMap<String, (u16, tokio::time::Instant)>,
    /// Every address each node's last resolved instance listed (the first
    /// [`MAX_ADDRS`]): its watcher's link to this node comes from one of
    /// them, whichever the probe address is ([`Ring::addresses`]).
    addrs: HashMap<String, Vec<IpAddr>>,
    /// The instances whose last record said they are leaving (draining,
    /// or down): their goodbye is no missed refresh ([`Ring::is_leaving`]).
    leaving: HashSet<String>,
}

/// Most addresses kept for a node: a host's few, and a bound on what a
/// stranger's record listing hundreds costs.
const MAX_ADDRS: usize = 16;

/// Most nodes the ring holds: far above a link's worth of mesh-amb nodes,
/// a bound on what a flood of fake node ids costs.
const MAX_NODES: usize = 1024;

impl Ring {
    pub fn new(me: &str) -> Ring {
        Ring {
            me: me.to_owned(),
            ..Ring::default()
        }
    }

    /// Notes that `node`'s instance `fullname` resolved at `addrs` (an IPv4
    /// address is preferred for the probe; loopback means the node shares
    /// our network stack and is not probed). The probe asks for the host
    /// name mesh-amb derives from the node id, not the record's SRV target:
    /// a seal does not cover that target, so a replayed record naming
    /// another host must not make the witness ask the node for a name it
    /// does not own.
    ///
    /// The first link port heard for a node is kept: it is not sealed, and
    /// a stranger changing it back and forth must not restart the watch.
    /// The last one heard replaces it once the node's watcher found the
    /// kept one refused by a node that answers ([`Ring::restarted`]).
    pub fn seen(&mut self, node: &str, fullname: &str, addrs: &[PeerAddr], link: Option<u16>) {
        let host = super::wire::host_name(node);
        if node == self.me {
            return;
        }
        let addr = probe_addr(addrs);
        if !self.nodes.contains_key(node) && self.nodes.len() >= MAX_NODES {
            return;
        }
        let peer = self.nodes.entry(node.to_owned()).or_insert_with(|| Peer {
            host: host.clone(),
            addr,
            instances: Vec::new(),
            link,
            since: tokio::time::Instant::now(),
            restarted: false,
        });
        peer.host = host;
        peer.link = peer.link.or(link);
        let ips = addrs.iter().map(|a| a.ip.to_canonical()).take(MAX_ADDRS);
        self.addrs.insert(node.to_owned(), ips.collect());
        if let Some(port) = link {
            let now = tokio::time::Instant::now();
            let heard = self.heard.entry(node.to_owned()).or_insert((port, now));
            if heard.0 != port {
                *heard = (port, now);
            }
        }
        let listed = peer.instances.iter().any(|i| i == fullname);
        if !listed && peer.instances.len() < MAX_GOODBYE_INSTANCES {
            peer.instances.push(fullname.to_owned());
            self.owners
                .entry(fullname.to_owned())
                .or_default()
                .insert(node.to_owned());
        }
        if listed || peer.instances.iter().any(|i| i == fullname) {
            // A record without a probe address (loopback only) keeps the
            // one heard before.
            let known = self.at.entry((node.to_owned(), fullname.to_owned()));
            let known = known.or_default();
            *known = addr.or(*known);
        }
        self.reaim(node);
    }

    /// Sets `node`'s probe address: that of its oldest instance with one.
    fn reaim(&mut self, node: &str) {
        let Some(peer) = self.nodes.get_mut(node) else {
            return;
        };
        peer.addr = peer.instances.iter().find_map(|i| {
            let key = (node.to_owned(), i.clone());
            self.at.get(&key).copied().flatten()
        });
    }

    /// `peer` (`node`) as it is probed at `addr`: with only its instances
    /// that resolved there, the ones its silence there says are gone.
    fn at_addr(&self, node: &str, peer: &Peer, addr: Option<IpAddr>) -> Peer {
        let there = |i: &&String| {
            let key = (node.to_owned(), (*i).clone());
            self.at.get(&key).copied().flatten() == addr
        };
        Peer {
            addr,
            instances: peer.instances.iter().filter(there).cloned().collect(),
            ..peer.clone()
        }
    }

    /// Notes whether the last record of instance `fullname`, listed in
    /// the ring, said it is leaving.
    pub fn set_leaving(&mut self, fullname: &str, leaving: bool) {
        if leaving && self.owners.contains_key(fullname) {
            self.leaving.insert(fullname.to_owned());
        } else {
            self.leaving.remove(fullname);
        }
    }

    /// Whether instance `fullname` said it is leaving: a provide withdrawn
    /// (at a reload, or when its local service stopped answering) says so
    /// before its goodbye, while its node lives on.
    pub fn is_leaving(&self, fullname: &str) -> bool {
        self.leaving.contains(fullname)
    }

    /// Forgets instance `fullname`; a node left without instances leaves
    /// the ring.
    pub fn gone(&mut self, fullname: &str) {
        self.leaving.remove(fullname);
        for node in self.owners.remove(fullname).unwrap_or_default() {
            self.at.remove(&(node.clone(), fullname.to_owned()));
            if let Some(p) = self.nodes.get_mut(&node) {
                p.instances.retain(|i| i != fullname);
                if p.instances.is_empty() {
                    self.nodes.remove(&node);
                    self.heard.remove(&node);
                    self.addrs.remove(&node);
                }
            }
            self.reaim(&node);
        }
    }

    /// Where `node`'s ring link may be now that the kept port `refused`
    /// refuses while the node answers its probes: at the port heard last,
    /// if that is another one. Its process may have been restarted under
    /// the same node id, announcing before its watcher's goodbye took it
    /// out of the ring (a supervisor's restart); or a node shutting down
    /// closed its link a moment before its responder (no other port); or
    /// a stranger sent another port, which is why the port is adopted
    /// only once its link answers ([`link_answers`], then
    /// [`Ring::restarted`]).
    pub fn moved(&self, node: &str, refused: u16) -> Option<SocketAddr> {
        let peer = self.nodes.get(node)?;
        let port = self.heard_link(node)?;
        (peer.link == Some(refused) && port != refused).then_some(SocketAddr::new(peer.addr?, port))
    }

    /// Takes `to`, the port heard last, as `node`'s ring link instead of
    /// `refused`, its link having answered there ([`Ring::moved`]): its
    /// process was restarted, and the node is new since that port was
    /// first heard, as at any start (its new process knows only what it
    /// heard since: see `watched_now`). Whether it changed anything (not
    /// for a stale answer: the ring moved on meanwhile).
    pub fn restarted(&mut self, node: &str, refused: u16, to: u16) -> bool {
        let (Some(peer), Some(&(port, at))) = (self.nodes.get_mut(node), self.heard.get(node))
        else {
            return false;
        };
        if peer.link != Some(refused) || port != to || to == refused {
            return false;
        }
        peer.link = Some(to);
        peer.since = at;
        peer.restarted = true;
        true
    }

    /// The link port last heard for `node`: another one is another
    /// process.
    fn heard_link(&self, node: &str) -> Option<u16> {
        self.heard.get(node).map(|&(port, _)| port)
    }

    /// The addresses `node`'s last resolved instance listed.
    pub fn addresses(&self, node: &str) -> &[IpAddr] {
        self.addrs.get(node).map_or(&[], Vec::as_slice)
    }

    /// The instances `node` lists in the ring.
    pub fn instances(&self, node: &str) -> &[String] {
        self.nodes.get(node).map_or(&[], |p| p.instances.as_slice())
    }

    /// Whether `node` has an instance in the ring now.
    pub fn knows(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// The node that announced instance `fullname`, if it can be probed:
    /// at the address the instance resolved at (the node's otherwise),
    /// with the instances there.
    pub fn owner(&self, fullname: &str) -> Option<(String, Peer)> {
        self.owners.get(fullname)?.iter().find_map(|id| {
            let peer = self.nodes.get(id)?;
            let key = (id.clone(), fullname.to_owned());
            let addr = self.at.get(&key).copied().flatten().or(peer.addr)?;
            Some((id.clone(), self.at_addr(id, peer, Some(addr))))
        })
    }

    /// Nodes in the ring, this one included.
    pub fn size(&self) -> usize {
        self.nodes.len() + 1
    }

    /// The node this one watches: its successor by node id, wrapping
    /// around, among those with an address to probe.
    pub fn successor(&self) -> Option<(String, Peer)> {
        self.successors(1).pop()
    }

    /// The node before this one by node id, wrapping around, among those
    /// with an address to probe: the one that watches this node, if it
    /// knows it.
    pub fn predecessor(&self) -> Option<&str> {
        use std::ops::Bound::{Excluded, Unbounded};
        let me = self.me.as_str();
        let before = self.nodes.range::<str, _>((Unbounded, Excluded(me)));
        let after = self.nodes.range::<str, _>((Excluded(me), Unbounded));
        before
            .rev()
            .chain(after.rev())
            .find(|(_, p)| p.addr.is_some())
            .map(|(id, _)| id.as_str())
    }

    /// The first `most` nodes after this one by node id, wrapping around,
    /// among those with an address to probe: the successor and the ones a
    /// new successor may not know yet ([`BLIND_FOR`]).
    pub fn successors(&self, most: usize) -> Vec<(String, Peer)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let me = self.me.as_str();
        let after = self.nodes.range::<str, _>((Excluded(me), Unbounded));
        let before = self.nodes.range::<str, _>((Unbounded, Excluded(me)));
        after
            .chain(before)
            .filter(|(_, p)| p.addr.is_some())
            .take(most)
            .map(|(id, p)| (id.clone(), self.at_addr(id, p, p.addr)))
            .collect()
    }
}

/// The address a peer's responder is probed at: IPv4 first, then a
/// routable IPv6 one (link-local ones would need their scope), never
/// loopback; the lowest of them, so that every instance of a node with
/// several (a secondary address, a VIP) is noted at the same one whatever
/// order mdns-sd gives them in (a set's).
fn probe_addr(addrs: &[PeerAddr]) -> Option<IpAddr> {
    let usable = |p: &&PeerAddr| !p.ip.is_loopback() && !p.ip.is_unspecified();
    let lowest = |v4: bool| {
        addrs
            .iter()
            .filter(usable)
            .filter(|p| p.ip.is_ipv4() == v4)
            .filter(|p| !matches!(p.ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .map(|p| p.ip)
            .min()
    };
    lowest(true).or_else(|| lowest(false))
}

/// What the witness is told of the ring: the nodes it may watch (the
/// first `MAX_WATCHED` after this one), and how many nodes the ring
/// holds (which sets how often it probes while linked); and when this
/// node introduces itself to the node before it.
pub struct Aim {
    nodes: watch::Sender<Vec<(String, Peer)>>,
    size: watch::Sender<usize>,
    heard: watch::Sender<Vec<(String, Option<u16>)>>,
    introduction: Introduction,
    linked: Linked,
}

impl Default for Aim {
    fn default() -> Aim {
        Aim {
            nodes: watch::Sender::new(Vec::new()),
            size: watch::Sender::new(1),
            heard: watch::Sender::new(Vec::new()),
            introduction: Introduction::default(),
            linked: Linked::default(),
        }
    }
}

/// The nodes this node's watches hold a ring link up to: a node whose
/// records run out at a listener while its link is up lives, and only its
/// refresh was missed, unless they said they were leaving (see
/// [`super::mdns::browse`]). A watch's mark is
/// down while a goodbye this node said for it stands (a vanished host's
/// link may never close), and once the watch ends, whatever another watch
/// of the same node, started meanwhile, says.
type Linked = Held<String>;
type LinkMark = Mark<String>;

/// When this node announces its records again for a new node before it in
/// the ring, its watcher from now on: one that only provides listens
/// without a query, and knows the nodes started before it only from their
/// next announcement, up to 80 s later ([`super::mdns::REFRESH_EVERY`]);
/// meanwhile it watched the wrong node, or none. So the node after it
/// announces itself (one packet per interface, sent twice for the odds
/// of a lossy link), [`INTRODUCE_SETTLE`] after the node before it
/// changed, and at most [`INTRODUCE_MOST`] times in
/// [`INTRODUCE_WINDOW`]. A node that leaves changes its successor's
/// predecessor too, and the node before it may be new as well. So does a
/// node restarted under the same id, whose new process announces another
/// link port (unsealed: a stranger can make it look so, as it can bring
/// in fake nodes; the window bounds both).
#[derive(Debug, Default)]
struct Introduction {
    /// The node before this one, as last followed, and the link port
    /// last heard for it (its process).
    before: Option<(String, Option<u16>)>,
    /// When to announce next, and whether that is the repeat.
    due: Option<(tokio::time::Instant, bool)>,
    /// Whether another introduction is owed once the repeat is sent: the
    /// node before changed again meanwhile.
    owed: bool,
    /// When the last introductions were sent, oldest first.
    sent: std::collections::VecDeque<tokio::time::Instant>,
}

/// How long after the node before this one changed this one introduces
/// itself, plus up to a second at random: nodes started together change
/// each one's predecessor several times in a second or two (one packet
/// then tells whichever is before it by then: it is multicast), and
/// should not announce in step.
const INTRODUCE_SETTLE: Duration = Duration::from_secs(2);
/// The repeat of an introduction, as RFC 6762 §8.3 has announcements sent
/// twice.
const INTRODUCE_AGAIN: Duration = Duration::from_secs(1);
/// Most introductions in [`INTRODUCE_WINDOW`]: a stranger's fake nodes,
/// which join the ring without the cluster key, can change which node is
/// before this one as often as they like; an introduction a moment late
/// is covered by the watch held meanwhile (`watched_now`). Three, so that
/// the one a node's start may cost leaves room for the nodes that start
/// next to it.
pub const INTRODUCE_MOST: usize = 3;
/// The window of [`INTRODUCE_MOST`].
pub const INTRODUCE_WINDOW: Duration = Duration::from_secs(90);

impl Introduction {
    fn follow(&mut self, ring: &Ring, now: tokio::time::Instant) {
        let before = ring
            .predecessor()
            .map(|id| (id.to_owned(), ring.heard_link(id)));
        if before == self.before {
            return;
        }
        self.before.clone_from(&before);
        match self.due {
            _ if before.is_none() => {}
            // The one due tells whichever node is before this one then.
            Some((_, false)) => {}
            Some((_, true)) => self.owed = true,
            None => self.due = Some((self.earliest(now), false)),
        }
    }

    /// When an introduction asked for at `now` may be sent.
    fn earliest(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        let settled = now + INTRODUCE_SETTLE + Duration::from_secs_f64(fastrand::f64());
        match self.sent.front() {
            Some(&oldest) if self.sent.len() >= INTRODUCE_MOST => {
                settled.max(oldest + INTRODUCE_WINDOW)
            }
            _ => settled,
        }
    }

    /// Notes the introduction due at `now`: `sent`, or not (nothing of
    /// ours announced long enough yet, which mdns-sd still announces).
    fn sent(&mut self, now: tokio::time::Instant, sent: bool) {
        self.due = match self.due {
            Some((_, false)) if sent => {
                if self.sent.len() >= INTRODUCE_MOST {
                    self.sent.pop_front();
                }
                self.sent.push_back(now);
                Some((now + INTRODUCE_AGAIN, true))
            }
            _ if std::mem::take(&mut self.owed) => Some((self.earliest(now), false)),
            _ => None,
        };
    }
}

/// Which of `successors` (the nodes after this one, in ring order) are
/// watched at `now`, by index: the first, and each one that none of the
/// nodes before it may know yet; and when that may change next. A node
/// knows one that came into this node's ring after it: the announcement
/// this node heard was multicast, and it listened already (barring a lost
/// packet). One that came in before it is known to it only once it heard
/// its introduction or its next announcement, [`BLIND_FOR`] after it came
/// in at the latest.
fn watched_now(
    successors: &[(String, Peer)],
    now: tokio::time::Instant,
) -> (Vec<usize>, Option<tokio::time::Instant>) {
    let new = |p: &Peer| now < p.since + BLIND_FOR;
    let may_not_know = |p: &Peer, later: &Peer| new(p) && later.since < p.since;
    let watched = (0..successors.len())
        .filter(|&i| {
            let node = &successors[i].1;
            successors[..i].iter().all(|(_, p)| may_not_know(p, node))
        })
        .collect();
    let change = successors
        .iter()
        .filter(|(_, p)| new(p))
        .map(|(_, p)| p.since + BLIND_FOR)
        .min();
    (watched, change)
}

impl Aim {
    /// Points the witness at the ring's successors, if they changed, tells
    /// it the ring's size and the link ports last heard for the nodes it
    /// may watch, and notes a new node before this one.
    pub fn follow(&mut self, ring: &Ring) {
        self.introduction.follow(ring, tokio::time::Instant::now());
        let next = ring.successors(MAX_WATCHED);
        let heard: Vec<(String, Option<u16>)> = next
            .iter()
            .map(|(id, _)| (id.clone(), ring.heard_link(id)))
            .collect();
        self.heard
            .send_if_modified(|h| std::mem::replace(h, heard.clone()) != heard);
        self.nodes
            .send_if_modified(|t| std::mem::replace(t, next.clone()) != next);
        let size = ring.size();
        self.size
            .send_if_modified(|n| std::mem::replace(n, size) != size);
    }

    /// Whether one of this node's watches holds a ring link up to `node`
    /// and said no goodbye for it: its process lived when last heard.
    pub fn linked(&self, node: &str) -> bool {
        self.linked.contains(node)
    }

    /// When this node should announce its records again, for a new node
    /// before it in the ring ([`Aim::introduced`] once it did).
    pub fn introduction_due(&self) -> Option<tokio::time::Instant> {
        self.introduction.due.map(|(at, _)| at)
    }

    /// Notes whether this node announced its records again, when
    /// [`Aim::introduction_due`] said.
    pub fn introduced(&mut self, sent: bool) {
        self.introduction.sent(tokio::time::Instant::now(), sent);
    }

    /// Watches the successor this aims at, until `stop`: probes it,
    /// multicasts its goodbye when it stops answering, and tells `tell`
    /// ([`News`]). The nodes that a new successor may not know yet are
    /// held meanwhile (through their ring links only). A node watched
    /// before and after a change keeps its watch, and its ring link.
    pub fn watch(
        &self,
        tell: mpsc::Sender<News>,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (mut targets, size) = (self.nodes.subscribe(), self.size.subscribe());
        let heard = self.heard.subscribe();
        let linked = self.linked.clone();
        async move {
            // Each node watched: as it was seen, whether in full (the
            // successor, or one that was) or held, and its task.
            let mut watching: HashMap<String, (Peer, bool, AbortHandle)> = HashMap::new();
            let mut held: BTreeSet<String> = BTreeSet::new();
            let mut tasks = JoinSet::new();
            loop {
                let successors = targets.borrow_and_update().clone();
                let (watched, change) = watched_now(&successors, tokio::time::Instant::now());
                let want: Vec<&(String, Peer)> = watched.iter().map(|&i| &successors[i]).collect();
                let holding: BTreeSet<String> =
                    want.iter().skip(1).map(|(n, _)| n.clone()).collect();
                for node in holding.difference(&held) {
                    debug!(
                        node,
                        "witness: holding the watch of a node the one before it may not know yet"
                    );
                }
                held = holding;
                // A successor that a new node came before keeps its full
                // watch (its link, its beats) while it is held; a held
                // node that becomes the successor is watched in full.
                watching.retain(|node, (peer, full, task)| {
                    let at = want.iter().position(|(n, p)| n == node && p == peer);
                    let keep = at.is_some_and(|at| at > 0 || *full);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for (at, (node, peer)) in want.iter().enumerate() {
                    if watching.contains_key(node) {
                        continue;
                    }
                    let (id, p, tell) = (node.clone(), peer.clone(), tell.clone());
                    let mark = linked.mark(node.clone());
                    let task = if at == 0 {
                        let (size, heard) = (size.clone(), heard.clone());
                        tasks.spawn(
                            async move { watch_one(&id, &p, &size, &heard, mark, &tell).await },
                        )
                    } else {
                        tasks.spawn(async move { hold(&id, &p, mark, &tell).await })
                    };
                    watching.insert(node.clone(), (peer.clone(), at == 0, task));
                }
                let aged = async {
                    match change {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = targets.changed() => if changed.is_err() { return },
                    () = aged => {}
                    Some(_) = tasks.join_next() => {}
                }
            }
        }
    }
}

/// The beat period (or, for a node that does not beat, the probe period)
/// while the link is up, in a ring of `size` nodes (see
/// [`RING_PACKETS_PER_SECOND`]).
pub fn linked_period(size: usize) -> Duration {
    let share = Duration::from_secs_f64(size as f64 / RING_PACKETS_PER_SECOND);
    share.clamp(LINKED_PROBE_EVERY, LINKED_PROBE_MOST)
}

/// Probes `peer` for as long as it is this node's successor, and says its
/// goodbye when it stops answering (again only once the first no longer
/// stands: [`stands`]). Probing goes on after the
/// goodbye: the goodbye normally moves the watch on to the next node, and
/// a node that answers again (it was alive after all) is watched as before.
/// While the ring link to it is up, it is probed only when its beat is
/// late (or, if it does not beat, less often), and at once when the link
/// closes.
async fn watch_one(
    node: &str,
    peer: &Peer,
    size: &watch::Receiver<usize>,
    heard: &Heard,
    mut mark: LinkMark,
    tell: &mpsc::Sender<News>,
) {
    let Some(addr) = peer.addr else {
        return std::future::pending().await;
    };
    // A socket cannot be had when the process is out of descriptors (a
    // flood of clients): try again a period later rather than never
    // watch this node.
    let prober = loop {
        match Prober::open(peer).await {
            Some(prober) => break prober,
            None => tokio::time::sleep(period(PROBE_EVERY)).await,
        }
    };
    let link_to = peer.link_at();
    let mut link = Link::default();
    link.ask_beats(Some(linked_period(*size.borrow())));
    // The link port heard for the watched node when this node said its
    // goodbye, if it has not answered since (see `stands`).
    let mut goodbye = watch_young(node, peer, &prober, &mut link, &mut mark, heard, tell).await;
    tokio::time::sleep_until(peer.since + WATCH_AFTER).await;
    if let (Some(to), None) = (link_to, goodbye) {
        link.connect(to).await;
    }
    debug!(node, %addr, linked = link.is_up(), beats = ?link.beat_port(), "witness: watching");
    let mut fallback = Fallback::default();
    // Whether the node answered its last probe.
    let mut answered = false;
    // The last process announced since a goodbye (see `new_process`),
    // and whether the last probe's silence was let go for being its.
    let (mut woke, mut let_go) = (None, false);
    loop {
        if let Some(asked) = link.beat_period() {
            let wish = linked_period(*size.borrow());
            if wish.abs_diff(asked) > asked / 4 {
                // The ring grew or shrank by a quarter: the node is asked
                // again, on a new link.
                link.ask_beats(Some(wish));
            }
        }
        // Whatever closed the link (the ask above, the fallback below, a
        // lost link), a node that answers gets one again; a dead one is
        // left alone until it answers.
        if let (Some(to), None) = (link_to, goodbye) {
            link.connect(to).await;
            refused_alive(node, to, &link, answered, tell);
        }
        let wait = match link.beat_period() {
            Some(beats) => beats.mul_f64(1.0 + super::link::BEAT_JITTER),
            None if link.is_up() => period(linked_period(*size.borrow())),
            None => period(PROBE_EVERY),
        };
        mark.set(link.is_up() && goodbye.is_none());
        // Whether a new process announced since the goodbye is why it is
        // probed now.
        let restarted = tokio::select! {
            _ = tokio::time::sleep(wait) => {
                match fallback.period_passed(link.beat_period().is_some(), link.heard_beats()) {
                    Turn::Wait => {}
                    Turn::ProbeInstead => {
                        debug!(node, "witness: the node's beats do not come through; probing instead");
                        link.ask_beats(None);
                    }
                    Turn::AskAgain { probed } => {
                        debug!(node, periods = probed, "witness: asking the node to beat again");
                        link.ask_beats(Some(linked_period(*size.borrow())));
                    }
                }
                false
            }
            event = link.next() => match event {
                Event::Beat => {
                    debug!(node, "witness: beat");
                    goodbye = None;
                    fallback.heard_beat();
                    continue;
                }
                Event::Closed => {
                    debug!(node, "witness: the link to the node closed; probing now");
                    false
                }
            },
            () = new_process(heard, node, goodbye, &mut woke) => true,
        };
        mark.set(link.is_up() && goodbye.is_none());
        let alive = match prober.ask_in_a_row(node, PROBE_TIMEOUT).await {
            Probe::Answered => {
                debug!(node, "witness: probe answered");
                true
            }
            Probe::Refused => false,
            // A process that just started may leave unicast questions
            // unanswered (see `WATCH_AFTER`): only its death is a verdict,
            // once (a stranger that keeps changing its port must not stop
            // every verdict).
            Probe::Silent if restarted && !std::mem::replace(&mut let_go, true) => continue,
            Probe::Silent => {
                let within = super::link::ANSWER_WITHIN;
                confirm_ring(node, &prober, &RING_CONFIRMS, &mut link, link_to, within).await
            }
        };
        answered = alive;
        let_go = false;
        if alive {
            goodbye = None;
        } else if out_of_reach(peer) {
            debug!(
                node,
                "witness: this host has no working link towards the node; no verdict"
            );
        } else if !stands(goodbye, heard, node) {
            mark.set(false);
            declare_dead(node, peer, tell).await;
            goodbye = Some(heard_port(heard, node));
        }
    }
}

/// Watches `peer` for the death of its process only, until it has been in
/// the ring for [`WATCH_AFTER`]; when it was declared dead, if it has not
/// answered since. A young responder's silence proves nothing, but a
/// refused probe does: nothing listens on the node's mDNS port any more.
/// So the link is opened now (once the ring around the node has held for
/// [`YOUNG_SETTLE`], at once for a restarted node, whose link answered
/// already), and when it closes, or is refused, the responder is probed
/// at once (only a refusal is a verdict); a link that cannot be had
/// otherwise (a silent host) leaves the node probed once a period.
/// Probing goes on after the goodbye, as in the full watch: a node
/// restarted at once answers again, and stays in the ring. A node without
/// a link is left to the full watch.
async fn watch_young(
    node: &str,
    peer: &Peer,
    prober: &Prober,
    link: &mut Link,
    mark: &mut LinkMark,
    heard: &Heard,
    tell: &mpsc::Sender<News>,
) -> Option<Option<u16>> {
    let grown = peer.since + WATCH_AFTER;
    let to = peer
        .link_at()
        .filter(|_| tokio::time::Instant::now() < grown)?;
    if !peer.restarted {
        tokio::time::sleep_until(grown.min(tokio::time::Instant::now() + YOUNG_SETTLE)).await;
    }
    link.connect(to).await;
    debug!(
        node,
        linked = link.is_up(),
        "witness: watching a young node's process"
    );
    let mut goodbye = None;
    // The last process announced since a goodbye (see `new_process`).
    let mut woke = None;
    // A process that died before its link was up (killed a moment after
    // its restart, say) refuses it, or its hello: probed now, not a
    // period later (a silent one's silence is no verdict here).
    let mut probe_now = !link.is_up();
    loop {
        mark.set(link.is_up() && goodbye.is_none());
        if !std::mem::take(&mut probe_now) {
            let unlinked = period(PROBE_EVERY);
            tokio::select! {
                _ = tokio::time::sleep_until(grown) => return goodbye,
                event = link.next() => if event == Event::Beat {
                    continue;
                },
                _ = tokio::time::sleep(unlinked), if !link.is_up() => {}
                () = new_process(heard, node, goodbye, &mut woke) => {}
            }
            mark.set(link.is_up() && goodbye.is_none());
        }
        let probe = prober.ask_in_a_row(node, PROBE_TIMEOUT).await;
        match probe {
            Probe::Refused if !stands(goodbye, heard, node) => {
                mark.set(false);
                declare_dead(node, peer, tell).await;
                goodbye = Some(heard_port(heard, node));
            }
            Probe::Answered => goodbye = None,
            Probe::Refused | Probe::Silent => {}
        }
        // A dead one is left alone until it answers.
        if goodbye.is_none() {
            link.connect(to).await;
            refused_alive(node, to, link, matches!(probe, Probe::Answered), tell);
        }
    }
}

/// Watches `peer`, a node that the successor (and any node between them)
/// may not know yet ([`watched_now`]), for the death of its process only:
/// through its ring link, whose close (or a connect that fails) is
/// followed by a probe, once a period at most, and only a refusal is a
/// verdict (as for a young node, [`watch_young`]). A node that advertises
/// no link (a stranger's fake one, say) is not held, and a host that
/// falls silent is left to the node's own watcher (or its records' TTL).
async fn hold(node: &str, peer: &Peer, mut mark: LinkMark, tell: &mpsc::Sender<News>) {
    let Some(to) = peer.link_at() else {
        return;
    };
    // The ring settles first, as for a young node: nodes started together
    // change each one's successors several times in a second or two.
    tokio::time::sleep(YOUNG_SETTLE).await;
    let prober = loop {
        match Prober::open(peer).await {
            Some(prober) => break prober,
            None => tokio::time::sleep(period(PROBE_EVERY)).await,
        }
    };
    let mut link = Link::default();
    // The hello's echo tells a mesh node's link from whatever else a
    // stale or forged port may name, which would never close; beats are
    // not looked for.
    link.ask_beats(Some(LINKED_PROBE_MOST));
    loop {
        link.connect(to).await;
        mark.set(link.is_up());
        let probe = if link.is_up() {
            while link.next().await == Event::Beat {}
            mark.set(false);
            // A killed process's link may close a moment before its
            // mDNS port refuses: a few probes in a row.
            prober.ask_in_a_row(node, PROBE_TIMEOUT).await
        } else {
            // A node that crashed before the link was up refuses it, and
            // then the probe; one is enough (only a refusal counts).
            prober.ask(node, &mut Vec::new(), PROBE_TIMEOUT).await
        };
        if let Probe::Refused = probe {
            return declare_dead(node, peer, tell).await;
        }
        refused_alive(node, to, &link, matches!(probe, Probe::Answered), tell);
        tokio::time::sleep(period(PROBE_EVERY)).await;
    }
}

/// Whether this host has no working link towards `peer` (see
/// [`route`]): its silence is news of our own link then, not of the node,
/// and no verdict is said (a goodbye said on the link once it is back
/// would take a live node out of every table).
fn out_of_reach(peer: &Peer) -> bool {
    peer.addr
        .is_some_and(|a| route::no_link_towards(SocketAddr::new(a, MDNS_PORT)))
}

/// What the watch tells the browse about a node it watches.
#[derive(Debug)]
pub enum News {
    /// Found dead: its goodbye was said (for [`Trials::dead`]).
    Dead(String, Peer),
    /// Its ring link at this port refused while it answered its probe:
    /// restarted, maybe (for [`Ring::moved`]).
    Refused(String, u16),
}

/// Tells `tell` that `node`'s link at `to` refused, if `link`'s last
/// connect was refused and the node answered its last probe: a node that
/// lives but no longer listens there was restarted (its new process
/// listens on another port), or is shutting down. Once a probe period at
/// most, since the new port may be heard after the refusal; and never
/// into the last half of the queue, which is kept for a verdict's news.
fn refused_alive(
    node: &str,
    to: SocketAddr,
    link: &Link,
    answered: bool,
    tell: &mpsc::Sender<News>,
) {
    if answered && link.refused() && tell.capacity() > tell.max_capacity() / 2 {
        debug!(node, %to, "witness: the node answers but its ring link refuses");
        let _ = tell.try_send(News::Refused(node.to_owned(), to.port()));
    }
}

/// Whether a mesh node's ring link answers at `to`: it echoes a byte, as
/// a stranger's port (nothing there, or a service with a banner) does not.
pub async fn link_answers(to: SocketAddr) -> bool {
    Link::default()
        .answers(to, super::link::CONNECT_TIMEOUT)
        .await
}

/// The link port last heard for each node watched ([`Aim::follow`]).
type Heard = watch::Receiver<Vec<(String, Option<u16>)>>;

/// The link port last heard for `node`: another one is another process.
fn heard_port(heard: &Heard, node: &str) -> Option<u16> {
    port_in(&heard.borrow(), node)
}

/// The link port `heard` lists for `node`.
fn port_in(heard: &[(String, Option<u16>)], node: &str) -> Option<u16> {
    heard.iter().find(|(n, _)| n == node).and_then(|(_, p)| *p)
}

/// Whether the goodbye this node said for `node` (the port heard for it
/// then, if one was said) still stands: until the node answers, or
/// announces a new process (another port). Such a process undid the
/// goodbye (the node stays in every table), and one killed again between
/// two probes, unseen answering, stayed for its records' TTL (118 s in a
/// crash loop). Nothing else repeats a goodbye: a node kept in this
/// node's ring for another reason (its removal held for this host's
/// link, a stranger replaying its records, a live node found dead again
/// and again) gets only the one, as before.
fn stands(said: Option<Option<u16>>, heard: &Heard, node: &str) -> bool {
    said.is_some_and(|port| port == heard_port(heard, node))
}

/// Ends once `node` announces another process than the one whose goodbye
/// this node said (`said`, as in [`stands`]) and than the one it ended
/// for last (`woke`, then set with the time): a supervisor's restart,
/// probed then rather than a period later, so that the new process is
/// linked to as soon as it answers (and, killed again, found dead from
/// there). Never while no goodbye stands, and a probe period after the
/// last time at the soonest: a stranger that sends one port after
/// another under the node's id gets no more goodbyes than before, and
/// one probe a period more at most.
async fn new_process(
    heard: &Heard,
    node: &str,
    said: Option<Option<u16>>,
    woke: &mut Option<(Option<u16>, tokio::time::Instant)>,
) {
    if let Some(port) = said {
        let last = woke.map(|(port, _)| port);
        if let Some((_, at)) = *woke {
            tokio::time::sleep_until(at + PROBE_EVERY).await;
        }
        let other = |h: &Vec<(String, Option<u16>)>| {
            let now = port_in(h, node);
            now.is_some() && now != port && Some(now) != last
        };
        if let Ok(h) = heard.clone().wait_for(other).await {
            *woke = Some((port_in(&h, node), tokio::time::Instant::now()));
            debug!(
                node,
                "witness: another process announced since the goodbye; probing now"
            );
            return;
        }
    }
    std::future::pending().await
}

/// Says the goodbye of `node`, found dead, and puts it on trial.
async fn declare_dead(node: &str, peer: &Peer, tell: &mpsc::Sender<News>) {
    goodbye_for(node, peer).await;
    // Full: the trials are busy with others; this node's own goodbye
    // still stands, it is just not watched for a return.
    let _ = tell.try_send(News::Dead(node.to_owned(), peer.clone()));
}

/// When a watcher gives up waiting for its node's beats and probes
/// instead, and when it asks for them again ([`watch_one`]'s schedule).
#[derive(Debug)]
struct Fallback {
    /// Periods waited in a row on a link that asked for beats and heard none.
    unheard: u32,
    /// Periods probed since the beats were given up, while they are.
    probed: Option<u32>,
    /// How many probed periods until the beats are asked for again.
    again_after: u32,
}

/// What a watcher does at the end of a period in which no beat came.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// Probe, and wait another period on the same link.
    Wait,
    /// Give up on the beats: probe from now on, on a link that does not
    /// ask for them.
    ProbeInstead,
    /// Ask for the beats again, on a new link, after `probed` periods.
    AskAgain { probed: u32 },
}

impl Default for Fallback {
    fn default() -> Fallback {
        Fallback {
            unheard: 0,
            probed: None,
            again_after: BEATS_AGAIN_AFTER,
        }
    }
}

impl Fallback {
    /// A period ended with no beat; `asking` is whether the link up asked
    /// for beats, `heard` whether any came on it.
    fn period_passed(&mut self, asking: bool, heard: bool) -> Turn {
        self.unheard = if heard { 0 } else { self.unheard + 1 };
        if asking && self.unheard >= 2 {
            // Beats that never come (a firewall drops them, or the node
            // cannot beat) would cost a packet a period for nothing. Two
            // periods, so that one lost beat does not decide it.
            self.probed = Some(0);
            return Turn::ProbeInstead;
        }
        let Some(probed) = self.probed.as_mut() else {
            return Turn::Wait;
        };
        *probed += 1;
        if *probed < self.again_after {
            return Turn::Wait;
        }
        let probed = *probed;
        self.probed = None;
        self.unheard = 0;
        self.again_after = (self.again_after * 2).min(BEATS_AGAIN_MOST);
        Turn::AskAgain { probed }
    }

    /// A beat came: whatever stopped them before is gone.
    fn heard_beat(&mut self) {
        self.again_after = BEATS_AGAIN_AFTER;
    }
}

/// Whether a ring peer that left every probe unanswered is alive after
/// all: it answers a multicast confirmation ([`Prober::confirm`]), or its
/// process echoes on the ring link ([`Link::answers`]), whichever says so
/// first. The link is asked because every probe and confirmation of a
/// check can be lost while the node runs (for as long as either end
/// resolves the other's link-layer address again: 2-20 s in the lab at 64
/// hosts before it sized the kernel's neighbour table), and TCP resends
/// what such a loss swallows. The confirmations wait `confirms`, the link
/// `within`.
async fn confirm_ring(
    node: &str,
    prober: &Prober,
    confirms: &[Duration],
    link: &mut Link,
    link_to: Option<SocketAddr>,
    within: Duration,
) -> bool {
    let by_link = async {
        match link_to {
            Some(to) => link.answers(to, within).await,
            None => false,
        }
    };
    // A `false` leaves the other one to finish; both `false`: dead.
    tokio::select! {
        true = prober.confirm(node, confirms) => true,
        true = by_link => {
            info!(node, "witness: the node's responder is silent but its process answers on the ring link; alive");
            true
        }
        else => false,
    }
}

/// One probe period of about `every`, spread by [`PROBE_JITTER`].
fn period(every: Duration) -> Duration {
    every.mul_f64(1.0 - PROBE_JITTER / 2.0 + PROBE_JITTER * fastrand::f64())
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The suspect answered: nothing was said.
    Alive,
    /// The suspect never answered: its goodbye was sent. Hand it back
    /// with [`Trials::dead`] to watch for its return.
    Dead,
    /// The node declared dead answered again.
    Revived,
    /// The node declared dead never answered within [`FORGET_AFTER`], or
    /// its host refused every probe for a minute (or it cannot be
    /// probed).
    Forgotten,
}

/// The nodes on trial: suspects being checked, and nodes declared dead
/// being watched for a return.
#[derive(Default)]
pub struct Trials {
    /// One task per node.
    running: JoinSet<Verdict>,
    /// Which node each task tries.
    nodes: HashMap<Id, OnTrial>,
}

/// One running trial.
struct OnTrial {
    node: String,
    peer: Peer,
    /// A node declared dead, watched for its return (else a suspect).
    dead: bool,
    started: tokio::time::Instant,
    abort: AbortHandle,
}

impl Trials {
    /// Checks `node`, whose instance failed a connect: probes its
    /// responder; if it never answers, nor its process on the ring link
    /// (the node's link came back a moment ago: its mdns-sd takes the
    /// interface in again at its next check, up to 5 s later, and is deaf
    /// on it until then, while clients are served again), multicasts its
    /// goodbye and watches for its return.
    pub fn suspect(&mut self, node: String, peer: Peer) {
        self.start(node, peer, false);
    }

    /// Watches `node`, whose goodbye was said, for its return.
    pub fn dead(&mut self, node: String, peer: Peer) {
        self.start(node, peer, true);
    }

    fn start(&mut self, node: String, peer: Peer, said_goodbye: bool) {
        // By node and address: a stranger's record under a live node's id,
        // dead at its own address, must not keep the node's real address
        // from a check for the hour it stays on trial.
        if self
            .nodes
            .values()
            .any(|t| t.node == node && t.peer.addr == peer.addr)
        {
            return;
        }
        let room = self.nodes.len() < MAX_TRIALS || (!said_goodbye && self.evict_oldest_dead());
        if !room {
            debug!(node, "witness: too many nodes on trial; not checked");
            return;
        }
        let abort = self
            .running
            .spawn(trial(node.clone(), peer.clone(), said_goodbye));
        let started = tokio::time::Instant::now();
        let t = OnTrial {
            node,
            peer,
            dead: said_goodbye,
            started,
            abort,
        };
        self.nodes.insert(t.abort.id(), t);
    }

    /// Ends the longest watch for a dead node's return, to make room for a
    /// suspect: a failed connect is fresh news about a node a client
    /// wants, while the oldest watch is the least likely to see a return
    /// (and a stranger's dead fake nodes could otherwise fill every place
    /// for an hour). Whether there was one.
    fn evict_oldest_dead(&mut self) -> bool {
        let Some(id) = self
            .nodes
            .iter()
            .filter(|(_, t)| t.dead)
            .min_by_key(|(_, t)| t.started)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(t) = self.nodes.remove(&id) {
            debug!(
                node = t.node,
                "witness: no longer watching a dead node, to check a suspect"
            );
            t.abort.abort();
        }
        true
    }

    /// The next trial to end: the node, what was known of it, and the
    /// verdict. Pending while none runs.
    pub async fn next(&mut self) -> (String, Peer, Verdict) {
        loop {
            let Some(ended) = self.running.join_next_with_id().await else {
                return std::future::pending().await;
            };
            let (id, verdict) = match ended {
                Ok(done) => done,
                Err(e) => (e.id(), Verdict::Forgotten),
            };
            // Not there: evicted (and aborted) to make room.
            if let Some(t) = self.nodes.remove(&id) {
                return (t.node, t.peer, verdict);
            }
        }
    }
}

/// One node's trial (see [`Trials`]).
async fn trial(node: String, peer: Peer, said_goodbye: bool) -> Verdict {
    let Some(prober) = Prober::open(&peer).await else {
        return Verdict::Forgotten;
    };
    if !said_goodbye {
        let alive = match prober.ask_in_a_row(&node, SUSPECT_PROBE_TIMEOUT).await {
            Probe::Answered => true,
            Probe::Refused => false,
            Probe::Silent => {
                let (mut link, within) = (Link::default(), SUSPECT_CONFIRMS.iter().sum());
                let link_to = peer.link_at();
                confirm_ring(
                    &node,
                    &prober,
                    &SUSPECT_CONFIRMS,
                    &mut link,
                    link_to,
                    within,
                )
                .await
            }
        };
        if alive {
            debug!(node, "witness: the suspect answers");
            return Verdict::Alive;
        }
        if out_of_reach(&peer) {
            debug!(
                node,
                "witness: this host has no working link towards the suspect; no verdict"
            );
            return Verdict::Alive;
        }
        goodbye_for(&node, &peer).await;
        return Verdict::Dead;
    }
    let dead_since = tokio::time::Instant::now();
    let mut refused_since = None;
    while dead_since.elapsed() < FORGET_AFTER {
        tokio::time::sleep(period(trial_period(dead_since.elapsed()))).await;
        match prober.ask(&node, &mut Vec::new(), PROBE_TIMEOUT).await {
            Probe::Answered => {
                info!(node, "witness: a node declared dead answers again");
                return Verdict::Revived;
            }
            Probe::Refused => {
                let since = *refused_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= REFUSED_FOR_TO_FORGET {
                    debug!(
                        node,
                        "witness: nothing listens on the dead node's mDNS port; forgotten"
                    );
                    return Verdict::Forgotten;
                }
            }
            Probe::Silent => refused_since = None,
        }
    }
    Verdict::Forgotten
}

/// The period between probes of a node declared dead `dead_for` ago (see
/// [`TRIAL_SLOWS_BY`]).
fn trial_period(dead_for: Duration) -> Duration {
    (dead_for / TRIAL_SLOWS_BY).clamp(PROBE_EVERY, TRIAL_PROBE_MOST)
}

/// Says the goodbye of a dead node, and again [`GOODBYE_AGAIN`] later in
/// the background: the verdict (a suspect's removal from this node's own
/// tables) does not wait for the repeat.
async fn goodbye_for(node: &str, peer: &Peer) {
    match say_goodbye(peer).await {
        Ok(()) => info!(
            node,
            instances = peer.instances.len(),
            "witness: the node stopped answering; goodbye sent for its instances"
        ),
        Err(e) => warn!(node, error = %e, "witness: cannot send the goodbye of a dead node"),
    }
    let (node, peer) = (node.to_owned(), peer.clone());
    tokio::spawn(async move {
        tokio::time::sleep(GOODBYE_AGAIN).await;
        if let Err(e) = say_goodbye(&peer).await {
            debug!(node, error = %e, "witness: cannot repeat the goodbye");
        }
    });
}

/// Legacy-unicast questions to one peer's responder.
struct Prober {
    sock: UdpSocket,
    to: SocketAddr,
    /// The peer's host name, the probes' question (its A record; its AAAA
    /// record in the confirmation over IPv6 of a peer probed at IPv4).
    host: String,
    /// A multicast confirmation found the peer alive since a unicast probe
    /// last got an answer: said once, not at every period of a watch that
    /// stays at an address the peer no longer has (36 lines in 13 min).
    alive_by_multicast: AtomicBool,
}

impl Prober {
    async fn open(peer: &Peer) -> Option<Prober> {
        let addr = peer.addr?;
        let to = SocketAddr::new(addr, MDNS_PORT);
        // Connected, so that a host whose responder is gone says so at once
        // (ICMP port unreachable comes back as ECONNREFUSED) instead of
        // letting each probe wait out its timeout.
        let sock = async {
            let sock = UdpSocket::bind(unspecified(addr)).await?;
            sock.connect(to).await?;
            Ok::<_, std::io::Error>(sock)
        };
        match sock.await {
            Ok(sock) => Some(Prober {
                sock,
                to,
                host: peer.host.clone(),
                alive_by_multicast: Default::default(),
            }),
            // Said at every try while our link is down, which is news of
            // our own link, not of the node.
            Err(e) if out_of_reach(peer) => {
                debug!(error = %e, "witness: no working link towards the node; probing later");
                None
            }
            Err(e) => {
                warn!(error = %e, "witness: cannot open a probe socket");
                None
            }
        }
    }

    /// Asks until an answer comes, at most [`MISSES_TO_DEAD`] times in a
    /// row: `Answered` if one came, `Refused` if none did and one probe
    /// was refused (nothing listened on the peer's port then: dead, no
    /// confirmation needed), else `Silent`, which the caller confirms
    /// before the peer counts as dead. (A killed process's ring link may
    /// close a moment before its mDNS socket does, so the first probe
    /// after it can go unanswered and the next ones be refused.)
    async fn ask_in_a_row(&self, node: &str, timeout: Duration) -> Probe {
        let mut refused = false;
        let mut asked = Vec::with_capacity(MISSES_TO_DEAD as usize);
        for misses in 1..=MISSES_TO_DEAD {
            match self.ask(node, &mut asked, timeout).await {
                Probe::Answered => {
                    self.alive_by_multicast.store(false, Ordering::Relaxed);
                    return Probe::Answered;
                }
                Probe::Refused => refused = true,
                Probe::Silent => {}
            }
            debug!(node, misses, "witness: probe unanswered");
        }
        if refused {
            Probe::Refused
        } else {
            Probe::Silent
        }
    }

    /// Asks once more in a series of questions, `asked` (their ids): an
    /// answer to any of them counts.
    async fn ask(&self, node: &str, asked: &mut Vec<u16>, timeout: Duration) -> Probe {
        let id = fastrand::u16(..);
        asked.push(id);
        if let Err(e) = self.sock.send(&question(&self.host, TYPE_A, id)).await {
            debug!(node, error = %e, "witness: probe not sent");
        }
        answered(&self.sock, self.to, asked, timeout).await
    }

    /// The unicast probes went unanswered without a refusal: ask once more
    /// by multicast, still as a legacy querier (answered by unicast to an
    /// unconnected socket, from whatever address the peer's kernel picks).
    /// A unicast probe can miss a live responder for good: another daemon
    /// bound to port 5353 on the peer's host (avahi-daemon, a second
    /// mesh-amb) may be the one socket the kernel hands it to, and a probe
    /// to a secondary address is answered from the primary one, which a
    /// connected socket drops. Multicast reaches every socket on the port,
    /// and only the owner of the host name answers. It costs a multicast
    /// query or two per suspected death, not per probe. An answer to an
    /// earlier query counts during a later one's wait.
    ///
    /// A peer probed at an IPv4 address is also asked over IPv6, for its
    /// AAAA record: one that lost its IPv4 address lives on at its
    /// link-local one, where consumers still reach it, and was declared
    /// dead (found by exploratory testing: its goodbye took it out of every
    /// table for 14-23 s, until it announced again).
    async fn confirm(&self, node: &str, waits: &[Duration]) -> bool {
        let sock = match multicast_querier(self.to.ip()) {
            Ok(s) => s,
            Err(e) => {
                debug!(node, error = %e, "witness: no multicast confirmation");
                return false;
            }
        };
        let v6 = match self.to.ip() {
            IpAddr::V4(v4) => multicast_querier_v6_beside(v4)
                .inspect_err(|e| debug!(node, error = %e, "witness: no confirmation over IPv6"))
                .ok(),
            IpAddr::V6(_) => None,
        };
        let mut ids = Vec::with_capacity(waits.len());
        for wait in waits {
            let id = fastrand::u16(..);
            ids.push(id);
            let group = match self.to.ip() {
                IpAddr::V4(_) => SocketAddr::from((MDNS_V4, MDNS_PORT)),
                IpAddr::V6(_) => SocketAddr::from((MDNS_V6, MDNS_PORT)),
            };
            if let Err(e) = sock.send_to(&question(&self.host, TYPE_A, id), group).await {
                debug!(node, error = %e, "witness: confirmation not sent");
                return false;
            }
            let answered = match &v6 {
                Some(v6) => {
                    let q = question(&self.host, TYPE_AAAA, id);
                    if let Err(e) = v6.send_to(&q, (MDNS_V6, MDNS_PORT)).await {
                        debug!(node, error = %e, "witness: confirmation over IPv6 not sent");
                    }
                    tokio::select! {
                        true = answered_with_id(&sock, &ids, *wait) => true,
                        true = answered_with_id(v6, &ids, *wait) => true,
                        else => false,
                    }
                }
                None => answered_with_id(&sock, &ids, *wait).await,
            };
            if answered {
                if self.alive_by_multicast.swap(true, Ordering::Relaxed) {
                    debug!(
                        node,
                        "witness: the node answered by multicast only again; alive"
                    );
                } else {
                    info!(node, "witness: the node answered by multicast only; alive");
                }
                return true;
            }
        }
        false
    }
}

/// What one probe got.
pub(super) enum Probe {
    Answered,
    /// Nothing listens on the peer's mDNS port at that address: its
    /// responder is gone.
    Refused,
    /// No answer in time: lost, late, or the peer is gone.
    Silent,
}

/// Our IPv4 address on the interface that routes to `peer`.
fn local_towards(peer: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    match route::source_towards((peer, MDNS_PORT).into())? {
        IpAddr::V4(local) => Ok(local),
        IpAddr::V6(_) => Err(std::io::Error::other("no IPv4 route to the peer")),
    }
}

/// A UDP socket on any port that multicasts with TTL 255 on the interface
/// that routes to `peer`.
fn multicast_socket_v4(peer: Ipv4Addr) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_multicast_if_v4(&local_towards(peer)?)?;
    s.set_multicast_ttl_v4(255)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
    Ok(s)
}

/// An unconnected IPv6 socket for legacy multicast queries, on the
/// interface that routes to the IPv4 address `peer`.
fn multicast_querier_v6_beside(peer: Ipv4Addr) -> std::io::Result<UdpSocket> {
    let local = IpAddr::V4(local_towards(peer)?);
    let index = super::ifaces::current()
        .into_iter()
        .find(|i| i.ip() == local)
        .and_then(|i| i.index)
        .ok_or_else(|| std::io::Error::other("no interface holds the address towards the peer"))?;
    let s = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_multicast_if_v6(index)?;
    s.set_multicast_hops_v6(255)?;
    s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)).into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// An unconnected socket for legacy multicast queries, on the interface
/// that routes to `peer`.
fn multicast_querier(peer: IpAddr) -> std::io::Result<UdpSocket> {
    let s = match peer {
        IpAddr::V4(v4) => std::net::UdpSocket::from(multicast_socket_v4(v4)?),
        IpAddr::V6(_) => std::net::UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0))?,
    };
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Whether `pkt` is a DNS response to one of the questions `ids`.
fn answers_one_of(pkt: &[u8], ids: &[u16]) -> bool {
    pkt.len() >= 12 && pkt[2] & 0x80 != 0 && ids.contains(&u16::from_be_bytes([pkt[0], pkt[1]]))
}

/// Whether a response with one of message ids `ids` comes, from anywhere,
/// within `timeout`.
async fn answered_with_id(sock: &UdpSocket, ids: &[u16], timeout: Duration) -> bool {
    let mut buf = vec![0u8; MAX_PACKET];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            Err(_) => return false,
            // An ICMP error left by an earlier send: no answer from it.
            Ok(Err(_)) => {
                tokio::time::sleep_until(deadline).await;
                return false;
            }
            Ok(Ok((n, _))) => {
                if answers_one_of(&buf[..n], ids) {
                    return true;
                }
            }
        }
    }
}

/// Whether an answer to one of the questions `asked` (their ids) comes
/// from `from` within `timeout`. A late answer to an earlier question of
/// the series counts: a responder busy with a storm of start-up traffic
/// may answer seconds late, and is alive. An answer to a question of an
/// earlier series does not: a responder stopped (SIGSTOP, a paused VM)
/// answers every question queued meanwhile when it resumes, and those
/// answers, left in a watch's socket, were taken one by one for answers
/// to the probes of its next hang, which was then never noticed (found by
/// exploratory testing). A refusal (nothing listens on the peer's mDNS
/// port: its process is gone) is a miss at once; it still takes
/// [`MISSES_TO_DEAD`] of them in a row.
pub(super) async fn answered(
    sock: &UdpSocket,
    from: SocketAddr,
    asked: &[u16],
    timeout: Duration,
) -> Probe {
    let mut buf = vec![0u8; MAX_PACKET];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
        match got {
            Err(_) => return Probe::Silent,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Probe::Refused
            }
            // Another ICMP error (unreachable host, say): no answer, but
            // the probe keeps its pace.
            Ok(Err(_)) => {
                tokio::time::sleep_until(deadline).await;
                return Probe::Silent;
            }
            Ok(Ok((n, src))) => {
                if src.ip() == from.ip() && answers_one_of(&buf[..n], asked) {
                    return Probe::Answered;
                }
            }
        }
    }
}

/// Multicasts TTL-0 PTR records for the instances of `peer`, from port
/// 5353 on the interface that reaches it (as the refresh of our own
/// records is sent).
async fn say_goodbye(peer: &Peer) -> std::io::Result<()> {
    let packet = goodbye(&peer.instances);
    match peer.addr {
        Some(IpAddr::V4(peer_v4)) => refresh::send_v4(local_towards(peer_v4)?, &packet),
        // IPv6-only peers get their goodbye on the v6 group, on the
        // system's default interface for it.
        _ => refresh::send_v6(0, &packet),
    }
}

/// The unspecified address of `like`'s family, any port: where a socket
/// that talks to `like` binds.
pub(super) fn unspecified(like: IpAddr) -> SocketAddr {
    match like {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// An mDNS response holding a TTL-0 PTR record `_amb._tcp.local. ->
/// instance` for each of `instances`.
fn goodbye(instances: &[String]) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 * (instances.len() + 1));
    p.extend_from_slice(&[0, 0, 0x84, 0]); // id 0; response, authoritative
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&(instances.len() as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    for fullname in instances {
        put_name(&mut p, SERVICE_TYPE);
        p.extend_from_slice(&TYPE_PTR.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: goodbye
        let mut rdata = Vec::new();
        put_name(&mut rdata, fullname);
        p.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        p.extend_from_slice(&rdata);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Vec<PeerAddr> {
        vec![PeerAddr {
            ip: s.parse().unwrap(),
            scope: 0,
        }]
    }

    fn ring(me: &str, others: &[&str]) -> Ring {
        let mut r = Ring::new(me);
        for (i, id) in others.iter().enumerate() {
            let name = format!("web@{id}.{SERVICE_TYPE}");
            r.seen(id, &name, &addr(&format!("10.0.0.{}", i + 1)), None);
        }
        r
    }

    /// Probes of a node declared dead over its hour on trial, with the
    /// periods without their jitter, and how many of them fall within
    /// `first`.
    fn trial_probes(first: Duration) -> (u32, u32) {
        let (mut at, mut all, mut early) = (Duration::ZERO, 0, 0);
        while at < FORGET_AFTER {
            at += trial_period(at);
            all += 1;
            early += u32::from(at <= first);
        }
        (all, early)
    }

    #[test]
    fn a_dead_node_is_probed_less_often_the_longer_it_stays_dead() {
        // A short cut's end is seen within a period of 4 s.
        let short = Duration::from_secs(120);
        assert_eq!(trial_period(Duration::ZERO), PROBE_EVERY);
        assert_eq!(trial_period(short), PROBE_EVERY);
        // A long one's within about 3 % of its length, and never more
        // than a minute or so after it healed.
        assert_eq!(
            trial_period(Duration::from_secs(600)),
            Duration::from_secs(20)
        );
        assert_eq!(trial_period(FORGET_AFTER), TRIAL_PROBE_MOST);
        let (all, early) = trial_probes(short);
        assert_eq!(early, 30, "probes in the first two minutes");
        // A fixed period of PROBE_EVERY would make 900 (770 when each
        // probe waits out its timeout).
        assert!((100..=200).contains(&all), "{all} probes in the hour");
    }

    #[test]
    fn each_node_watches_the_next_id_wrapping_around() {
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            ("b", &["a", "c", "d"], Some("c")),
            ("d", &["a", "b", "c"], Some("a")),
            ("a", &[], None),
            ("a", &["a"], None), // ourselves, seen through our own browse
            ("m", &["z"], Some("z")),
        ];
        for (me, others, want) in cases {
            let got = ring(me, others).successor().map(|(id, _)| id);
            assert_eq!(got.as_deref(), *want, "{me} among {others:?}");
        }
    }

    #[test]
    fn the_nodes_after_a_new_successor_are_held_until_it_can_know_them() {
        let ids = |s: &[(String, Peer)]| s.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(&ring("d", &["a", "b", "c", "e"]).successors(3)),
            ["e", "a", "b"]
        );
        assert_eq!(ids(&ring("a", &["b"]).successors(3)), ["b"]);
        let mut s = ring("a", &["b", "c", "d", "e"]).successors(MAX_WATCHED);
        assert_eq!(ids(&s), ["b", "c", "d"]);
        let t = s[0].1.since;
        let second = Duration::from_secs(1);
        // Each came in after the one after it: each may not know the
        // next; the cap holds.
        s[0].1.since = t + 2 * second;
        s[1].1.since = t + second;
        s[2].1.since = t;
        let newest = t + 2 * second;
        assert_eq!(
            watched_now(&s, newest),
            (vec![0, 1, 2], Some(t + BLIND_FOR))
        );
        // Until the second can know the third, and the first the second.
        let (watched, change) = watched_now(&s, t + second + BLIND_FOR);
        assert_eq!((watched, change), (vec![0, 1], Some(newest + BLIND_FOR)));
        assert_eq!(watched_now(&s, newest + BLIND_FOR), (vec![0], None));
        // The successor came in before the node after it, so it heard
        // that node's first announcement: nothing to hold.
        s[0].1.since = t;
        s[1].1.since = t + second;
        s[2].1.since = t + 2 * second;
        assert_eq!(watched_now(&s, newest).0, [0]);
        // Two new nodes in the order they came in, and an old one after
        // them, which neither may know: the second knows the first, not
        // the old one.
        s[2].1.since = t;
        s[0].1.since = t + 100 * second;
        s[1].1.since = t + 110 * second;
        assert_eq!(watched_now(&s, t + 110 * second).0, [0, 2]);
        assert_eq!(watched_now(&s[..1], t).0, [0]);
        assert_eq!(watched_now(&[], t), (vec![], None));
    }

    #[test]
    fn a_node_introduces_itself_to_a_new_node_before_it_once_it_settled() {
        let t = tokio::time::Instant::now();
        let second = Duration::from_secs(1);
        let settled = |at| at + INTRODUCE_SETTLE..=at + INTRODUCE_SETTLE + second;
        let mut intro = Introduction::default();
        assert_eq!(ring("c", &[]).predecessor(), None);
        intro.follow(&ring("c", &[]), t);
        assert_eq!(intro.due, None, "alone: no one to introduce itself to");
        // A node before it, then another a moment later: one
        // introduction, once the ring settled, and its repeat.
        let r = ring("c", &["a", "d"]);
        assert_eq!(r.predecessor(), Some("a"));
        intro.follow(&r, t);
        let (first, again) = intro.due.unwrap();
        assert!(settled(t).contains(&first) && !again);
        let r = ring("c", &["a", "b", "d"]);
        assert_eq!(r.predecessor(), Some("b"));
        intro.follow(&r, t + second);
        assert_eq!(intro.due, Some((first, false)));
        intro.sent(first, true);
        assert_eq!(intro.due, Some((first + INTRODUCE_AGAIN, true)));
        // Another one while the repeat is due: the repeat, then another.
        let r = ring("c", &["a", "b", "bb", "d"]);
        intro.follow(&r, first + second / 2);
        assert_eq!(intro.due, Some((first + INTRODUCE_AGAIN, true)));
        intro.sent(first + INTRODUCE_AGAIN, true);
        let (next, again) = intro.due.unwrap();
        assert!(settled(first + INTRODUCE_AGAIN).contains(&next) && !again);
        intro.sent(next, true);
        intro.sent(next + INTRODUCE_AGAIN, true);
        assert_eq!(intro.due, None);
        // The same node before it: nothing new.
        intro.follow(&r, next + 10 * second);
        assert_eq!(intro.due, None);
        // A third soon after goes at once; a fourth (a stranger's fake
        // nodes) waits until the first is out of the window.
        let r = ring("c", &["a", "b", "bb", "bbb", "d"]);
        intro.follow(&r, next + 10 * second);
        let (third, _) = intro.due.unwrap();
        assert!(settled(next + 10 * second).contains(&third));
        intro.sent(third, true);
        intro.sent(third + INTRODUCE_AGAIN, true);
        let r = ring("c", &["a", "b", "bb", "bbb", "bbbb", "d"]);
        intro.follow(&r, third + 2 * second);
        assert_eq!(intro.due, Some((first + INTRODUCE_WINDOW, false)));
        // Nothing to send (mdns-sd still announces ours): no repeat, and
        // not counted.
        intro.sent(first + INTRODUCE_WINDOW, false);
        assert_eq!(intro.due, None);
        assert_eq!(intro.sent, [first, next, third]);
        // Wrapping around: the last id is before the first.
        assert_eq!(ring("a", &["b", "c"]).predecessor(), Some("c"));
        assert_eq!(ring("m", &["z"]).predecessor(), Some("z"));
    }

    #[tokio::test]
    async fn a_node_is_known_by_every_address_it_listed_a_few_of_them() {
        let web_b = format!("web@b.{SERVICE_TYPE}");
        let mut r = Ring::new("a");
        // Its watcher's link comes from the interface's primary address,
        // which need not be the lowest one, the probe's.
        let listed = ["10.0.0.9", "10.0.0.2", "::ffff:10.0.0.7"];
        let addrs: Vec<PeerAddr> = listed.iter().flat_map(|a| addr(a)).collect();
        r.seen("b", &web_b, &addrs, None);
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            r.addresses("b"),
            [v4("10.0.0.9"), v4("10.0.0.2"), v4("10.0.0.7")]
        );
        assert_eq!(r.successor().unwrap().1.addr, Some(v4("10.0.0.2")));
        let many: Vec<PeerAddr> = (1..=200)
            .flat_map(|i| addr(&format!("10.1.0.{i}")))
            .collect();
        r.seen("b", &web_b, &many, None);
        assert_eq!(r.addresses("b").len(), MAX_ADDRS);
        r.gone(&web_b);
        assert!(r.addresses("b").is_empty());
    }

    #[tokio::test]
    async fn an_instance_that_said_it_is_leaving_is_noted_while_it_is_in_the_ring() {
        let (web_b, stranger) = (
            format!("web@b.{SERVICE_TYPE}"),
            format!("x@q.{SERVICE_TYPE}"),
        );
        let mut r = Ring::new("a");
        r.set_leaving(&stranger, true);
        assert!(!r.is_leaving(&stranger), "not in the ring: not noted");
        r.seen("b", &web_b, &addr("10.0.0.1"), None);
        r.set_leaving(&web_b, true);
        assert!(r.is_leaving(&web_b));
        r.set_leaving(&web_b, false);
        assert!(!r.is_leaving(&web_b), "up again");
        r.set_leaving(&web_b, true);
        r.gone(&web_b);
        r.seen("b", &web_b, &addr("10.0.0.1"), None);
        assert!(!r.is_leaving(&web_b), "its goodbye cleared it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_restarted_under_its_id_is_linked_at_its_new_port_once_the_old_one_refuses() {
        let web_b = format!("web@b.{SERVICE_TYPE}");
        let link = |r: &Ring| r.successor().map(|(_, p)| (p.link, p.since)).unwrap();
        let mut r = Ring::new("a");
        r.seen("b", &web_b, &addr("10.0.0.1"), Some(4000));
        let (_, first) = link(&r);
        // A refusal before another port is heard (a node shutting down
        // closes its link a moment before its responder): nowhere to look.
        assert_eq!(r.moved("b", 4000), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        // Another port, unsealed (a stranger may send it): kept aside.
        r.seen("b", &web_b, &addr("10.0.0.1"), Some(5000));
        let heard = tokio::time::Instant::now();
        assert_eq!(link(&r), (Some(4000), first));
        tokio::time::advance(Duration::from_secs(5)).await;
        r.seen("b", &web_b, &addr("10.0.0.1"), Some(5000));
        // Not the port refused, or not a node: a stale report.
        assert_eq!(r.moved("b", 4001), None);
        assert_eq!(r.moved("c", 4000), None);
        // The kept port refused by a live node: its link is looked for at
        // the port heard last, and taken once it answers there; the node
        // is new since that port was first heard (the nodes after it are
        // held).
        assert_eq!(r.moved("b", 4000), Some("10.0.0.1:5000".parse().unwrap()));
        assert!(!r.restarted("b", 4000, 6000), "not the port heard last");
        assert!(r.restarted("b", 4000, 5000));
        assert_eq!(link(&r), (Some(5000), heard));
        assert!(!r.restarted("b", 4000, 5000), "once");
        assert_eq!(r.moved("b", 4000), None);
        // The node before this one announcing another port (its process
        // restarted) is a new node before it.
        let mut intro = Introduction::default();
        let mut r = ring("c", &["b"]);
        r.seen("b", &web_b, &addr("10.0.0.1"), Some(4000));
        let t = tokio::time::Instant::now();
        intro.follow(&r, t);
        intro.sent(t, true);
        intro.sent(t, true);
        assert_eq!(intro.due, None);
        r.seen("b", &web_b, &addr("10.0.0.1"), Some(4000));
        intro.follow(&r, t);
        assert_eq!(intro.due, None, "the same port: the same process");
        r.seen("b", &web_b, &addr("10.0.0.1"), Some(5000));
        intro.follow(&r, t);
        assert!(intro.due.is_some());
        // Its instances gone, the node leaves and forgets its ports.
        r.gone(&web_b);
        assert!(r.heard.is_empty());
    }

    #[test]
    fn a_node_leaves_the_ring_with_its_last_instance() {
        let mut r = ring("a", &["b", "c"]);
        r.seen(
            "b",
            &format!("api@b.{SERVICE_TYPE}"),
            &addr("10.0.0.1"),
            None,
        );
        r.gone(&format!("web@b.{SERVICE_TYPE}"));
        assert_eq!(r.successor().unwrap().0, "b");
        r.gone(&format!("api@b.{SERVICE_TYPE}"));
        assert_eq!(r.successor().unwrap().0, "c");
    }

    #[test]
    fn a_failed_instance_names_the_node_to_try() {
        let r = ring("a", &["b", "c"]);
        let (node, peer) = r.owner(&format!("web@c.{SERVICE_TYPE}")).unwrap();
        assert_eq!((node.as_str(), peer.host.as_str()), ("c", "amb-c.local."));
        // Third-party instances have no node: the one-query verify stays.
        assert!(r.owner(&format!("web@avahi.{SERVICE_TYPE}")).is_none());
    }

    #[test]
    fn an_instance_two_nodes_claim_names_the_probed_one_and_leaves_both() {
        // A stranger's record can name a live node's instance under
        // another node id; the lookup and the removal must see both.
        let mut r = ring("a", &["b", "c"]);
        let web_c = format!("web@c.{SERVICE_TYPE}");
        r.seen("b", &web_c, &addr("10.0.0.1"), None);
        assert_eq!(r.owner(&web_c).unwrap().0, "b", "the first by id");
        let mut unprobed = ring("a", &["c"]);
        unprobed.seen("b", &web_c, &addr("127.0.0.1"), None);
        assert_eq!(unprobed.owner(&web_c).unwrap().0, "c", "b has no address");
        r.gone(&web_c);
        assert!(r.owner(&web_c).is_none());
        assert!(r.knows("b"), "b keeps its own instance");
        assert!(!r.knows("c"), "c had no other");
        let left: Vec<&String> = r.owners.keys().collect();
        assert_eq!(left, [&format!("web@b.{SERVICE_TYPE}")]);
    }

    #[test]
    fn a_strangers_instance_under_a_live_node_id_neither_moves_its_watch_nor_joins_its_goodbye() {
        let (real, evil) = (
            format!("redis@b.{SERVICE_TYPE}"),
            format!("evil@b.{SERVICE_TYPE}"),
        );
        let at = |r: &Ring| {
            let (_, p) = r.successor().unwrap();
            (p.addr.unwrap().to_string(), p.instances)
        };
        // Heard after the node's own: the watch stays where it was.
        let mut r = Ring::new("a");
        r.seen("b", &real, &addr("10.0.0.1"), None);
        r.seen("b", &evil, &addr("10.0.0.2"), None);
        assert_eq!(at(&r), ("10.0.0.1".into(), vec![real.clone()]));
        // A failed connect to the stranger's instance probes its address,
        // and a verdict there names it alone.
        let (_, p) = r.owner(&evil).unwrap();
        assert_eq!(
            (p.addr, p.instances),
            (Some("10.0.0.2".parse().unwrap()), vec![evil.clone()])
        );
        // Heard first: the node is watched there, and a verdict there
        // names the stranger's instance only; once it is gone, the node's.
        let mut r = Ring::new("a");
        r.seen("b", &evil, &addr("10.0.0.2"), None);
        r.seen("b", &real, &addr("10.0.0.1"), None);
        assert_eq!(at(&r), ("10.0.0.2".into(), vec![evil.clone()]));
        r.gone(&evil);
        assert_eq!(at(&r), ("10.0.0.1".into(), vec![real.clone()]));
    }

    #[test]
    fn peers_without_a_probe_address_are_not_watched() {
        let mut r = Ring::new("a");
        r.seen(
            "b",
            &format!("web@b.{SERVICE_TYPE}"),
            &addr("127.0.0.1"),
            None,
        );
        assert!(r.successor().is_none());
        let web_b = format!("web@b.{SERVICE_TYPE}");
        r.seen("b", &web_b, &addr("fe80::1"), None);
        assert!(r.successor().is_none());
        r.seen("b", &web_b, &addr("10.0.0.2"), None);
        assert_eq!(
            r.successor().unwrap().1.addr,
            Some("10.0.0.2".parse().unwrap())
        );
    }

    #[test]
    fn the_linked_probes_of_a_big_ring_share_a_fixed_budget() {
        for size in [1, 2, 30] {
            assert_eq!(linked_period(size), LINKED_PROBE_EVERY, "{size} nodes");
        }
        assert_eq!(linked_period(64), Duration::from_secs(32));
        for size in [31, 64, 120] {
            let packets = size as f64 / linked_period(size).as_secs_f64();
            assert!(
                (packets - RING_PACKETS_PER_SECOND).abs() < 1e-9,
                "{size} nodes: {packets} packets/s"
            );
        }
        // A flood of fake nodes does not stretch it further.
        assert_eq!(linked_period(MAX_NODES + 1), LINKED_PROBE_MOST);
    }

    /// Drives a [`Fallback`] through an ask whose beats never come: the
    /// periods it waits asking, then the probed periods until it asks again.
    fn ask_unanswered(f: &mut Fallback) -> u32 {
        assert_eq!(
            f.period_passed(true, false),
            Turn::Wait,
            "gave up after one lost beat"
        );
        assert_eq!(f.period_passed(true, false), Turn::ProbeInstead);
        for n in 1.. {
            match f.period_passed(false, false) {
                Turn::Wait => {}
                Turn::AskAgain { probed } => {
                    assert_eq!(probed, n);
                    return n;
                }
                Turn::ProbeInstead => panic!("gave up on a link that did not ask"),
            }
        }
        unreachable!()
    }

    #[test]
    fn a_watcher_asks_for_beats_again_ever_later_until_one_comes() {
        let mut f = Fallback::default();
        let waits: Vec<u32> = (0..6).map(|_| ask_unanswered(&mut f)).collect();
        assert_eq!(waits, [4, 8, 16, 32, 32, 32]);

        // This ask is answered: a link that heard a beat never gives up,
        // however many later beats are lost (each late one is probed).
        assert_eq!(f.period_passed(true, false), Turn::Wait);
        f.heard_beat();
        for _ in 0..10 {
            assert_eq!(f.period_passed(true, true), Turn::Wait);
        }
        // The beats stop on a later link (the node moved behind a
        // firewall): the wait starts over from the shortest.
        assert_eq!(ask_unanswered(&mut f), 4);
        assert_eq!(ask_unanswered(&mut f), 8);
    }

    #[test]
    fn a_link_that_never_asked_for_beats_is_only_probed() {
        let mut f = Fallback::default();
        for _ in 0..100 {
            assert_eq!(f.period_passed(false, false), Turn::Wait);
        }
    }

    #[test]
    fn packets_are_well_formed() {
        let q = question("amb-b.local.", TYPE_A, 0x1234);
        assert_eq!(&q[..6], &[0x12, 0x34, 0, 0, 0, 1]);
        assert_eq!(&q[12..], b"\x05amb-b\x05local\x00\x00\x01\x00\x01");
        let g = goodbye(&[format!("web@b.{SERVICE_TYPE}")]);
        assert_eq!(&g[..8], &[0, 0, 0x84, 0, 0, 0, 0, 1]);
        let ttl_at = 12 + "\x04_amb\x04_tcp\x05local\x00".len() + 4;
        assert_eq!(&g[ttl_at..ttl_at + 4], &[0, 0, 0, 0]);
        assert!(g.ends_with(b"\x05web@b\x04_amb\x04_tcp\x05local\x00"));
    }

    /// A peer without a probe address: its trial ends without sending a
    /// thing (nor a goodbye), but holds its place until [`Trials::next`]
    /// takes its verdict.
    fn nobody(id: &str) -> Peer {
        Peer {
            host: super::super::wire::host_name(id),
            addr: None,
            instances: vec![format!("web@{id}.{SERVICE_TYPE}")],
            link: None,
            since: tokio::time::Instant::now(),
            restarted: false,
        }
    }

    #[tokio::test]
    async fn a_suspect_takes_the_place_of_the_oldest_dead_watch() {
        let mut trials = Trials::default();
        for i in 0..MAX_TRIALS {
            trials.dead(format!("dead{i}"), nobody(&format!("dead{i}")));
            // Distinct start times: the oldest is dead0.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let on_trial = |t: &Trials, n: &str| t.nodes.values().any(|o| o.node == n);
        // Full: another dead node waits for its next verdict...
        trials.dead("late".into(), nobody("late"));
        assert!(!on_trial(&trials, "late"));
        // ...but a suspect is checked, in the oldest watch's place.
        trials.suspect("suspect".into(), nobody("suspect"));
        assert_eq!(trials.nodes.len(), MAX_TRIALS);
        assert!(on_trial(&trials, "suspect"));
        assert!(!on_trial(&trials, "dead0"));
        assert!(on_trial(&trials, "dead1"));
        // With every place a suspect's, the next one waits.
        let mut full = Trials::default();
        for i in 0..MAX_TRIALS {
            full.suspect(format!("s{i}"), nobody(&format!("s{i}")));
        }
        full.suspect("more".into(), nobody("more"));
        assert!(!on_trial(&full, "more"));
        assert_eq!(full.nodes.len(), MAX_TRIALS);
    }
}
