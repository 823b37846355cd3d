//! This node's mDNS responder and browser (mdns-sd), and the task that turns
//! browse events into table updates.
//!
//! mdns-sd 0.21.7 facts this code is shaped by (measured on the project's
//! namespace lab, and read from its source): resolve events
//! repeat, so every one is an upsert; removals can come twice, so removal is
//! idempotent; a second browse of a type replaces the first, so there is one
//! browse and an internal fan-out; the event channel closes silently when it
//! fills, so it is drained promptly and re-opened when it ends; a crashed
//! peer lingers for its 120 s TTL, so the witness ring ([`super::witness`])
//! says the goodbye of a crashed peer for the whole link, and a connect
//! failure puts the mesh node behind the instance on trial (its responder
//! probed several times; mdns-sd's one-query `verify` only for third-party
//! instances, which have no node to probe).
//!
//! The browse is never restarted on a timer: mdns-sd backs its own query
//! off (1, 2, 4... s up to an hour), and each provider announces its records
//! again before caches would query for them ([`REFRESH_EVERY`]), which
//! keeps an idle link near silent. A restart resets
//! that back-off on every node that makes it, and restarts on a timer,
//! starting together, made the whole mesh query and answer in the same
//! second.
//!
//! With the cluster key, our records carry a seal ([`crate::security::advert`])
//! and a peer's record is used only when its seal checks, and then only
//! with the addresses it signs.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use mdns_sd::{
    DaemonEvent, IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::addr::{self, PeerAddr};
use super::away::{self, Away, Clocks};
use super::reconfirm::{self, Reconfirms};
use super::refusals::Refusals;
use super::removals::Removals;
use super::replay::{Cause, Clearing, Leftovers, Listed, Replay, Whole, REPLAY_MOST};
use super::stats::DiscoveryStats;
use super::verifying::{Action, Verifications};
use super::wire::{self, Advert, Flaw, State, SERVICE_TYPE};
use super::witness::{self, Aim, News, Ring, Trials, Verdict};
use crate::backends::table::{Backend, BackendSpec, Health, Origin, Snapshot, Target, Update};
use crate::backends::Service;
use crate::net::loglimit::LogLimit;
use crate::net::route;
use crate::security::advert::{self, AdvertKey, Fields, Reject, Verifier};
use crate::security::ClusterKey;
use crate::settings::DiscoverySettings;
use crate::spec::ProvideSpec;

/// How long a third-party peer that failed a connect gets to answer a
/// verification query before browsers drop it: a crashed peer leaves in
/// this time instead of its two-minute TTL. Measured with mdns-sd 0.21.7: 1 s removed live
/// instances now and then (2-4 false removals in 24 s when two browsers
/// verified at once); 2 s gave none in over 200 verifications.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(2);
/// Goodbyes are sent by the daemon thread; waiting this long for its
/// acknowledgement covers a busy machine without hanging shutdown.
pub(crate) const DAEMON_REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before re-opening a browse that ended, so a daemon in trouble is
/// not asked in a tight loop. It doubles for each browse in a row that
/// ended within [`REBROWSE_MOST`] of its start, up to that. A browse
/// ended with a crowded cache (a burst of more events than mdns-sd's
/// channel holds: a new address for a host of 16,384 instances) is
/// reopened by a clearing instead, in the clearings' turn
/// (`replay::Clearing`).
const REBROWSE_DELAY: Duration = Duration::from_millis(100);
const REBROWSE_MOST: Duration = Duration::from_secs(10);

/// The pause before re-opening a browse that ended, the `n`th in a row
/// (from 0) to end within [`REBROWSE_MOST`] of its start.
fn rebrowse_pause(n: u32) -> Duration {
    (REBROWSE_DELAY * 2u32.pow(n.min(7))).min(REBROWSE_MOST)
}
/// Re-browse about this soon after a verification of ours removed an
/// instance (debounced: one restart per burst), so one that was falsely
/// suspected is found again in seconds, not at mdns-sd's next query
/// (up to an hour away). Only this node restarts: a goodbye, which every
/// node hears, restarts nobody.
const REBROWSE_AFTER_REMOVAL: Duration = Duration::from_secs(1);
/// Random spread added to [`REBROWSE_AFTER_REMOVAL`], so nodes that
/// verified the same instance do not query in step.
const REBROWSE_JITTER: Duration = Duration::from_secs(2);
/// How long the one browse that queries of a node that only listens lasts
/// (see [`browse`]): its first query goes out within 120 ms of its start
/// (RFC 6762 §5.2), the answers within about 120 ms more, and its second
/// query would go a second after the first.
const ASK_ONCE_FOR: Duration = Duration::from_millis(900);
/// How long after its question about a linked node's records (see
/// [`Mdns::ask`]) a listener asks again, if the node's answer has not
/// come: a node answers a question for its unique records at once (RFC
/// 6762 §6), so by then the question or the answer was lost; and
/// mdns-sd multicasts a record at most once a second, so a second
/// question sooner draws no second answer.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(1200);
/// How many times a listener asks a linked node for its records at most:
/// with 10 % of the mDNS lost at every host, one question and its answer
/// get through 81 % of the time, three in a row fail 0.7 % of the time.
/// Each costs the question and one answer; a failure, the node dropped
/// from the ring until its next refresh, and the watch or introductions
/// that follow.
const ASKS_MOST: u32 = 3;
/// How long a removal asked about waits for the last answer.
const ASKED_WAIT: Duration = ASK_AGAIN_AFTER
    .saturating_mul(ASKS_MOST - 1)
    .saturating_add(REMOVAL_GRACE);
/// Most instances of one node asked for in one question (see
/// [`Mdns::ask`]): a node's few services in one packet, and a bound on
/// a stranger's records under a linked node's id. The others wait for
/// the node's next refresh.
const ASKED_INSTANCES_MOST: usize = 8;
/// How long after a flood its clearing comes at the soonest, and the
/// random spread added (see [`after_a_flood`]). mdns-sd first asks about
/// a record 96 s after it came (at 80 % of its 2 minutes), so nothing is
/// lost by waiting.
const FLOOD_SETTLE: Duration = Duration::from_secs(2);
const FLOOD_SPREAD: Duration = Duration::from_secs(8);
/// What the witness tells the browse (nodes declared dead, waiting to be
/// put on trial; links refused by live nodes), waiting: a few, as each of
/// its watches tells at most one a period.
const NEWS_QUEUE: usize = 8;
/// How long after this host's link came back a node that only provides
/// asks the link about the instances held for it (see `removals`): once
/// mdns-sd's interface check (every 5 s) has taken the interface in
/// again, well within the grace they have to resolve again
/// (`removals::LINK_BACK_GRACE`).
const LINK_BACK_ASK: Duration =
    Duration::from_secs(mdns_sd::IP_CHECK_INTERVAL_IN_SECS_DEFAULT as u64 + 1);
/// Random spread added to [`LINK_BACK_ASK`]: the nodes behind a switch
/// that restarted see their links come back together.
const LINK_BACK_SPREAD: Duration = Duration::from_secs(1);
/// How long after that it asks again, if any is still held.
const LINK_BACK_ASK_AGAIN: Duration = Duration::from_secs(4);
/// How often at most a listener asks one node whose records ran out
/// while a ring link between them was up for them (see [`browse`]): once
/// per refresh of its records, so that a stranger's records under a
/// linked node's id, short-lived, cost [`ASKS_MOST`] queries a minute at
/// most.
const MISSED_ASK_EVERY: Duration = REFRESH_EVERY.start;
/// Most nodes a listener asks about in [`MISSED_ASK_EVERY`]: in a settled
/// ring, the one it watches and the one before it, with room for a node
/// it holds while new; so that a stranger's fake nodes, linked and then
/// said goodbye for one after another, cost no more.
const MISSED_ASKS_MOST: usize = 3;
/// Most ring links checked at once at a new port (see `Ring::moved`): one
/// per node watched.
const LINK_CHECKS_MOST: usize = 3;
/// The one browse restart a node makes on its own, at a random time this
/// long after it starts browsing, plus up to [`DESYNC_SPREAD`]. mdns-sd's
/// queries back off from a browse's start (1, 2, 4 ... s, up to an hour),
/// each carrying every known answer (~15 packets, IPv4 and IPv6, at 64
/// hosts): nodes started together (after a power cut, a lab's start)
/// stay in step, and put ~900-1,600 packets on the link in one second at
/// each doubling (measured at 64 hosts). One restart at a random time
/// spreads those steps for good, for one more series of early queries.
const DESYNC_AFTER: Duration = Duration::from_secs(10);
const DESYNC_SPREAD: Duration = Duration::from_secs(60);
/// How long a removal reported by mdns-sd waits before it is applied: if
/// the instance resolves again meanwhile, it stays. Measured at 64 hosts
/// started together: about 72 s after the start, mdns-sd reported live
/// instances removed and resolved again 16 ms later (an instance briefly
/// left without a valid record while its records were replaced), up to
/// 400 such removals in one second across the tables. A real leave is
/// already announced by its draining state, and a crash by its goodbye a
/// second before; this adds one second to either.
const REMOVAL_GRACE: Duration = Duration::from_secs(1);
/// How long after a clearing of the cache (see `replay::Clearing`) a
/// removal waits [`REMOVAL_GRACE_FRESH`] instead, and one of our own
/// instances is not taken for a goodbye. mdns-sd relearns every live
/// instance from the link then, and a PTR record that comes without the
/// rest (its additionals held back by the responder's once-a-second rate
/// limit, or in another packet) makes it report a live instance removed
/// until the rest comes, a second or so later.
const FRESH_FOR: Duration = Duration::from_secs(10);
const REMOVAL_GRACE_FRESH: Duration = Duration::from_secs(5);
/// How long after a verification of ours a removal counts as its result.
const VERIFIED_RECENTLY: Duration = Duration::from_secs(5);
/// How often a consumer with the key drops instances whose newest signature
/// has expired (a provider killed without goodbye, or one that stopped
/// re-signing): within seconds of the end of validity.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);
/// Browse events waiting for the tables. mdns-sd's own channel (16,384 in
/// the vendored copy, 1,000 upstream) closes the browse when it fills; a
/// flood of records (10,000 fake instances) comes faster than records can
/// be checked and applied. So a task of its own moves events from that
/// channel into this queue as they come, which never closes: when it is full,
/// events are dropped and counted, and the next re-browse brings back what
/// they said. About 1 KiB an event: a few MiB at most.
const EVENT_QUEUE: usize = 4096;
/// How often the browse looks whether events were dropped (see
/// [`EVENT_QUEUE`]). Dropped events are lost news (an arrival, a removal)
/// that nothing else repeats: mdns-sd reports an instance once, and the
/// link re-sends nothing while nothing changes. So once a check finds no
/// new drops (the flood ebbed), the browse restarts: mdns-sd replays its
/// cache, which brings back the arrivals, and what the replay lacks is
/// swept once its responder does not answer for it (see `reconfirm`),
/// which applies the removals.
const DROPS_CHECK: Duration = Duration::from_secs(10);
/// Least time between two such recoveries: a restarted browse queries the
/// link with every known answer (many packets after a flood of records),
/// so a node on a link that floods again and again re-queries this seldom.
const RECOVER_EVERY: Duration = Duration::from_secs(120);
/// Most discovered instances in one service's table. Far above a real
/// deployment of one service on one link (mDNS is for a link: tens to
/// hundreds of hosts), low enough that a flood of fake records costs at
/// most ~0.5 MB per service and each connect's ordering of the table stays
/// in the tens of microseconds.
pub const MAX_INSTANCES_PER_SERVICE: usize = 1024;
/// Most discovered instances in all tables together: room for a few full
/// services, one bound on a node's memory however many it consumes.
pub const MAX_INSTANCES: usize = 4096;

/// What consumers are told to dial for a provided service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The SRV port: the local service's, or its TLS terminator's.
    pub port: u16,
    /// The port speaks mutual TLS.
    pub tls: bool,
}

/// What the seal of one announcement covered, to tell when it is due again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The host's addresses it was chosen from.
    pub candidates: Vec<IpAddr>,
    /// The addresses consumers may dial.
    pub signed: Vec<IpAddr>,
    /// Addresses left out by preference or for room in the TXT record.
    pub left_out: Vec<IpAddr>,
    /// Signing time, unix seconds.
    pub signed_at: u64,
}

/// How often our records are announced again, unasked, spread at random
/// over this range. mdns-sd (as RFC 6762 §5.2 asks) queries for a cached
/// record at 80 % of its TTL, 96 s for the 120 s host records, and every
/// cache that heard the same announcement reaches that point in the same
/// millisecond: at 64 hosts each node's records drew about 60 queries and
/// their answers every 96 s, some 40 packets a second on an idle link,
/// growing with the square of the hosts. An announcement heard before
/// that point restarts every cache's clock at the cost of one packet per
/// interface ([`super::refresh`]); a cache that missed it asks once, and
/// its answer, multicast, refreshes the others.
pub const REFRESH_EVERY: std::ops::Range<Duration> =
    Duration::from_secs(60)..Duration::from_secs(80);

/// How long an announcement handed to mdns-sd is left out of the refresh
/// of the node's other instances: its conflict probe (750 ms) and first
/// announcement are over by then.
const FRESH: Duration = Duration::from_secs(2);

/// One instance of ours as announced, and when to announce it again.
struct Announced {
    info: ServiceInfo,
    /// The same under [`wire::leaving_host_name`], for its goodbye.
    leaving: ServiceInfo,
    /// When it was handed to mdns-sd.
    since: Instant,
    refresh_at: Instant,
}

impl Announced {
    fn new(info: ServiceInfo, leaving: ServiceInfo) -> Announced {
        Announced {
            info,
            leaving,
            since: Instant::now(),
            refresh_at: Announced::next_refresh(),
        }
    }

    fn next_refresh() -> Instant {
        let spread = REFRESH_EVERY.end - REFRESH_EVERY.start;
        Instant::now() + REFRESH_EVERY.start + spread.mul_f64(fastrand::f64())
    }
}

/// This node's mDNS daemon.
pub struct Mdns {
    daemon: ServiceDaemon,
    /// This node's id (instance labels, host name).
    node_id: String,
    /// `amb-<node>.local.`, unique per node.
    host: String,
    /// Fixed advertised addresses; empty means "those of the interfaces".
    advertise: Vec<IpAddr>,
    /// Interfaces our records are announced on.
    ifaces: Vec<IfKind>,
    /// `--interface` names: their addresses are the ones we sign.
    iface_names: Vec<String>,
    /// Seals our records and checks peers'; `None` without a cluster key.
    key: Option<AdvertKey>,
    /// Last signing time per instance label: each seal is newer than the
    /// one before, so a consumer can refuse an older one as a replay.
    signed_at: Mutex<HashMap<String, u64>>,
    /// mdns-sd renamed a record of ours after a conflict probe: from then
    /// on the refreshes go through mdns-sd, which knows the names it won
    /// ([`Mdns::refresh_if_due`]).
    renamed: Arc<AtomicBool>,
    /// What is announced now, by lower-case full name: announced again
    /// when the link says goodbye for it while it lives (a witness's
    /// mistake, or a forgery), and before caches would query for it.
    announced: Mutex<HashMap<String, Announced>>,
    /// The ring link listener until [`Mdns::take_link`] hands it to its
    /// task, and its port, which our advertisements name.
    link: Mutex<Option<std::net::TcpListener>>,
    link_port: Option<u16>,
    /// Who holds a ring link to this node: its watchers.
    watchers: super::link::Watchers,
}

impl Mdns {
    /// Starts the daemon, restricted to the configured interfaces or
    /// addresses when there are any; with `key`, our advertisements are
    /// sealed and only sealed ones are used.
    pub fn start(settings: &DiscoverySettings, key: Option<&ClusterKey>) -> anyhow::Result<Mdns> {
        let mut ifaces: Vec<IfKind> = settings
            .interfaces
            .iter()
            .map(|i| IfKind::Name(i.clone()))
            .collect();
        ifaces.extend(settings.advertise_addrs.iter().map(|a| IfKind::Addr(*a)));
        // Accepted by the settings: it exists, and is taken up once it has
        // an address (mdns-sd reads the interfaces every 5 s).
        let have = super::ifaces::current();
        for name in &settings.interfaces {
            if !have.iter().any(|i| &i.name == name) {
                warn!(interface = %name,
                    "no address on the interface yet: mDNS runs on it once it has one (within about 5 s)");
            }
        }
        let daemon = start_daemon(&ifaces)?;
        let renamed = Arc::new(AtomicBool::new(false));
        if settings.probe {
            watch_renames(&daemon, renamed.clone());
        }
        // Without one, watchers probe this node at their faster pace.
        let link = super::link::bind()
            .inspect_err(|e| warn!(error = %e, "no ring link: watchers will probe more often"))
            .ok();
        let link_port = link
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        if ifaces.is_empty() {
            ifaces.push(IfKind::All);
        }
        Ok(Mdns {
            daemon,
            host: wire::host_name(&settings.node_id),
            node_id: settings.node_id.clone(),
            advertise: settings.advertise_addrs.clone(),
            ifaces,
            iface_names: settings.interfaces.clone(),
            key: key.map(AdvertKey::new),
            signed_at: Mutex::new(HashMap::new()),
            renamed,
            announced: Mutex::new(HashMap::new()),
            link: Mutex::new(link),
            link_port,
            watchers: Default::default(),
        })
    }

    /// Runs until `stop`: pauses mdns-sd's interface check while the
    /// process is out of descriptors ([`super::ifaces`]).
    pub fn pause_interface_check_when_short(
        &self,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        super::ifaces::pause_mdns_check_when_short(self.daemon.clone(), stop)
    }

    /// The ring link listener, for [`super::link::serve`], and where it
    /// notes its watchers; `None` after the first call or when it could
    /// not be bound.
    pub fn take_link(&self) -> Option<(std::net::TcpListener, super::link::Watchers)> {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some((link, self.watchers.clone()))
    }

    /// The DNS-SD full name of our instance of `p`.
    pub fn fullname(&self, p: &ProvideSpec) -> String {
        format!(
            "{}.{SERVICE_TYPE}",
            wire::instance_label(&p.name, &self.node_id)
        )
    }

    /// Announces (or re-announces with a new state) our instance of `p`.
    /// `probe` runs RFC 6762's conflict probe first (750 ms): worth it only
    /// when the node id came from the user, who may have copied one config
    /// to several hosts; a random 32-bit id does not collide in practice.
    /// Not with the key (see below).
    /// Never probe a re-announcement: mdns-sd answers no query meanwhile.
    /// With the key, returns what the seal covered.
    pub fn advertise(
        &self,
        p: &ProvideSpec,
        offer: Offer,
        state: State,
        probe: bool,
    ) -> anyhow::Result<Option<Stamp>> {
        let label = wire::instance_label(&p.name, &self.node_id);
        let mut txt = wire::txt(&p.name, &self.node_id, p.weight, state, offer.tls);
        if let Some(port) = self.link_port {
            txt.push((wire::LINK_KEY.into(), port.to_string()));
        }
        let stamp = self.key.as_ref().map(|key| {
            let candidates = self.signable_addrs();
            let (signed, left_out) = advert::fit_addrs(&candidates, advert::pairs_len(&txt));
            let signed_at = self.next_signing_time(&label);
            let state = state.to_string();
            let fields = Fields {
                label: &label,
                service: &p.name,
                node: &self.node_id,
                port: offer.port,
                weight: p.weight,
                state: &state,
                tls: offer.tls,
            };
            txt.extend(key.sign(&fields, signed_at, &signed));
            Stamp {
                candidates,
                signed,
                left_out,
                signed_at,
            }
        });
        let info = |host: &str| {
            let mut info = ServiceInfo::new(
                SERVICE_TYPE,
                &label,
                host,
                &self.advertise[..],
                offer.port,
                &txt[..],
            )
            .with_context(|| format!("cannot build the advertisement of {p}"))?;
            if self.advertise.is_empty() {
                info = info.enable_addr_auto();
            }
            info.set_interfaces(self.ifaces.clone());
            info.set_requires_probe(false);
            anyhow::Ok(info)
        };
        let again = info(&self.host)?;
        let leaving = info(&wire::leaving_host_name(&p.name, &self.node_id))?;
        let mut first = again.clone();
        // With the key, the seal says whose a name is, not who took it
        // first: a stranger who announced `redis@victim` before the node
        // started had mdns-sd rename ours (`redis@victim (2)`), which no
        // longer matched its seal, and hid it from every keyed consumer
        // for the process's life. Its unsigned records are refused anyway.
        first.set_requires_probe(probe && self.key.is_none());
        // Stored before the daemon has it, under the lock: a refresh of
        // the node's other instances meanwhile must not send this one's
        // previous records after the daemon's new ones.
        let fullname = self.fullname(p).to_lowercase();
        let mut announced = self.announced_mut();
        let previous = announced.insert(fullname.clone(), Announced::new(again, leaving));
        if let Err(e) = self.daemon.register(first) {
            match previous {
                Some(a) => announced.insert(fullname, a),
                None => announced.remove(&fullname),
            };
            return Err(e).with_context(|| format!("cannot advertise {p}"));
        }
        Ok(stamp)
    }

    /// Whether the seal described by `stamp` must be made again: it is
    /// half-way through its validity, or the host's addresses changed
    /// (a `getifaddrs`, microseconds: cheap at every provider check).
    pub fn resign_due(&self, stamp: &Stamp) -> bool {
        unix_now()
            >= stamp
                .signed_at
                .saturating_add(advert::RESIGN_AFTER.as_secs())
            || self.signable_addrs() != stamp.candidates
    }

    /// The addresses mdns-sd announces for us, which are the ones worth
    /// signing: the `--advertise-addr` ones, or those of the `--interface`
    /// ones, or all of the host's. Sorted, to compare.
    fn signable_addrs(&self) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = if self.advertise.is_empty() {
            super::ifaces::current()
                .into_iter()
                .filter(|i| self.iface_names.is_empty() || self.iface_names.contains(&i.name))
                .map(|i| i.ip())
                .collect()
        } else {
            self.advertise.clone()
        };
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Now, or one second after the previous seal of `label` if that is
    /// later: consumers refuse an older seal than one they accepted, so two
    /// announcements within a second (up, then down) must differ.
    fn next_signing_time(&self, label: &str) -> u64 {
        let mut last = self.signed_at.lock().unwrap_or_else(|e| e.into_inner());
        let at = last
            .get(label)
            .map_or(0, |t| t.saturating_add(1))
            .max(unix_now());
        last.insert(label.to_owned(), at);
        at
    }

    /// Whether `fullname` is an instance of ours, announced.
    fn announces(&self, fullname: &str) -> bool {
        self.announced_mut().contains_key(&fullname.to_lowercase())
    }

    fn announced_mut(&self) -> std::sync::MutexGuard<'_, HashMap<String, Announced>> {
        self.announced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces `fullname` again if it is ours and still announced: the
    /// link was told it is gone while it is not. Whether it was ours.
    fn defend(&self, fullname: &str) -> bool {
        let mut announced = self.announced_mut();
        let Some(a) = announced.get_mut(&fullname.to_lowercase()) else {
            return false;
        };
        if super::refresh::interfaces(&self.ifaces).is_empty() {
            // mdns-sd left every interface it announced ours on (their
            // link down, their address gone), with what it had cached from
            // them: nobody said a goodbye. It announces ours on an interface
            // when it is back (vendor/mdns-sd/PATCHED.md, 5); handed over
            // again now, it does so without a new conflict probe.
            info!(instance = %fullname, "no interface to announce our instance on (this host's link down, or its address gone) until one is back");
        } else {
            warn!(instance = %fullname, "the link said goodbye for our live instance; announcing it again");
        }
        self.register_again(fullname, a);
        true
    }

    /// Announces again each instance of ours that a whole replay of the
    /// cache into a new browse lacked (`seen`: what it resolved). A
    /// goodbye said for it in the second before the restart cut its
    /// records' TTL to one second, and mdns-sd's replay leaves out records
    /// about to expire; then either they expire, and the removal event
    /// may fall in the moment between the old browse and the new one, or
    /// the answers to the new browse's first query renew them, which
    /// raises no event at all. Either way no removal reaches
    /// [`Mdns::defend`]. One handed to mdns-sd moments ago ([`FRESH`]) may
    /// not be replayed yet.
    fn defend_unreplayed(&self, seen: &HashSet<String>) {
        let seen: HashSet<String> = seen.iter().map(|s| s.to_lowercase()).collect();
        let mut announced = self.announced_mut();
        for (fullname, a) in announced.iter_mut() {
            if a.since.elapsed() >= FRESH && !seen.contains(fullname) {
                warn!(instance = %fullname, "our live instance was missing from the restarted browse's replay (a goodbye said for it); announcing it again");
                self.register_again(fullname, a);
            }
        }
    }

    /// Announces every instance of ours again, logging `why`: the link may
    /// have dropped them.
    fn announce_again(&self, why: &str) {
        // Under the lock: a withdrawal running meanwhile must not be undone
        // by announcing what it just removed (register only queues a
        // command for the daemon's thread, so holding the lock is brief).
        let mut announced = self.announced_mut();
        for (fullname, a) in announced.iter_mut() {
            info!(instance = %fullname, "{why}; announcing again");
            self.register_again(fullname, a);
        }
    }

    /// Announces our instances again once the records of `p`'s near the
    /// point where caches would query for them ([`REFRESH_EVERY`]): all of
    /// them in one packet per interface ([`super::refresh`]), or through
    /// mdns-sd if that cannot be sent, or if a conflict probe may have
    /// renamed them.
    pub fn refresh_if_due(&self, p: &ProvideSpec) {
        let fullname = self.fullname(p).to_lowercase();
        let mut announced = self.announced_mut();
        if announced
            .get(&fullname)
            .is_none_or(|a| Instant::now() < a.refresh_at)
        {
            return;
        }
        debug!(
            instances = announced.len(),
            "announcing again before caches query for it"
        );
        self.refresh(&mut announced);
    }

    /// Announces our instances again for a new node before us in the
    /// ring, which may not know them yet (see `witness::Aim::introduced`);
    /// whether it did. Not while mdns-sd still announces every one of
    /// them (`FRESH`), nor without any.
    pub fn introduce(&self) -> bool {
        let mut announced = self.announced_mut();
        if !announced.values().any(|a| a.since.elapsed() >= FRESH) {
            return false;
        }
        debug!(
            instances = announced.len(),
            "announcing again for a new node before us in the ring"
        );
        self.refresh(&mut announced);
        true
    }

    /// Announces `announced` again: all of them in one packet per
    /// interface ([`super::refresh`]), or through mdns-sd if that cannot
    /// be sent, or if a conflict probe may have renamed them (mdns-sd
    /// knows the names it won).
    fn refresh(&self, announced: &mut HashMap<String, Announced>) {
        // One announced a moment ago is fresh in every cache, and may be
        // in its conflict probe still.
        let ripe = |a: &Announced| a.since.elapsed() >= FRESH;
        if self.renamed.load(Ordering::Relaxed) {
            for (fullname, a) in announced.iter_mut().filter(|(_, a)| ripe(a)) {
                self.register_again(fullname, a);
            }
            return;
        }
        let infos: Vec<&ServiceInfo> = announced
            .values()
            .filter(|a| ripe(a))
            .map(|a| &a.info)
            .collect();
        let intfs = super::refresh::interfaces(&self.ifaces);
        if let Err(e) = super::refresh::send(&infos, &intfs, &self.advertise) {
            warn!(error = %e, "cannot send the refresh of our records; mdns-sd announces them instead");
            for (fullname, a) in announced.iter_mut() {
                self.register_again(fullname, a);
            }
            return;
        }
        for a in announced.values_mut() {
            a.refresh_at = Announced::next_refresh();
        }
    }

    /// Hands a stored announcement to the daemon again.
    fn register_again(&self, fullname: &str, a: &mut Announced) {
        a.refresh_at = Announced::next_refresh();
        if let Err(e) = self.daemon.register(a.info.clone()) {
            warn!(instance = %fullname, error = %e, "cannot announce again");
        }
    }

    /// Withdraws our instance of `p` (goodbye packets) and waits until the
    /// daemon has sent them. Withdrawing what is not advertised is fine.
    pub async fn withdraw(&self, p: &ProvideSpec) -> anyhow::Result<()> {
        let announced = self
            .announced_mut()
            .remove(&self.fullname(p).to_lowercase());
        // mdns-sd's goodbye for an instance also says goodbye to its host
        // name's address records. Our other instances share that name:
        // browsers that heard it dropped them, and mdns-sd browsers did
        // not resolve them again when later announcements merely renewed
        // those records (measured: a live instance left a consumer's table
        // until that consumer's next browse, tens of seconds later). So the
        // instance moves to a host name of its own first (announced once,
        // unprobed), and the goodbye withdraws that name's records only.
        // The daemon runs both commands in order.
        if let Some(a) = announced {
            if let Err(e) = self.daemon.register(a.leaving) {
                warn!(provide = %p, error = %e, "cannot move the instance to its leaving host name; its goodbye may drop our other instances for a while");
            }
        }
        let rx = self
            .daemon
            .unregister(&self.fullname(p))
            .with_context(|| format!("cannot withdraw the advertisement of {p}"))?;
        match tokio::time::timeout(DAEMON_REPLY_TIMEOUT, rx.recv_async()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => {
                anyhow::bail!("the mDNS daemon did not confirm the withdrawal of {p}")
            }
        }
    }

    /// Asks peers to confirm `fullname`; if nobody does within
    /// [`VERIFY_TIMEOUT`], browsers drop it.
    pub fn verify(&self, fullname: &str) {
        if let Err(e) = self.daemon.verify(fullname.to_owned(), VERIFY_TIMEOUT) {
            debug!(instance = %fullname, error = %e, "cannot verify");
        }
    }

    /// Asks `node` for the records of its `instances` (SRV and TXT; the
    /// first `ASKED_INSTANCES_MOST`) and of its host's addresses (A and
    /// AAAA, which an SRV answer would carry in one family only): one
    /// query per interface, multicast from port 5353 over IPv4 if `v4`,
    /// else IPv6 (a node's mdns-sd may hear only the family it
    /// advertises), so that the node's answer is multicast too, and every
    /// cache on the link takes it. mdns-sd's here resolves the instances
    /// again from it and the PTR records it still holds (they live 75
    /// minutes, the SRV 2). Only the node answers: a question for the type
    /// drew an answer from every node whose records this cache held past
    /// half their TTL (RFC 6762 §7.1), 12 to 59 packets an ask at 64 hosts
    /// (BENCHMARKS.md), where this one draws about one.
    pub fn ask(&self, node: &str, instances: &[String], v4: bool) {
        let host = wire::host_name(node);
        let mut questions: Vec<(&str, u16)> = instances
            .iter()
            .take(ASKED_INSTANCES_MOST)
            .flat_map(|i| [(i.as_str(), wire::TYPE_SRV), (i.as_str(), wire::TYPE_TXT)])
            .collect();
        questions.extend([
            (host.as_str(), wire::TYPE_A),
            (host.as_str(), wire::TYPE_AAAA),
        ]);
        let packet = wire::query(&questions, 0);
        for intf in super::refresh::interfaces(&self.ifaces) {
            if let Err(e) = intf.multicast_over(v4, &packet) {
                debug!(node, error = %e, "cannot ask a node for its records");
            }
        }
    }

    /// Stops the daemon (it sends goodbyes for what is still registered) and
    /// waits for its thread to finish.
    pub async fn shutdown(&self) {
        self.announced_mut().clear();
        match self.daemon.shutdown() {
            Ok(rx) => {
                let _ = tokio::time::timeout(DAEMON_REPLY_TIMEOUT, rx.recv_async()).await;
            }
            Err(e) => debug!(error = %e, "mDNS daemon already stopped"),
        }
    }
}

/// Notes in `renamed` when mdns-sd renames a record of ours after a
/// conflict probe (a node id given to two hosts), on a thread that ends
/// with the daemon. Without a way to know, assumes it did.
fn watch_renames(daemon: &ServiceDaemon, renamed: Arc<AtomicBool>) {
    let Ok(events) = daemon.monitor() else {
        renamed.store(true, Ordering::Relaxed);
        return;
    };
    let flag = renamed.clone();
    let watching = std::thread::Builder::new()
        .name("amb-mdns-names".into())
        .spawn(move || {
            while let Ok(event) = events.recv() {
                if let DaemonEvent::NameChange(change) = event {
                    warn!(original = %change.original, renamed = %change.new_name,
                        "mDNS: a name of ours was taken on the link; mdns-sd renamed ours");
                    flag.store(true, Ordering::Relaxed);
                }
            }
        });
    if watching.is_err() {
        renamed.store(true, Ordering::Relaxed);
    }
}

/// An mDNS daemon restricted to `ifaces` (empty: every interface).
pub(crate) fn start_daemon(ifaces: &[IfKind]) -> anyhow::Result<ServiceDaemon> {
    mdns_port_shared()?;
    let daemon = ServiceDaemon::new().context("cannot start the mDNS daemon")?;
    if !ifaces.is_empty() {
        let restrict = daemon
            .disable_interface(IfKind::All)
            .and_then(|_| daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6]))
            .and_then(|_| daemon.enable_interface(ifaces.to_vec()));
        if let Err(e) = restrict {
            let _ = daemon.shutdown();
            return Err(e).context("cannot restrict mDNS to the chosen interfaces");
        }
    }
    Ok(daemon)
}

/// Whether this process may bind the mDNS port as mdns-sd does (shared:
/// `SO_REUSEADDR` and `SO_REUSEPORT`), as an error when neither IPv4 nor
/// IPv6 can, and a warning when one cannot. Another stack that holds the
/// port without sharing it (Avahi with `disallow-other-stacks=yes`) left
/// mdns-sd without a socket, which it notes only at debug level: the node
/// logged its advertisements and its browse as usual, and no other node
/// ever saw it, nor it them (found by a README audit).
fn mdns_port_shared() -> anyhow::Result<()> {
    use socket2::{Domain, Socket, Type};
    let held = |addr: SocketAddr| {
        let bound = Socket::new(Domain::for_address(addr), Type::DGRAM, None).and_then(|s| {
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.bind(&addr.into())
        });
        // Other errors (IPv6 off here) are mdns-sd's to meet.
        matches!(bound, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
    };
    let v4 = held(SocketAddr::from((Ipv4Addr::UNSPECIFIED, wire::MDNS_PORT)));
    let v6 = held(SocketAddr::from((Ipv6Addr::UNSPECIFIED, wire::MDNS_PORT)));
    let why = "another mDNS responder holds UDP port 5353 without sharing it \
        (Avahi with disallow-other-stacks=yes?)";
    match (v4, v6) {
        (true, true) => anyhow::bail!("cannot run mDNS: {why}"),
        (true, false) => warn!("no mDNS over IPv4: {why}"),
        (false, true) => warn!("no mDNS over IPv6: {why}"),
        (false, false) => {}
    }
    Ok(())
}

/// Stops the daemon thread however the node ends (an error after start, a
/// panic): dropping the handle alone would leave it running, and its
/// goodbyes unsent.
impl Drop for Mdns {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// Wall-clock time in unix seconds (the time of seals: it must mean the
/// same on every host).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The resolved addresses of `r` that its valid seal signs, or why the
/// record is refused.
pub(crate) fn admit(
    verifier: &mut Verifier,
    r: &ResolvedService,
    advert: &Advert,
    peer: &[PeerAddr],
) -> Result<Vec<PeerAddr>, Reject> {
    let state = advert.state.to_string();
    let fields = Fields {
        label: wire::label_of(&r.fullname).unwrap_or(&r.fullname),
        service: &advert.service,
        node: r.get_property_val_str("node").unwrap_or(""),
        port: r.get_port(),
        weight: advert.weight,
        state: &state,
        tls: advert.tls,
    };
    let signed = verifier.check(
        &r.fullname,
        &fields,
        |k| r.get_property_val_str(k),
        unix_now(),
    )?;
    // Link-local addresses are signed without scope; the one resolved
    // keeps the interface it arrived on.
    let dialable: Vec<PeerAddr> = peer
        .iter()
        .filter(|p| signed.contains(&p.ip))
        .copied()
        .collect();
    if dialable.is_empty() {
        return Err(Reject::ForeignAddress);
    }
    Ok(dialable)
}

/// The resolved addresses of `r`, with the interface of link-local ones.
pub(crate) fn peer_addrs(r: &ResolvedService) -> Vec<PeerAddr> {
    r.get_addresses()
        .iter()
        .map(|a| PeerAddr {
            ip: a.to_ip_addr(),
            scope: match a {
                ScopedIp::V6(v6) => v6.scope_id().index,
                _ => 0,
            },
        })
        .collect()
}

/// The counter of a refusal.
fn counter(stats: &DiscoveryStats, why: Reject) -> &AtomicU64 {
    match why {
        Reject::Unsigned => &stats.unsigned,
        Reject::BadSignature => &stats.bad_signature,
        Reject::Expired | Reject::Future => &stats.stale_signature,
        Reject::Replayed => &stats.replayed,
        Reject::ForeignAddress => &stats.foreign_address,
    }
}

/// Feeds the tables of the consumed services from the one browse of
/// `_amb._tcp`, puts instances the data plane reports as failing on trial,
/// and keeps the witness ring ([`super::witness`]) of the mesh-amb nodes it
/// sees. With the cluster key, only sealed records count, and an instance
/// leaves when its newest seal expires.
///
/// The browse is started again (which replays mdns-sd's cache and resets
/// its query back-off to one second) only when there is a reason: once,
/// 10-70 s after the start, to fall out of step (`DESYNC_AFTER`); when its
/// channel ends; a second or three after a verification of ours removed an
/// third-party instance, so one that was falsely suspected is found again
/// in seconds; a second or two after a node declared dead answers again
/// (this node then also announces its own instances again); and when the
/// consumed services change (a reload), so that a new one gets
/// what the cache holds; once a flood that made us drop events has
/// ebbed (at most every `RECOVER_EVERY`); and, ended first so that
/// mdns-sd drops every record of the type, when a replay lists instances
/// it cannot resolve, which mdns-sd would ask the link about with every
/// query for an hour (see `replay::Leftovers` and `replay::Clearing`),
/// when 16 or more third-party instances fail within a second (see
/// `verifying`), or when many new instances this node refuses
/// come at once (see `refusals`). While the browse has listed more
/// instances than a replay carries (`replay::REPLAY_MOST`: a flood's
/// cache is cleared rather than replayed), each restart above but the
/// one after the channel ended is made as a clearing, at once for a
/// reload, in the clearings' turn for the others (see `replay::Clearing`),
/// and a browse that ended then is reopened by a clearing, in its turn
/// too.
/// Removals may be lost at any
/// restart (see `Mdns::defend_unreplayed`), but only after the channel
/// ended, events were dropped or the cache was cleared are instances that
/// neither the cache's replay nor the answers to the browse's first query
/// (its second, after a clearing) bring back removed
/// from the tables (see `replay`), and only once their responders do not
/// answer for them (see `reconfirm`); our own that a replay lacks are
/// announced again after any restart but a clearing's.
///
/// A node back from a suspend, a stop or a step of its wall clock (see
/// `away`; the clocks are looked at every `away::CHECK_EVERY` and at each
/// removal) clears the cache at once and browses afresh, and announces
/// its instances again (`Browsing::came_back`).
///
/// A node that consumes no discovered service (a provider only) sends no
/// query for the type: it browses mdns-sd's cache alone, which keeps what
/// the link announces unasked (the vendored mdns-sd sends no query for
/// such a browse, not even for records near their end:
/// vendor/mdns-sd/PATCHED.md). Every mesh node announces its instances
/// when it starts, again every 60-80 s ([`REFRESH_EVERY`]) and says its
/// goodbyes, so the listener knows the ring within 80 s of its start (a
/// node that joins later at once, and the one after it in the ring
/// within seconds: that node announces itself again when it sees a new
/// node before it, `witness::Aim::introduced`) and watches its successor
/// like any other node: without it, a node whose predecessor in the ring
/// only provided was watched by nobody, and stayed in every table for
/// its records' TTL after a crash. It also hears a goodbye said in its own
/// name, and announces again at once. It never restarts to reset the
/// queries' back-off, so its replay is never whole either: nothing to
/// defend or sweep. Its questions: when a node it had declared dead
/// answers again (its goodbye took it out of every table), it browses
/// with a query for `ASK_ONCE_FOR`, so that the node answers for every
/// cache, and listens again; and so once this host's link is back after
/// mdns-sd dropped what it had learnt over it, while any of that is still
/// to resolve (`LINK_BACK_ASK`). When the records of a node it holds a
/// ring link to, or of the node before it while that one holds a link to
/// it (its watcher), run out (it missed their refresh), it asks that
/// node alone for them ([`Mdns::ask`], `MISSED_ASK_EVERY`); not when
/// their last record said they were leaving (a provide withdrawn while
/// its node lives on, whose goodbye that was).
///
/// The witness's watches, and their links, end with `ring_link`, as soon
/// as this node's provides are withdrawn at its shutdown: a node that
/// said its goodbyes is out of every ring, and a listener it still held a
/// link to would take their removal for a missed refresh.
pub async fn browse(
    mdns: Arc<Mdns>,
    mut consumed: watch::Receiver<Vec<Arc<Service>>>,
    tls: TlsUse,
    mut suspects: mpsc::Receiver<String>,
    stats: Arc<DiscoveryStats>,
    stop: CancellationToken,
    ring_link: CancellationToken,
) {
    let mut verifier = mdns.key.clone().map(Verifier::new);
    let mut expiry = tokio::time::interval(EXPIRE_EVERY);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ring = Ring::new(&mdns.node_id);
    let mut aim = Aim::default();
    let (news_tx, mut news_rx) = mpsc::channel(NEWS_QUEUE);
    let _witness = AbortOnDropHandle::new(tokio::spawn(aim.watch(news_tx, ring_link)));
    // Dropped with the browse: the trials' tasks end with it.
    let mut trials = Trials::default();
    // Whether a node's ring link answers at the port heard last, its kept
    // one refused (see `Ring::moved`): the node and both ports, if so.
    let mut link_checks: JoinSet<Option<(String, u16, u16)>> = JoinSet::new();

    // Instances this node verified, and when: a removal soon after is the
    // verification's result.
    let mut verified: HashMap<String, Instant> = HashMap::new();
    // Removals reported by mdns-sd, applied at their time unless the
    // instance resolves again first (see REMOVAL_GRACE), or held for the
    // link.
    let mut pending = Removals::default();
    // Set at the first browse of a node that consumes (a listener's
    // queries are not periodic).
    let mut desync_at: Option<Instant> = None;
    let mut desync_armed = false;
    // Whether the next browse of a listener asks, once.
    let mut ask_once = false;
    // When a listener asks the link about the instances held for this
    // host's link, once it is back, and whether that is the first time.
    let mut link_back_ask: Option<(Instant, bool)> = None;
    let mut missed_asks = MissedAsks::default();
    // A listener's questions about a linked node's records, to ask again
    // while unanswered: when, the node, and how many more times.
    let mut ask_again: Vec<(Instant, String, u32)> = Vec::new();
    let mut sweep_next = false;
    let mut replay = Replay::default();
    let mut asking = Reconfirms::default();
    let mut drops_check = tokio::time::interval(DROPS_CHECK);
    drops_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The drop count last looked at, whether drops since the last recovery
    // await one, and when that was.
    let mut drops_seen = stats.events_dropped.load(Ordering::Relaxed);
    let mut lost_events = false;
    let mut recovered_at: Option<Instant> = None;
    // When to clear the cache of stale instances, and whether the next
    // browse starts on a cache just cleared.
    let mut clearing = Clearing::default();
    let mut cleared = false;
    let mut verifications = Verifications::new(Instant::now());
    let mut refusals = Refusals::default();
    // Browses in a row that ended by themselves soon after their start.
    let mut ends_in_a_row = 0u32;
    // What a restarted browse left in mdns-sd's channels (see `forward`).
    let mut backlog = Vec::new();
    // The clocks when last looked at, to tell when this node was away.
    let mut clocks = Clocks::now();
    let mut clock_check = tokio::time::interval(away::CHECK_EVERY);
    clock_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether this node came back from away since the last clearing.
    let mut returned = false;
    // Until when the cache is relearnt after a clearing, or a return
    // (see FRESH_FOR); across restarts meanwhile.
    let mut relearn_until: Option<Instant> = None;
    'browse: loop {
        // What the last browse's drain applied to the ring reaches the
        // watch and the introduction now, not at the new browse's first
        // event.
        aim.follow(&ring);
        // Static services' tables are not discovery's.
        let services: Vec<Arc<Service>> = consumed
            .borrow_and_update()
            .iter()
            .filter(|s| s.is_discovered())
            .cloned()
            .collect();
        // A node that consumes nothing discovered only listens (see
        // above): it asks the link nothing, but once at a time for what it
        // lacks (a node it found dead answers again, and the others
        // above).
        let listening = services.is_empty();
        let passive = listening && !std::mem::take(&mut ask_once);
        let back_to_listening = (listening && !passive).then(|| Instant::now() + ASK_ONCE_FOR);
        if !listening && !desync_armed {
            desync_armed = true;
            desync_at =
                Some(Instant::now() + DESYNC_AFTER + DESYNC_SPREAD.mul_f64(fastrand::f64()));
        }
        let browsing = if passive {
            mdns.daemon.browse_cache(SERVICE_TYPE)
        } else {
            mdns.daemon.browse(SERVICE_TYPE)
        };
        let mut fwd = match browsing {
            Ok(rx) => forward(rx, std::mem::take(&mut backlog), stats.clone()),
            Err(e) => {
                warn!(error = %e, "cannot browse {SERVICE_TYPE}; retrying");
                // Meanwhile nothing reads the browse being restarted (its
                // channel is in `backlog`): if that fills, mdns-sd ends it
                // and its later news is lost.
                sweep_next = true;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(REBROWSE_DELAY * 10) => continue 'browse,
                }
            }
        };
        let mut next_rebrowse: Option<Instant> = None;
        // Whether the browse ended by itself, and when to reopen it (a
        // crowded one is reopened by a clearing). Until then the rest goes
        // on: the witness's verdicts, failed connects, removals due.
        let mut ended = false;
        let mut reopen_at: Option<Instant> = None;
        let started = Instant::now();
        let fresh = std::mem::take(&mut cleared);
        if fresh {
            relearn_until = Some(Instant::now() + FRESH_FOR);
        }
        // The cache's `SearchStopped` has not come yet (a listener's).
        let mut cache_replayed = !passive;
        if passive {
            // A listener's replay is never whole (one `SearchStarted`), so
            // it keeps no state; a sweep owed waits for a browse that
            // queries.
            sweep_next |= replay.take().sweep;
        } else {
            replay.start(std::mem::take(&mut sweep_next), fresh);
        }
        // A replay with events dropped is incomplete: no sweep after it
        // (the mesh nodes it lacked are checked instead).
        let dropped_before = stats.events_dropped.load(Ordering::Relaxed);
        let mut ctx = Browsing {
            mdns: &mdns,
            services: &services,
            tls,
            verifier: verifier.as_mut(),
            stats: &stats,
            ring: &mut ring,
            pending: &mut pending,
            asking: &mut asking,
            fresh_until: &mut relearn_until,
            refusals: &mut refusals,
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = fwd.events.recv(), if !ended => match ev {
                    // A browse of the cache says it stopped once it has
                    // replayed it, and goes on listening.
                    Some(ServiceEvent::SearchStopped(_)) if passive => cache_replayed = true,
                    Some(ServiceEvent::SearchStopped(_)) | None => {
                        ended = true;
                        // Whichever restart comes next sweeps.
                        sweep_next = true;
                        if fwd.crowded.load(Ordering::Relaxed) {
                            // A flood's cache (a burst past mdns-sd's
                            // channel ended it) is not replayed: it is
                            // cleared first (only the vendored mdns-sd
                            // clears a cache whose browse is gone,
                            // vendor/mdns-sd/PATCHED.md), in the
                            // clearings' turn, since every live node
                            // answers the fresh browse.
                            warn!(most = REPLAY_MOST, "the mDNS browse ended with more instances in the cache than a restart replays (a flood); a clearing reopens it");
                            clearing.want(Instant::now(), Cause::Crowded);
                            continue;
                        }
                        // A daemon in trouble is not asked in a tight loop.
                        if started.elapsed() >= REBROWSE_MOST {
                            ends_in_a_row = 0;
                        }
                        let pause = rebrowse_pause(ends_in_a_row);
                        ends_in_a_row += 1;
                        warn!(pause = ?pause, "the mDNS browse ended; starting it again");
                        reopen_at = Some(Instant::now() + pause);
                    }
                    Some(ServiceEvent::SearchStarted(_)) => replay.search_started(Instant::now()),
                    Some(ev) => {
                        if let ServiceEvent::ServiceResolved(r) = &ev {
                            replay.resolved(&r.fullname);
                        }
                        // On this node's return mdns-sd reports what ran
                        // out meanwhile, before the next look at the
                        // clocks: the removal waits as a cleared cache's.
                        if matches!(ev, ServiceEvent::ServiceRemoved(..)) {
                            returned |= ctx.back_from_away(&mut clocks, &mut clearing);
                        }
                        // A listener asks nothing, and mdns-sd asks no
                        // refresh for it (vendor/mdns-sd/PATCHED.md): a
                        // node whose one refresh packet it missed runs out
                        // here at its records' TTL. While a ring link
                        // between them is up, either way (this node
                        // watches it, or it is the node before this one
                        // and watches it), it lives: its records are
                        // asked for, and the removal waits for the answer
                        // (unless they said they were leaving); not while
                        // the cache is relearnt, which has no PTR record
                        // for the answer to resolve with.
                        let missed = match &ev {
                            ServiceEvent::ServiceRemoved(_, name) if passive && !ctx.relearning() => {
                                linked_with(ctx.ring, &aim, &mdns.watchers, name)
                                    .map(|(node, via)| (node, via, name.clone()))
                            }
                            _ => None,
                        };
                        ctx.event(ev);
                        aim.follow(ctx.ring);
                        if let Some(n) = ctx.refusals.burst() {
                            clearing.want(after_a_flood(), Cause::Refused(n));
                        }
                        if let Some((node, via, instance)) = missed {
                            let now = Instant::now();
                            // The node's other instances, refreshed in
                            // the same packet, run out together: the
                            // question asked for them too.
                            if let Some(at) = missed_asks.asking(&node, now) {
                                ctx.pending.wait_until(&instance, at + ASKED_WAIT);
                                continue;
                            }
                            if !missed_asks.may_ask(&node, now) {
                                continue;
                            }
                            missed_asks.asked(&node, now);
                            // Asked again while no answer came; the
                            // removal waits for the last one.
                            ctx.pending.wait_until(&instance, now + ASKED_WAIT);
                            debug!(node, via, "the records of a node linked with this one ran out (their refresh missed); asking the node for them");
                            let ring = &*ctx.ring;
                            ask_node(&mdns, ring, &node, |i| !ring.is_leaving(i));
                            ask_again.push((now + ASK_AGAIN_AFTER, node, ASKS_MOST - 1));
                        }
                    }
                },
                _ = sleep_until_some(ask_again.iter().map(|(at, _, _)| *at).min()) => {
                    let now = Instant::now();
                    let (due, later) = ask_again.drain(..).partition(|(at, _, _)| *at <= now);
                    ask_again = later;
                    for (_, node, left) in due {
                        // Those held for this host's link wait for it.
                        let pending = &*ctx.pending;
                        let unanswered = |i: &str| pending.waits(i) && !pending.is_held(i);
                        if ask_node(&mdns, ctx.ring, &node, unanswered) {
                            debug!(node, "no answer yet from a node linked with this one; asked again");
                            if left > 1 {
                                ask_again.push((now + ASK_AGAIN_AFTER, node, left - 1));
                            }
                        }
                    }
                }
                _ = sleep_until_some(ctx.pending.next()) => {
                    let gone = ctx.apply_due_removals();
                    if ctx.pending.link_came_back() && listening {
                        // The instances held for the link resolve again
                        // only with an answer, and a listener asks nothing
                        // (mdns-sd asks for a browse that queries, on the
                        // interface it takes in again).
                        debug!("this host's link is back; asking the link when mdns-sd has the interface again");
                        let at = Instant::now() + LINK_BACK_ASK + LINK_BACK_SPREAD.mul_f64(fastrand::f64());
                        link_back_ask = Some((at, true));
                    }
                    for gone in gone {
                        let ours = verified
                            .remove(&gone)
                            .is_some_and(|t| t.elapsed() < VERIFIED_RECENTLY);
                        if ours {
                            let at = Instant::now()
                                + REBROWSE_AFTER_REMOVAL
                                + REBROWSE_JITTER.mul_f64(fastrand::f64());
                            next_rebrowse = Some(next_rebrowse.map_or(at, |t| t.min(at)));
                        }
                    }
                    aim.follow(ctx.ring);
                }
                _ = sleep_until_some(reopen_at) => continue 'browse,
                _ = sleep_until_some(aim.introduction_due()) => {
                    let sent = mdns.introduce();
                    aim.introduced(sent);
                }
                _ = sleep_until_some(back_to_listening) => {
                    debug!("asked the link once; listening again");
                    backlog = ctx.drain(&mut fwd).await;
                    continue 'browse;
                }
                // The replay of a browse that ended is not whole.
                _ = sleep_until_some(replay.due()), if !ended => {
                    let Whole { seen, sweep: to_sweep } = replay.take();
                    let complete = stats.events_dropped.load(Ordering::Relaxed) == dropped_before;
                    // After a clearing our own instances come back only
                    // with our own answers, which the link has too.
                    if complete && !fresh {
                        mdns.defend_unreplayed(&seen);
                    }
                    if to_sweep && complete {
                        // Each is swept once its responder has not
                        // answered for it (see `reconfirm`).
                        let mut lacking = unreplayed(&services, &seen);
                        // One held for our link (see `removals`) waits for it.
                        lacking.retain(|key, _| !mdns.announces(key) && !ctx.pending.is_held(key));
                        // Rare (news was lost), so always said.
                        info!(
                            lacking = lacking.len(),
                            "the restarted browse's replay is whole; asking the responders of the backends it lacks before sweeping them"
                        );
                        ctx.asking.forget_responders();
                        for (key, target) in lacking {
                            match reconfirm::responder(&target) {
                                Some(at) => {
                                    let node = ctx.ring.owner(&key).and_then(|(_, p)| p.link_at());
                                    ctx.asking.ask(key, at, node);
                                }
                                None => sweep(&services, &key),
                            }
                        }
                    } else if to_sweep {
                        // Incomplete: what it lacks may be there still, or
                        // gone with its goodbye lost in the flood, and a
                        // cache full of a flood's records may never replay
                        // whole. So the mesh nodes among it are checked, as
                        // after a failed connect (a few on trial at once).
                        for (key, _) in unreplayed(&services, &seen) {
                            if ctx.pending.is_held(&key) {
                                continue;
                            }
                            if let Some((node, peer)) = ctx.ring.owner(&key) {
                                debug!(instance = %key, node, "checking a node the replay lacked");
                                trials.suspect(node, peer);
                            }
                        }
                    }
                }
                (instance, held) = ctx.asking.next() => {
                    if held {
                        info!(instance = %instance, "a backend the restarted browse's replay lacked still answers for itself (a goodbye said for it as the browse restarted); kept");
                    } else {
                        sweep(&services, &instance);
                    }
                }
                Some(stale) = fwd.leftovers.recv() => clearing.want(Instant::now(), Cause::Stale(stale)),
                _ = sleep_until_some(clearing.due()) => {
                    // Said once a flood, or after many peers vanished
                    // without a goodbye (the witness says one for the
                    // mesh nodes it watches).
                    match clearing.take() {
                        Some(Cause::Flood(failing)) => info!(
                            failing,
                            "many third-party instances failed their probes at once (a flood); clearing the cache and browsing afresh"
                        ),
                        Some(Cause::Refused(refused)) => info!(
                            refused,
                            "many new instances this node refuses came at once (a flood), which mdns-sd would ask the link about as their records ran out; clearing the cache and browsing afresh"
                        ),
                        Some(Cause::Stale(stale)) => info!(
                            stale,
                            "the mDNS cache lists instances whose other records are gone, and mdns-sd queries the link for each with every query it sends; clearing the cache and browsing afresh"
                        ),
                        Some(Cause::Crowded) => info!(
                            most = REPLAY_MOST,
                            "the browse was to restart with more instances in the mDNS cache than a restart replays (a flood); clearing the cache instead"
                        ),
                        // Said when it was found (`came_back`).
                        Some(Cause::Away) | None => {}
                    }
                    // Drops every record of the type. What the fresh
                    // browse does not bring back is swept, once its
                    // responder does not answer for it.
                    // The vendored mdns-sd clears the cache even when it
                    // had ended the browse itself (vendor/mdns-sd/PATCHED.md),
                    // and before the next browse starts.
                    let took = match mdns.daemon.stop_browse(SERVICE_TYPE) {
                        Ok(()) => {
                            if !ctx.ended(&mut fwd.events, !cache_replayed, &stop).await {
                                debug!("the clearing saw no end of the browse: mdns-sd had ended it, or its events outlasted the wait");
                            }
                            true
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot end the browse to clear the mDNS cache; clearing again");
                            false
                        }
                    };
                    if took {
                        verifications.cleared();
                        refusals.cleared();
                    }
                    clearing.made(Instant::now(), took);
                    sweep_next = true;
                    cleared = took;
                    // A listener back from away asks once: its fresh
                    // browse of the cache alone would learn nothing. A
                    // refused clearing is made again: that one asks.
                    if took {
                        ask_once |= std::mem::take(&mut returned) && listening;
                    }
                    continue 'browse;
                }
                _ = clock_check.tick() => {
                    returned |= ctx.back_from_away(&mut clocks, &mut clearing);
                }
                _ = drops_check.tick() => {
                    let dropped = stats.events_dropped.load(Ordering::Relaxed);
                    if dropped != drops_seen {
                        drops_seen = dropped;
                        lost_events = true;
                    } else if lost_events
                        && recovered_at.is_none_or(|t| t.elapsed() >= RECOVER_EVERY)
                    {
                        lost_events = false;
                        recovered_at = Some(Instant::now());
                        if clearing_instead(&fwd.crowded, &mut clearing, false) {
                            continue;
                        }
                        info!("mDNS events were dropped in a flood; browsing again to recover what they said");
                        sweep_next = true;
                        backlog = ctx.drain(&mut fwd).await;
                        continue 'browse;
                    }
                }
                // Not while the cache is relearnt: on a return from a long
                // absence every seal is past its time by the wall clock,
                // and the answers bring new ones.
                _ = expiry.tick(), if ctx.verifier.is_some() && !ctx.relearning() => {
                    // A return not noticed yet (this tick and the clocks'
                    // both overdue on it): no seal expires by a wall clock
                    // that jumped.
                    if ctx.back_from_away(&mut clocks, &mut clearing) {
                        returned = true;
                        continue;
                    }
                    if let Some(v) = &mut ctx.verifier {
                        // Its seal expired: not a node to watch either.
                        for instance in v.expire(unix_now()) {
                            ctx.ring.gone(&instance);
                            removed(&services, &instance);
                        }
                        aim.follow(ctx.ring);
                    }
                }
                // Restarts that reset the queries' back-off, or make the
                // link answer: a listener sends no query.
                _ = sleep_until_some(desync_at), if !passive => {
                    desync_at = None;
                    if clearing_instead(&fwd.crowded, &mut clearing, false) {
                        continue;
                    }
                    debug!("restarting the browse once, to fall out of step with nodes started together");
                    backlog = ctx.drain(&mut fwd).await;
                    continue 'browse;
                }
                _ = sleep_until_some(link_back_ask.map(|(at, _)| at)), if passive => {
                    // Asked again once: the first packets out on a link
                    // just back are the likeliest lost. Not when all came
                    // back meanwhile: a switch that restarted brought every
                    // consumer's link back too, and mdns-sd asks for each;
                    // their answers are multicast.
                    if link_back_ask.take().is_some_and(|(_, first)| first) {
                        link_back_ask = Some((Instant::now() + LINK_BACK_ASK_AGAIN, false));
                    }
                    if !ctx.pending.awaits_link_back() {
                        continue;
                    }
                    if clearing_instead(&fwd.crowded, &mut clearing, false) {
                        continue;
                    }
                    debug!("asking the link about the instances held for this host's link");
                    ask_once = true;
                    backlog = ctx.drain(&mut fwd).await;
                    continue 'browse;
                }
                _ = sleep_until_some(next_rebrowse) => {
                    next_rebrowse = None;
                    if clearing_instead(&fwd.crowded, &mut clearing, false) {
                        continue;
                    }
                    debug!("restarting the browse to find an instance again");
                    ask_once = listening;
                    backlog = ctx.drain(&mut fwd).await;
                    continue 'browse;
                }
                Ok(()) = consumed.changed() => {
                    // Its new services wait for the next browse.
                    if clearing_instead(&fwd.crowded, &mut clearing, true) {
                        continue;
                    }
                    debug!("the consumed services changed; restarting the browse");
                    backlog = ctx.drain(&mut fwd).await;
                    continue 'browse;
                }
                Some(key) = suspects.recv() => {
                    // The sender already spaces reports of one instance
                    // (backends::Suspects), and a node is on trial once at
                    // a time, so a burst of failed connects does not flood
                    // the LAN.
                    if let Some((node, peer)) = ctx.ring.owner(&key) {
                        debug!(instance = %key, node, "checking a node after a failed connect");
                        trials.suspect(node, peer);
                    } else if ctx.relearning() || ctx.asking.holds(&key) {
                        // Its records went with the cache: the fresh
                        // browse's sweep judges it.
                        debug!(instance = %key, "not verifying an instance while a cleared cache is relearnt");
                    } else if clearing.due().is_some() {
                        debug!(instance = %key, "not verifying an instance: the cache is about to be cleared");
                    } else if verifications.failed(Instant::now(), &key) {
                        info!(instance = %key, "an instance of a flood that was cleared fails again: its stranger still announces it; no more clearings for such floods for an hour, failing instances are verified a few at a time");
                    }
                }
                _ = sleep_until_some(verifications.due()) => {
                    match verifications.take(Instant::now()) {
                        Action::Clear(n) => clearing.want(after_a_flood(), Cause::Flood(n)),
                        Action::Verify(keys) => {
                            verified.retain(|_, t| t.elapsed() < VERIFIED_RECENTLY);
                            for key in keys {
                                debug!(instance = %key, "verifying an instance after a failed connect");
                                verified.insert(key.clone(), Instant::now());
                                mdns.verify(&key);
                            }
                        }
                    }
                }
                Some(news) = news_rx.recv() => match news {
                    News::Dead(node, peer) => trials.dead(node, peer),
                    News::Refused(node, port) => {
                        if let Some(to) = ctx.ring.moved(&node, port).filter(|_| link_checks.len() < LINK_CHECKS_MOST) {
                            link_checks.spawn(async move {
                                witness::link_answers(to).await.then_some((node, port, to.port()))
                            });
                        }
                    }
                },
                Some(Ok(Some((node, refused, to)))) = link_checks.join_next() => {
                    if ctx.ring.restarted(&node, refused, to) {
                        info!(node, "witness: the node was restarted (it answers, and its ring link answers at the port it announced last); watching its new process");
                        aim.follow(ctx.ring);
                    }
                }
                (node, peer, verdict) = trials.next() => match verdict {
                    Verdict::Dead => {
                        // Here at once: the goodbye takes a second to act.
                        for instance in &peer.instances {
                            removed(&services, instance);
                        }
                        trials.dead(node, peer);
                    }
                    // It was seen again meanwhile: the goodbye was a
                    // false one and the node answered it by announcing
                    // again, so the link works both ways. A re-browse and
                    // announcements would only add load, and at 64 hosts
                    // starting together (the load that made the verdict
                    // false) fed more false verdicts.
                    Verdict::Revived if ctx.ring.knows(&node) => {
                        debug!(node, "a node declared dead answers again and was found again");
                    }
                    Verdict::Revived => {
                        // Soon, spread so that nodes which saw the same
                        // return do not query in step.
                        let at = Instant::now() + REBROWSE_JITTER.mul_f64(fastrand::f64());
                        debug!(node, "a node declared dead answers again; browsing again soon");
                        next_rebrowse = Some(next_rebrowse.map_or(at, |t| t.min(at)));
                        mdns.announce_again("a node came back from a cut");
                    }
                    Verdict::Alive | Verdict::Forgotten => {}
                },
            }
        }
    }
}

/// Asks `node` for those of its instances in the ring that `which` keeps
/// ([`Mdns::ask`]), over IPv4 if it listed an IPv4 address; whether there
/// was any to ask for.
fn ask_node(mdns: &Mdns, ring: &Ring, node: &str, which: impl Fn(&str) -> bool) -> bool {
    let asked: Vec<String> = ring
        .instances(node)
        .iter()
        .filter(|i| which(i))
        .cloned()
        .collect();
    if asked.is_empty() {
        return false;
    }
    let v4 = ring.addresses(node).iter().any(IpAddr::is_ipv4);
    mdns.ask(node, &asked, v4);
    true
}

/// When to clear the cache after a flood: every node on the link sees
/// the same flood, so their clearings (and the fresh browses' queries)
/// are spread; and the flood's packets, which come within a second, go
/// with one clearing.
fn after_a_flood() -> Instant {
    Instant::now() + FLOOD_SETTLE + FLOOD_SPREAD.mul_f64(fastrand::f64())
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What one browse applies its events to.
struct Browsing<'a> {
    /// Our daemon: a goodbye for our own live instance is answered by it.
    mdns: &'a Mdns,
    /// The tables the events go to.
    services: &'a [Arc<Service>],
    /// Which instances this node can dial.
    tls: TlsUse,
    /// Checks seals, with the cluster key.
    verifier: Option<&'a mut Verifier>,
    /// Counts what was ignored.
    stats: &'a DiscoveryStats,
    /// The mesh-amb nodes seen, for the witness.
    ring: &'a mut Ring,
    /// Removals waiting for their time.
    pending: &'a mut Removals,
    /// Backends a sweep is asking about, which an instance resolved again
    /// leaves (see `reconfirm`).
    asking: &'a mut Reconfirms,
    /// Until when the browse is relearning a cleared cache, or one this
    /// node's return from away ran out (see [`FRESH_FOR`]); kept across
    /// the browse's restarts meanwhile.
    fresh_until: &'a mut Option<Instant>,
    /// The instances refused (see `refusals`).
    refusals: &'a mut Refusals,
}

impl Browsing<'_> {
    /// Applies one browse event (a removal only once it is due, see
    /// [`Browsing::apply_due_removals`]).
    fn event(&mut self, ev: ServiceEvent) {
        match ev {
            ServiceEvent::ServiceResolved(r) => {
                if self.pending.resolved(&r.fullname) {
                    debug!(instance = %r.fullname, "mDNS reported an instance gone and resolved it again; it stays");
                }
                let seen = resolved(
                    self.services,
                    &r,
                    self.tls,
                    self.verifier.as_deref_mut(),
                    self.stats,
                    self.mdns.announces(&r.fullname),
                );
                match seen {
                    Ok((peer, state)) => {
                        // A record this node refuses (a stranger's, unsealed
                        // or stale) says nothing about the instance.
                        if self.asking.resolved(&r.fullname) {
                            info!(instance = %r.fullname, "a backend the restarted browse's replay lacked resolved again while its responder was asked about it; not swept");
                        }
                        if let Some(node) = r.get_property_val_str("node") {
                            let link = wire::link_port(|k| r.get_property_val_str(k));
                            self.ring.seen(node, &r.fullname, &peer, link);
                            self.ring.set_leaving(&r.fullname, state != State::Up);
                        }
                    }
                    Err(Unused::Refused) => self.refusals.refused(Instant::now(), &r.fullname),
                    Err(Unused::Stale) => {}
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let fresh = self.relearning();
                if fresh && self.mdns.announces(&fullname) {
                    debug!(instance = %fullname, "mDNS reported our own instance gone while relearning a cleared cache; ignored");
                    return;
                }
                if self.mdns.defend(&fullname) {
                    self.ring.gone(&fullname);
                    return;
                }
                let grace = if fresh {
                    REMOVAL_GRACE_FRESH
                } else {
                    REMOVAL_GRACE
                };
                let unlinked = unlinked(self.services, self.ring, &fullname);
                if self
                    .pending
                    .report(fullname.clone(), Instant::now(), grace, unlinked)
                {
                    let said = "mDNS dropped an instance with this host's link towards it, which is down; it stays until the link is back";
                    match HELD.admit() {
                        Some(0) => info!(instance = %fullname, "{said}"),
                        Some(more) => {
                            info!(instance = %fullname, "{said} ({more} more since the last such line)")
                        }
                        None => debug!(instance = %fullname, "{said}"),
                    }
                }
            }
            _ => {}
        }
    }

    /// Looks at `clocks`; whether this node is back from away (see
    /// [`Browsing::came_back`]).
    fn back_from_away(&mut self, clocks: &mut Clocks, clearing: &mut Clearing) -> bool {
        let away = clocks.check(Clocks::now());
        if let Some(away) = away {
            self.came_back(away, clearing);
        }
        away.is_some()
    }

    /// This node is back from `away`: every record whose end the wall
    /// clock passed meanwhile ran out of the cache at once, each node's
    /// PTR records kept it from answering mdns-sd's questions about them
    /// (see `away`), and its watcher may have said our goodbye. So the
    /// cache is cleared and browsed afresh at once, with no known answer
    /// (a listener asks once, after the clearing), the removals
    /// the return brings wait for its answers as a cleared cache's do,
    /// and our instances are announced again.
    fn came_back(&mut self, away: Away, clearing: &mut Clearing) {
        info!(
            away = ?away.for_how_long(),
            "{}: what the mDNS cache held may have run out meanwhile; clearing it and browsing afresh",
            away.what()
        );
        let now = Instant::now();
        *self.fresh_until = Some(now + FRESH_FOR);
        self.pending.wait_all_until(now + REMOVAL_GRACE_FRESH);
        clearing.urge(now, Cause::Away);
        self.mdns.announce_again("this node is back from away");
    }

    /// Whether the browse is relearning a cleared cache (see [`FRESH_FOR`]).
    fn relearning(&self) -> bool {
        self.fresh_until.is_some_and(|t| Instant::now() < t)
    }

    /// Applies the removals that are due; the instances they removed from
    /// a table.
    fn apply_due_removals(&mut self) -> Vec<String> {
        let (services, ring) = (self.services, &*self.ring);
        let due = self
            .pending
            .due(Instant::now(), |name| unlinked(services, ring, name));
        let mut gone = Vec::new();
        for name in due {
            self.ring.gone(&name);
            if removed(self.services, &name) {
                gone.push(name);
            }
        }
        gone
    }

    /// Applies what comes until the browse ends after a `stop_browse`;
    /// whether it said it was stopped. mdns-sd says `SearchStopped` to the
    /// browse it ends, and nothing to one it had already ended (its
    /// channel full); the vendored mdns-sd clears the cache either way
    /// (vendor/mdns-sd/PATCHED.md). A browse of the cache alone says it
    /// first when its replay is over: with `replay_stop_due` that one is
    /// still to come, and does not count.
    async fn ended(
        &mut self,
        events: &mut mpsc::Receiver<ServiceEvent>,
        mut replay_stop_due: bool,
        stop: &CancellationToken,
    ) -> bool {
        let ended = async {
            loop {
                match events.recv().await {
                    // A browse of the cache says so once its replay is over.
                    Some(ServiceEvent::SearchStopped(_)) if replay_stop_due => {
                        replay_stop_due = false;
                    }
                    Some(ServiceEvent::SearchStopped(_)) => return true,
                    Some(ev) => self.event(ev),
                    None => return false,
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(DAEMON_REPLY_TIMEOUT, ended) => r.unwrap_or(false),
            _ = stop.cancelled() => false,
        }
    }

    /// Applies what is already queued before the browse restarts: dropping
    /// the queue would lose those events (a removal among them). What
    /// mdns-sd's channel still holds is returned, for the next browse to
    /// forward first (see [`forward`]).
    async fn drain(&mut self, fwd: &mut Forwarded) -> Vec<mdns_sd::Receiver<ServiceEvent>> {
        let backlog = fwd.stop().await;
        while let Ok(ev) = fwd.events.try_recv() {
            self.event(ev);
        }
        backlog
    }
}

/// Whether a restart of the browse is made as a clearing instead, the
/// browse having listed more instances than a replay carries (see
/// `replay::REPLAY_MOST`); if so, the clearing is wanted, `at_once` or in
/// its turn.
fn clearing_instead(crowded: &AtomicBool, clearing: &mut Clearing, at_once: bool) -> bool {
    let crowded = crowded.load(Ordering::Relaxed);
    if crowded && at_once {
        clearing.urge(Instant::now(), Cause::Crowded);
    } else if crowded {
        clearing.want(Instant::now(), Cause::Crowded);
    }
    crowded
}

/// Warnings about dropped events: one a second during a flood.
static EVENT_DROPS: LogLimit = LogLimit::new();

/// Backends kept for the link: one line a second when a link drops many.
static HELD: LogLimit = LogLimit::new();

/// One browse's events, moved out of mdns-sd's channel (see [`forward`]).
struct Forwarded {
    /// The events the browse acts on; ends when the browse does.
    events: mpsc::Receiver<ServiceEvent>,
    /// How many instances a replay left unresolved, when that is
    /// `replay::STALE_TO_CLEAR` or more.
    leftovers: mpsc::Receiver<usize>,
    /// Whether the browse has listed more instances than a restart's
    /// replay carries (see `replay::Listed`).
    crowded: Arc<AtomicBool>,
    /// The channels of the browses this one restarted whose events the
    /// task has not all forwarded yet, oldest first, then its own (see
    /// [`Forwarded::stop`]).
    channels: Arc<Mutex<Vec<mdns_sd::Receiver<ServiceEvent>>>>,
    /// The task moving them; it stops when this is dropped.
    task: AbortOnDropHandle<()>,
}

impl Forwarded {
    /// Stops moving events, so that none is between two channels; what
    /// the queue holds is the caller's. Returns mdns-sd's channels with
    /// what they still hold (the browse's own, and what mdns-sd sends it
    /// until the next browse replaces it), for the next browse to forward
    /// (see [`forward`]).
    async fn stop(&mut self) -> Vec<mdns_sd::Receiver<ServiceEvent>> {
        self.task.abort();
        // flume's receive is cancel-safe: an event not yet taken stays in
        // its channel.
        let _ = (&mut self.task).await;
        std::mem::take(&mut *self.channels.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Moves browse events from mdns-sd's channel into a queue of ours as fast
/// as they come (see [`EVENT_QUEUE`]). First come the events left in the
/// channels of the browses this one restarts (`before`, see
/// [`Forwarded::stop`]), once this browse's first event shows that
/// mdns-sd has replaced the last of them (it swaps the channels in the
/// step that sends that event, and only its own thread sends to either):
/// so they reach the tables before this browse's replay, as they would
/// have without the restart.
fn forward(
    events: mdns_sd::Receiver<ServiceEvent>,
    mut before: Vec<mdns_sd::Receiver<ServiceEvent>>,
    stats: Arc<DiscoveryStats>,
) -> Forwarded {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let (stale_tx, stale_rx) = mpsc::channel(1);
    let crowded = Arc::new(AtomicBool::new(false));
    let crowd = crowded.clone();
    before.push(events.clone());
    let channels = Arc::new(Mutex::new(before));
    let held = channels.clone();
    let task = tokio::spawn(async move {
        let mut leftovers = Leftovers::default();
        let mut listed = Listed::default();
        let mut first = true;
        while let Ok(ev) = events.recv_async().await {
            if std::mem::take(&mut first) && !forward_left(&held, &tx, &stats).await {
                return;
            }
            stats.events.fetch_add(1, Ordering::Relaxed);
            // Only what the browse acts on takes room in the queue: a found
            // but unresolved instance says nothing it uses, and a replay
            // after a flood holds one for every stale PTR record (they live
            // 75 minutes after the rest of the record has expired), enough
            // to drop events at every replay and so never sweep. They are
            // counted here instead.
            let stale = match &ev {
                ServiceEvent::ServiceFound(_, fullname) => {
                    if listed.found(fullname) {
                        crowd.store(true, Ordering::Relaxed);
                    }
                    leftovers.found(fullname);
                    None
                }
                ServiceEvent::ServiceResolved(r) => {
                    leftovers.resolved(&r.fullname);
                    None
                }
                ServiceEvent::SearchStarted(_) => leftovers.search_started(),
                _ => None,
            };
            if let Some(n) = stale {
                let _ = stale_tx.try_send(n);
            }
            if matches!(ev, ServiceEvent::ServiceFound(..)) {
                continue;
            }
            // The end of a replay (see `replay`), the event a
            // full queue would drop first, waits for room instead: one
            // event a query, and the browse frees a slot in microseconds,
            // long before mdns-sd's channel could fill. So does
            // the end of a browse, which a clearing waits for.
            if matches!(
                ev,
                ServiceEvent::SearchStarted(..) | ServiceEvent::SearchStopped(..)
            ) {
                if tx.send(ev).await.is_err() {
                    return;
                }
                continue;
            }
            match tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(more) = EVENT_DROPS.admit() {
                        warn!(
                            held_back = more,
                            "mDNS events come faster than they can be \
                            applied; dropping some (counted) until the flood ebbs"
                        );
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
    Forwarded {
        events: rx,
        leftovers: stale_rx,
        crowded,
        channels,
        task: AbortOnDropHandle::new(task),
    }
}

/// Forwards the news still in the channels of the browses a browse
/// restarted: every channel `held` but the last, its own (see [`forward`]);
/// false once the browse no longer reads the queue. Each channel stays in
/// `held` until it is empty, for a restart that stops this meanwhile.
async fn forward_left(
    held: &Mutex<Vec<mdns_sd::Receiver<ServiceEvent>>>,
    tx: &mpsc::Sender<ServiceEvent>,
    stats: &DiscoveryStats,
) -> bool {
    let mut forwarded = 0usize;
    loop {
        let channel = {
            let held = held.lock().unwrap_or_else(|e| e.into_inner());
            if held.len() < 2 {
                break;
            }
            held[0].clone()
        };
        loop {
            // Its news waits for room rather than be dropped: it is bounded
            // (by mdns-sd's channels), the browse frees a slot in
            // microseconds, and a drop here would cost this browse's replay
            // its sweep. Meanwhile this browse's own events wait in
            // mdns-sd's channel.
            let Ok(room) = tx.reserve().await else {
                return false;
            };
            // Taken only with room for it, so that a restart that stops
            // this meanwhile loses nothing. Only resolutions and removals:
            // the listings and searches were the old browse's own, and this
            // browse's replay lists every cached instance again.
            let news = channel.try_iter().find(|ev| {
                matches!(
                    ev,
                    ServiceEvent::ServiceResolved(..) | ServiceEvent::ServiceRemoved(..)
                )
            });
            let Some(ev) = news else { break };
            stats.events.fetch_add(1, Ordering::Relaxed);
            room.send(ev);
            forwarded += 1;
        }
        held.lock().unwrap_or_else(|e| e.into_inner()).remove(0);
    }
    if forwarded > 0 {
        debug!(
            events = forwarded,
            "forwarded the news the restarted browse had left in mdns-sd's channel"
        );
    }
    true
}

/// Discovered backends that a fresh browse did not replay, with where
/// they are.
fn unreplayed(services: &[Arc<Service>], seen: &HashSet<String>) -> HashMap<String, Target> {
    let mut lacking = HashMap::new();
    for svc in services {
        for b in svc.table.snapshot().backends.iter() {
            if !seen.contains(&b.spec.key) {
                lacking.insert(b.spec.key.clone(), b.spec.target.clone());
            }
        }
    }
    lacking
}

/// The addresses the tables dial instance `key` at.
fn addresses_of(services: &[Arc<Service>], key: &str) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for svc in services {
        for b in svc.table.snapshot().backends.iter() {
            if let (true, Target::Addrs(a)) = (b.spec.key == key, &b.spec.target) {
                addrs.extend_from_slice(a);
            }
        }
    }
    addrs
}

/// Whether this host's link towards `key` is down: towards its addresses
/// as a backend, and its node's in the ring. mdns-sd drops what it learnt
/// over an interface that goes down, the ring's nodes too, and a node
/// that only provides asks nothing: it knew none of them again until
/// their next announcements, up to 80 s later, and watched none meanwhile.
fn unlinked(services: &[Arc<Service>], ring: &Ring, key: &str) -> bool {
    let mut addrs = addresses_of(services, key);
    if let Some(ip) = ring.owner(key).and_then(|(_, p)| p.addr) {
        addrs.push(SocketAddr::new(ip, wire::MDNS_PORT));
    }
    route::no_link_towards_any(&addrs)
}

/// Removes a discovered backend gone from mdns-sd's cache unannounced.
fn sweep(services: &[Arc<Service>], key: &str) {
    for svc in services {
        if svc.table.apply(Update::Remove(key.to_owned())) {
            info!(service = %svc.name, instance = %key, "backend left (gone from the mDNS cache)");
        }
    }
}

/// What this node can dial: TLS terminators need our TLS; plain instances
/// are refused by a node with TLS unless `--allow-plaintext`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsUse {
    /// This node has a cluster key or PKI.
    pub available: bool,
    /// Plain instances are acceptable even so.
    pub allow_plaintext: bool,
}

impl TlsUse {
    /// Why an instance offering TLS or not (`offers_tls`) is of no use here.
    fn refuses(self, offers_tls: bool) -> Option<&'static str> {
        match (offers_tls, self.available) {
            (true, false) => Some("it speaks TLS only and this node has no cluster key"),
            (false, true) if !self.allow_plaintext => {
                Some("it offers no TLS (start with --allow-plaintext to use it anyway)")
            }
            _ => None,
        }
    }
}

/// Why a resolved instance is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unused {
    /// Nothing its owner can do makes it usable: unsigned or badly signed
    /// under the cluster key, flawed, not a mesh service (see `refusals`).
    Refused,
    /// An out-of-date copy of a real instance's record (expired, replayed,
    /// signed in the future, an address not signed): its owner's next
    /// record counts.
    Stale,
}

/// Turns one resolve event into table updates. Whatever the link sent is
/// checked first: a flawed or unusable instance is counted and logged once
/// (escaped). Without a key it also leaves any table it was in (the link is
/// trusted, and this is the instance's newest record); with a key, a record
/// that is not verified changes nothing, so a stranger cannot knock a
/// verified instance out by forging a flawed record under its name.
/// Returns the peer's usable addresses and the instance's state when the
/// record is a valid one, else why it is not used.
fn resolved(
    services: &[Arc<Service>],
    r: &ResolvedService,
    tls: TlsUse,
    verifier: Option<&mut Verifier>,
    stats: &DiscoveryStats,
    ours: bool,
) -> Result<(Vec<PeerAddr>, State), Unused> {
    let keyed = verifier.is_some();
    let txt_bytes = advert::txt_len(r.get_properties().iter().map(|p| (p.key(), p.val())));
    if let Err(flaw) = wire::check(&r.fullname, r.get_port(), txt_bytes) {
        let counter = match flaw {
            Flaw::Name => &stats.bad_name,
            Flaw::Port => &stats.bad_port,
            Flaw::Txt => &stats.bad_txt,
        };
        stats.ignore(counter, &r.fullname, flaw.reason());
        if !keyed {
            removed(services, &r.fullname);
        }
        return Err(Unused::Refused);
    }
    let Some(advert) = wire::parse_txt(|k| r.get_property_val_str(k)) else {
        stats.ignore(
            &stats.bad_service,
            &r.fullname,
            "not a mesh service (no valid svc= TXT key)",
        );
        if !keyed {
            removed(services, &r.fullname);
        }
        return Err(Unused::Refused);
    };
    let peer = peer_addrs(r);
    debug!(instance = %r.fullname, advertised = %Joined(&peer), "resolved");
    // The seal before the TLS flag: a stranger's record is counted as
    // unsigned whatever it claims.
    let peer = match verifier.map(|v| admit(v, r, &advert, &peer)) {
        None => peer,
        Some(Ok(signed)) => signed,
        // The tables keep what was last verified (until its seal expires):
        // a forged or replayed copy of a real instance's record must not
        // take it away either.
        // Our own record, heard first with our loopback addresses alone
        // (a node that only provides, just started): its next copy counts.
        Some(Err(Reject::ForeignAddress)) if ours => {
            debug!(instance = %r.fullname, "our own record came without a signed address; waiting for the next");
            return Err(Unused::Stale);
        }
        Some(Err(why)) => {
            stats.ignore(counter(stats, why), &r.fullname, why.reason());
            return Err(match why {
                Reject::Unsigned | Reject::BadSignature => Unused::Refused,
                Reject::Expired | Reject::Future | Reject::Replayed | Reject::ForeignAddress => {
                    Unused::Stale
                }
            });
        }
    };
    if let Some(why) = tls.refuses(advert.tls) {
        stats.ignore(&stats.tls_mismatch, &r.fullname, why);
        removed(services, &r.fullname);
        return Ok((peer, advert.state));
    }
    let local = addr::local_addrs();
    let mut addrs = addr::choose(&peer, r.get_port(), &local);
    // A record that names a listener of this node (a stranger's, on a
    // keyless LAN: `127.0.0.1` and our port) would have it dial itself,
    // each connection making one more, until its limit is full.
    let listeners: Vec<SocketAddr> = services.iter().filter_map(|s| s.listener).collect();
    let all = addrs.len();
    addrs.retain(|a| !addr::is_listener(*a, &listeners, &local));
    if all > 0 && addrs.is_empty() {
        stats.ignore(
            &stats.own_listener,
            &r.fullname,
            "it names a listener of this node (a loop)",
        );
    }
    // Every ambassador names its node; an Avahi service file need not.
    let origin = if r.get_property_val_str("node").is_some() {
        Origin::Mesh
    } else {
        Origin::ThirdParty
    };
    for svc in services {
        if svc.name != advert.service || addrs.is_empty() {
            // An instance that changed its svc= leaves the old service; one
            // without a dialable address is of no use to any.
            if svc.table.apply(Update::Remove(r.fullname.clone())) {
                info!(service = %svc.name, instance = %r.fullname, "backend left");
            }
            continue;
        }
        let spec = BackendSpec {
            key: r.fullname.clone(),
            target: Target::Addrs(addrs.clone()),
            weight: advert.weight,
            draining: advert.state != State::Up,
            tls: advert.tls,
            origin,
        };
        let snap = svc.table.snapshot();
        let known = snap.backends.iter().any(|b| b.spec.key == spec.key);
        if !known && !make_room(svc, &snap, services, stats, &r.fullname) {
            continue;
        }
        let target = spec.target.to_string();
        if svc.table.apply(Update::Upsert(spec)) {
            let what = match (known, advert.state) {
                (false, _) => "backend joined",
                (true, State::Draining) => "backend draining",
                (true, State::Down) => "backend down",
                (true, State::Up) => "backend updated",
            };
            info!(service = %svc.name, instance = %r.fullname, target = %target,
                weight = advert.weight, "{what}");
        }
    }
    Ok((peer, advert.state))
}

/// Whether a new instance may join `svc`'s table (`snap`) under the caps.
/// A full table makes room by dropping a backend that has never answered
/// and failed its probe: a flood of dead records that arrived first does
/// not lock a real provider out. Otherwise the newcomer is turned away
/// (counted); mdns-sd offers it again at the next re-browse.
fn make_room(
    svc: &Service,
    snap: &Snapshot,
    services: &[Arc<Service>],
    stats: &DiscoveryStats,
    fullname: &str,
) -> bool {
    let total: usize = services
        .iter()
        .map(|s| s.table.snapshot().backends.len())
        .sum();
    let (full, counter, why) = if snap.backends.len() >= MAX_INSTANCES_PER_SERVICE {
        (true, &stats.over_service_cap, "its service's table is full")
    } else if total >= MAX_INSTANCES {
        (true, &stats.over_total_cap, "the discovery tables are full")
    } else {
        (false, &stats.over_service_cap, "")
    };
    if !full {
        return true;
    }
    let failed = |b: &&Arc<Backend>| {
        !svc.table.is_proven(&b.stats) && svc.table.health(&b.stats) != Health::Healthy
    };
    match snap.backends.iter().find(failed) {
        Some(victim) if svc.table.apply(Update::Remove(victim.spec.key.clone())) => {
            stats.evicted.fetch_add(1, Ordering::Relaxed);
            info!(service = %svc.name, instance = %victim.spec.key,
                "backend left (never answered; dropped to make room)");
            true
        }
        _ => {
            stats.ignore(counter, fullname, why);
            false
        }
    }
}

/// Peer addresses as `a,b,c`, formatted only when the log line is enabled.
struct Joined<'a>(&'a [PeerAddr]);

impl std::fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", p.ip)?;
        }
        Ok(())
    }
}

/// Drops `fullname` from every table; whether any had it.
fn removed(services: &[Arc<Service>], fullname: &str) -> bool {
    let mut any = false;
    for svc in services {
        if svc.table.apply(Update::Remove(fullname.to_owned())) {
            info!(service = %svc.name, instance = %fullname, "backend left");
            any = true;
        }
    }
    any
}

/// Whether a listener whose cache lost the records of `fullname` (their
/// TTL ran out) knows their node alive by a ring link, and by which:
/// `"watched"`, its own link to the node is up and it said no goodbye for
/// it; `"watcher"`, the node is the one before it in the ring and holds a
/// link to it (from any address the node listed). The node, if so; not
/// for an instance whose last record said it is leaving: that was its
/// goodbye, and its node lives on.
fn linked_with(
    ring: &Ring,
    aim: &Aim,
    watchers: &super::link::Watchers,
    fullname: &str,
) -> Option<(String, &'static str)> {
    let (node, _) = ring.owner(fullname)?;
    let via = if aim.linked(&node) {
        "watched"
    } else if ring.predecessor() == Some(node.as_str())
        && ring.addresses(&node).iter().any(|ip| watchers.contains(ip))
    {
        "watcher"
    } else {
        return None;
    };
    if ring.is_leaving(fullname) {
        debug!(node, via, instance = %fullname, "the instance of a node linked with this one said it was leaving and is gone; no question");
        return None;
    }
    Some((node, via))
}

/// When a listener last asked each node whose refresh it missed for its
/// records, in the last [`MISSED_ASK_EVERY`]: the bound on what a
/// stranger's fake nodes, linked and run out one after another, cost.
#[derive(Debug, Default)]
struct MissedAsks(HashMap<String, Instant>);

impl MissedAsks {
    /// Whether `node` may be asked about at `now`: not asked about in
    /// [`MISSED_ASK_EVERY`], and fewer than [`MISSED_ASKS_MOST`] nodes
    /// were.
    fn may_ask(&mut self, node: &str, now: Instant) -> bool {
        self.0
            .retain(|_, at| now.saturating_duration_since(*at) < MISSED_ASK_EVERY);
        !self.0.contains_key(node) && self.0.len() < MISSED_ASKS_MOST
    }

    /// Notes that `node` was asked about at `now`.
    fn asked(&mut self, node: &str, now: Instant) {
        self.0.insert(node.to_owned(), now);
    }

    /// When `node` was asked about, if an answer may still come at `now`
    /// ([`ASKED_WAIT`]).
    fn asking(&self, node: &str, now: Instant) -> Option<Instant> {
        let at = *self.0.get(node)?;
        (now.saturating_duration_since(at) < ASKED_WAIT).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browse_that_keeps_ending_is_reopened_slower_and_slower() {
        let pauses: Vec<u128> = (0..9).map(|n| rebrowse_pause(n).as_millis()).collect();
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(rebrowse_pause(u32::MAX), REBROWSE_MOST);
    }

    fn gone(name: &str) -> ServiceEvent {
        ServiceEvent::ServiceRemoved(SERVICE_TYPE.into(), name.into())
    }

    #[test]
    fn a_listener_asks_about_a_few_nodes_a_minute_each_once() {
        let mut asks = MissedAsks::default();
        let t0 = Instant::now();
        assert!(asks.may_ask("a", t0));
        asks.asked("a", t0);
        assert!(!asks.may_ask("a", t0 + MISSED_ASK_EVERY / 2), "asked twice");
        for node in ["b", "c"] {
            assert!(asks.may_ask(node, t0));
            asks.asked(node, t0);
        }
        // A stranger's fake nodes, one after another, cost no more.
        assert!(!asks.may_ask("d", t0 + MISSED_ASK_EVERY / 2));
        let later = t0 + MISSED_ASK_EVERY;
        assert!(asks.may_ask("a", later) && asks.may_ask("d", later));
    }

    /// A node's instances run out together, one removal after another:
    /// the first asks for all of them, and the others wait for its
    /// answers without asking.
    #[test]
    fn a_listeners_question_covers_the_node_while_its_answer_may_come() {
        let mut asks = MissedAsks::default();
        let t0 = Instant::now();
        assert_eq!(asks.asking("a", t0), None);
        asks.asked("a", t0);
        assert_eq!(asks.asking("a", t0 + ASK_AGAIN_AFTER), Some(t0));
        let past = t0 + ASKED_WAIT;
        assert_eq!(asks.asking("a", past), None);
        assert!(!asks.may_ask("a", past), "asked once a minute at most");
        assert_eq!(asks.asking("b", t0), None);
    }

    #[tokio::test]
    async fn a_listener_knows_the_node_before_it_alive_by_its_link_from_any_of_its_addresses() {
        let peer = |ips: &[&str]| -> Vec<PeerAddr> {
            let ip = |a: &&str| PeerAddr {
                ip: a.parse().unwrap(),
                scope: 0,
            };
            ips.iter().map(ip).collect()
        };
        let (web_a, web_z) = (
            format!("web@a.{SERVICE_TYPE}"),
            format!("web@z.{SERVICE_TYPE}"),
        );
        let mut ring = Ring::new("m");
        ring.seen("a", &web_a, &peer(&["10.0.0.1", "10.0.0.5"]), Some(4000));
        ring.seen("z", &web_z, &peer(&["10.0.0.26"]), Some(4000));
        let (aim, watchers) = (Aim::default(), super::super::link::Watchers::default());
        let asked = |name: &str| linked_with(&ring, &aim, &watchers, name);
        assert_eq!(asked(&web_a), None, "no link up");
        // The node before this one links from its primary address, not
        // the lowest it listed (the probe's).
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        let mut from_a = watchers.mark(ip("10.0.0.5"));
        from_a.set(true);
        assert_eq!(asked(&web_a), Some(("a".to_owned(), "watcher")));
        // A link from the node after it says nothing of it: that one is
        // watched by this node, and only while its own link is up.
        let mut from_z = watchers.mark(ip("10.0.0.26"));
        from_z.set(true);
        assert_eq!(asked(&web_z), None);
        drop(from_a);
        assert_eq!(asked(&web_a), None, "the link closed");
        // A provide withdrawn while its node lives on (a reload, its
        // local service down) says so before its goodbye.
        let mut from_a = watchers.mark(ip("10.0.0.5"));
        from_a.set(true);
        ring.set_leaving(&web_a, true);
        assert_eq!(linked_with(&ring, &aim, &watchers, &web_a), None);
        ring.set_leaving(&web_a, false);
        assert!(linked_with(&ring, &aim, &watchers, &web_a).is_some());
    }

    /// An event as the tests compare it: "gone NAME", "search NAME".
    fn said(ev: &ServiceEvent) -> String {
        match ev {
            ServiceEvent::ServiceRemoved(_, n) => format!("gone {n}"),
            ServiceEvent::SearchStarted(s) => format!("search {s}"),
            other => format!("{other:?}"),
        }
    }

    /// What a browse's forwarder queued, up to and with the removal of
    /// `last`.
    async fn news_until(fwd: &mut Forwarded, last: &str, news: &mut Vec<String>) {
        let last = format!("gone {last}");
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), fwd.events.recv())
                .await
                .expect("the browse's events stopped")
                .expect("the browse's forwarder ended");
            news.push(said(&ev));
            if news.last() == Some(&last) {
                return;
            }
        }
    }

    /// What a stopped browse's queue still held, for the caller to apply.
    fn queued(fwd: &mut Forwarded, news: &mut Vec<String>) {
        while let Ok(ev) = fwd.events.try_recv() {
            news.push(said(&ev));
        }
    }

    /// The news of a browse that restarts is not lost with it: what our
    /// queue holds is applied by the caller, and what mdns-sd's channel
    /// still holds, or gets before mdns-sd swaps the channels, comes first
    /// in the next browse's events. (This runtime has one thread: the
    /// forwarders run only while the test waits.)
    #[tokio::test]
    async fn a_restarted_browse_forwards_what_the_old_one_left_in_mdns_sds_channel() {
        let stats = Arc::new(DiscoveryStats::default());
        let (old_tx, old_rx) = flume::bounded(16);
        old_tx
            .send(ServiceEvent::SearchStarted("old".into()))
            .unwrap();
        old_tx.send(gone("a")).unwrap();
        let mut old = forward(old_rx, Vec::new(), stats.clone());
        // The forwarder moves everything there is before it waits again.
        let first = old.events.recv().await;
        assert!(matches!(first, Some(ServiceEvent::SearchStarted(_))));
        // Sent as the browse restarts, not yet taken when it is stopped.
        old_tx.send(gone("b")).unwrap();
        let found = ServiceEvent::ServiceFound(SERVICE_TYPE.into(), "x".into());
        old_tx.send(found).unwrap();
        let backlog = old.stop().await;
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].len(), 2, "nothing was left in mdns-sd's channel");
        let mut news = Vec::new();
        queued(&mut old, &mut news);
        // mdns-sd still sends to the old channel until it takes the new
        // browse, then sends that browse's first event and drops the old.
        old_tx.send(gone("c")).unwrap();
        let (new_tx, new_rx) = flume::bounded(16);
        new_tx
            .send(ServiceEvent::SearchStarted("new".into()))
            .unwrap();
        drop(old_tx);
        new_tx.send(gone("d")).unwrap();
        let mut new = forward(new_rx, backlog, stats);
        news_until(&mut new, "d", &mut news).await;
        assert_eq!(
            news,
            ["gone a", "gone b", "gone c", "search new", "gone d"],
            "each piece of news once, in order, none of the old browse's listings"
        );
    }

    /// A browse restarted again while it still forwards its predecessor's
    /// news (more than our queue holds) hands the rest on as well.
    #[tokio::test]
    async fn a_second_restart_hands_on_the_first_ones_news_it_had_not_forwarded() {
        let stats = Arc::new(DiscoveryStats::default());
        let many = EVENT_QUEUE + 100;
        let (first_tx, first_rx) = flume::unbounded();
        for n in 0..many {
            first_tx.send(gone(&format!("{n}"))).unwrap();
        }
        drop(first_tx);
        let (second_tx, second_rx) = flume::unbounded();
        second_tx
            .send(ServiceEvent::SearchStarted("second".into()))
            .unwrap();
        second_tx.send(gone("s")).unwrap();
        let mut second = forward(second_rx, vec![first_rx], stats.clone());
        // Let it fill our queue, where it waits for room.
        for _ in 0..10_000 {
            if second.events.len() == EVENT_QUEUE {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(second.events.len(), EVENT_QUEUE);
        let backlog = second.stop().await;
        assert_eq!(
            backlog.len(),
            2,
            "the first browse's channel was not handed on"
        );
        let mut news = Vec::new();
        queued(&mut second, &mut news);
        let (third_tx, third_rx) = flume::unbounded();
        third_tx
            .send(ServiceEvent::SearchStarted("third".into()))
            .unwrap();
        third_tx.send(gone("t")).unwrap();
        drop(second_tx);
        let mut third = forward(third_rx, backlog, stats.clone());
        news_until(&mut third, "t", &mut news).await;
        let want: Vec<String> = (0..many)
            .map(|n| format!("gone {n}"))
            .chain(["gone s", "search third", "gone t"].map(String::from))
            .collect();
        assert_eq!(news, want);
        assert_eq!(stats.events_dropped.load(Ordering::Relaxed), 0);
    }
}
