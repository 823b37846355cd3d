//! Probation probes: a consumer dials each newly discovered backend once,
//! in the background, so that a real provider is proven (and takes clients)
//! within milliseconds of joining, while a record nobody answers for is
//! found out before any client tries it. See [`crate::backends::table`] for
//! what probation means to the balancer.
//!
//! A backend whose probe failed is ejected for the long back-off of a
//! never-proven backend and probed again when that ends. A third-party
//! one is also reported for mDNS verification, so a stale record of a
//! crashed host leaves the table in seconds; a mesh node is left to the
//! witness ring.
//!
//! The backends of one host are probed [`HOST_BURST`] at once, then one
//! each [`HOST_REFILL`], with at most [`HOST_AT_ONCE`] in flight. A
//! stranger's flood lists its hundreds of instances at one address, which
//! may be anyone's, and every consumer on the link dialled every one of
//! them: at 64 hosts, one flood of 1,000 put 101,649 frames (SYN and RST)
//! on the link in 10 s, 17 times the flood's mDNS traffic over 150 s,
//! aimed where the stranger chose. Paced, a consumer dials about a
//! hundred of them before the flood's clearing (see `verifying`) takes
//! them all away; another host's backends are not held up behind them,
//! even when the flood's host drops SYNs and each probe waits out the
//! connect timeout.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::bucket::Bucket;
use super::reconfirm::responder;
use super::stats::DiscoveryStats;
use crate::backends::table::{Backend, Health, Origin};
use crate::backends::Service;
use crate::net::checks::reach;
use crate::net::dial::{Concurrent, DialError};
use crate::security::Tls;

/// How often the table is scanned for backends to probe: a new provider
/// waits at most this long for its probe; a scan of a full table (1,024
/// backends) is a few microseconds of atomic loads.
pub const PROBE_SCAN: Duration = Duration::from_millis(100);
/// Probes in flight at once per service. Each is a socket for up to
/// `--connect-timeout`: 10,000 records that drop SYNs cost at most this
/// many descriptors, and are worked through at 32 per connect timeout;
/// refusals, the usual case on a LAN, free their slot at once and the
/// next probe starts then, not at the next scan: thousands per second.
/// (Started only at each scan, a flood of 10,000 refusing records was
/// worked through at 320 a second, and a real provider that joined
/// behind them waited seconds for its probe, its clients meanwhile sent
/// to the records.)
pub const PROBES_AT_ONCE: usize = 32;
/// Probes of one host's backends at once: more than a flood needs to be
/// found out (`verifying::FLOOD` failing within a second), and more
/// instances of one service than a host runs.
pub const HOST_BURST: u32 = PROBES_AT_ONCE as u32;
/// Then one more probe of that host's backends this often (8 a second).
pub const HOST_REFILL: Duration = Duration::from_millis(125);
/// Probes of one host's backends in flight at once: a host whose fakes
/// drop SYNs, each probe holding its slot for the connect timeout, leaves
/// the other half of the slots to other hosts.
pub const HOST_AT_ONCE: usize = PROBES_AT_ONCE / 2;

/// One host's share of the probes.
struct Pace {
    bucket: Bucket,
    in_flight: usize,
}

/// Probes `svc`'s backends on probation until `stop`, looking for new
/// ones every `scan` ([`PROBE_SCAN`]) and whenever a probe ends.
pub async fn run(
    svc: Arc<Service>,
    scan: Duration,
    timeout: Duration,
    tls: Option<Arc<Tls>>,
    stats: Arc<DiscoveryStats>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(scan);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut probing: HashSet<String> = HashSet::new();
    let mut hosts: HashMap<IpAddr, Pace> = HashMap::new();
    let mut probes: Concurrent<(std::io::Result<bool>, Arc<Backend>)> = Concurrent::new();
    // Set when a probe could not be started for want of a descriptor:
    // the next one waits for the scan, so a process out of descriptors
    // does not retry in a loop.
    let mut starved = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {
                starved = false;
                let now = Instant::now();
                hosts.retain(|_, pace| pace.in_flight > 0 || !pace.bucket.is_full(now));
            }
            Some((result, b)) = probes.next(), if !probes.is_empty() => {
                probing.remove(&b.spec.key);
                if let Some(pace) = host(&b).and_then(|h| hosts.get_mut(&h)) {
                    pace.in_flight -= 1;
                    // Out of descriptors: not a probe of that host.
                    if result.is_err() {
                        pace.bucket.give_back();
                    }
                }
                starved |= settle(&svc, &stats, &b, result);
                if starved {
                    continue;
                }
            }
        }
        let snap = svc.table.snapshot();
        let now = Instant::now();
        // Never probed first: a host's pace is not spent on probing its
        // dead records again while its new ones wait.
        let fresh = |b: &&Arc<Backend>| b.stats.failing_in_a_row() == 0;
        let due = snap.backends.iter().filter(|b| due(&svc, b));
        for b in due.clone().filter(fresh).chain(due.filter(|b| !fresh(b))) {
            if probes.len() >= PROBES_AT_ONCE {
                break;
            }
            if probing.contains(&b.spec.key) {
                continue;
            }
            if let Some(host) = host(b) {
                let pace = hosts.entry(host).or_insert_with(|| Pace {
                    bucket: Bucket::full(HOST_BURST, HOST_REFILL, now),
                    in_flight: 0,
                });
                if pace.in_flight >= HOST_AT_ONCE || !pace.bucket.take(now) {
                    continue;
                }
                pace.in_flight += 1;
            }
            probing.insert(b.spec.key.clone());
            let b = b.clone();
            let tls = tls.clone();
            probes.push(async move {
                let reached = match reach(&b, timeout, tls.as_deref()).await {
                    Ok(()) => Ok(true),
                    Err(DialError::Backend(_)) => Ok(false),
                    Err(DialError::Local(e) | DialError::Unlinked(e)) => Err(e),
                };
                (reached, b)
            });
        }
    }
}

/// The host whose share a probe of `b` takes: its first IPv4 address,
/// as `reconfirm` asks it. Discovered backends have addresses; a name is
/// the user's, and trusted.
fn host(b: &Backend) -> Option<IpAddr> {
    responder(&b.spec.target).map(|at| at.ip())
}

/// On probation, and not waiting out a failed probe.
fn due(svc: &Service, b: &Backend) -> bool {
    !svc.table.is_proven(&b.stats) && svc.table.health(&b.stats) == Health::Healthy
}

/// Records a probe's outcome; whether it could not be made at all (out of
/// descriptors).
fn settle(
    svc: &Service,
    stats: &DiscoveryStats,
    b: &Backend,
    result: std::io::Result<bool>,
) -> bool {
    match result {
        Ok(true) => {
            stats.probes_passed.fetch_add(1, Ordering::Relaxed);
            svc.table.report_success(&b.stats);
            debug!(service = %svc.name, instance = %b.spec.key, backend = %b.spec.target,
                "new backend answered its probe");
            false
        }
        Ok(false) => {
            // A client may have proven it meanwhile: then the probe's
            // failure is an ordinary one, not a probation's.
            if svc.table.is_proven(&b.stats) || stale(svc, b) {
                return false;
            }
            svc.table
                .report_failure(&b.stats, &"never answered its probe");
            // A mesh node is the witness ring's to judge, once it has been
            // seen for a while: at 64 hosts starting together, probes of a
            // record whose IPv4 address came 16-500 ms later failed, and
            // the trials they started found the young responders too busy
            // to answer: false goodbyes, re-announcements, more load.
            if b.spec.origin != Origin::Mesh {
                svc.suspect(&b.spec.key);
            }
            stats.ignore(
                &stats.probes_failed,
                &b.spec.key,
                "never answered its probe: kept behind proven backends",
            );
            false
        }
        // Out of descriptors, or our own link down: says nothing about the
        // backend; the next scan probes it again.
        Err(e) => {
            debug!(service = %svc.name, backend = %b.spec.target, error = %e,
                "cannot probe a new backend");
            true
        }
    }
}

/// Whether the table's entry for `b` now dials another target than the
/// probe did: a peer's first record often resolves with one address (a
/// link-local IPv6 one its service may not listen on) and the rest follow
/// within milliseconds; a failure of the old target says nothing of the
/// new one, which is probed next. Suspecting it would ask mDNS to
/// verify a live instance: at 64 hosts starting together, thousands of
/// such verifications removed live instances.
fn stale(svc: &Service, b: &Backend) -> bool {
    svc.table
        .snapshot()
        .backends
        .iter()
        .find(|x| x.spec.key == b.spec.key)
        .is_some_and(|now| now.spec.target != b.spec.target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::balance::{Balancer, Policy};
    use crate::backends::service::Source;
    use crate::backends::table::{BackendSpec, Table, Target, Update};
    use std::net::SocketAddr;

    /// Where nothing listens, at 127.0.0.1.
    fn refusing() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// `records` backends at `dead`, and one more at `up` if given, on
    /// probation in a table, probed by [`run`] with `scan` and a 5 s
    /// connect timeout; the table and the stopper.
    fn probation(
        dead: SocketAddr,
        records: usize,
        up: Option<SocketAddr>,
        scan: Duration,
    ) -> (Arc<Table>, CancellationToken, tokio::task::JoinHandle<()>) {
        let table = Arc::new(Table::with_probation(Duration::from_secs(60)));
        let targets = (0..records)
            .map(|i| (format!("dead{i}"), dead))
            .chain(up.map(|at| ("up".to_string(), at)));
        for (key, addr) in targets {
            table.apply(Update::Upsert(BackendSpec {
                key,
                target: Target::Addrs(vec![addr]),
                weight: 1,
                draining: false,
                tls: false,
                origin: Origin::Static,
            }));
        }
        let svc = Arc::new(Service {
            name: "redis".into(),
            table: table.clone(),
            balancer: Balancer::new(Policy::P2c),
            source: Source::Static,
            listener: None,
            credentials: None,
            counters: Default::default(),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            svc,
            scan,
            Duration::from_secs(5),
            None,
            Arc::new(DiscoveryStats::default()),
            stop.clone(),
        ));
        (table, stop, task)
    }

    fn probed(table: &Table, records: usize) -> usize {
        let snap = table.snapshot();
        snap.backends[..records]
            .iter()
            .filter(|b| matches!(table.health(&b.stats), Health::Ejected { .. }))
            .count()
    }

    /// Waits until `b` is proven, failing with `never` past `end`.
    async fn wait_proven(table: &Table, b: &Backend, end: Instant, never: &str) {
        while !table.is_proven(&b.stats) {
            assert!(Instant::now() < end, "{never}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Most probes of one host's backends by `elapsed` after the start.
    fn paced_most(elapsed: Duration) -> usize {
        HOST_BURST as usize + (elapsed.as_nanos() / HOST_REFILL.as_nanos()) as usize
    }

    /// A flood of records nobody listens for, at one host, does not hold
    /// up the probe of a real provider at another listed after them: a
    /// refusal frees its slot at once, and the flood's host has used up
    /// its share.
    #[tokio::test]
    async fn a_flood_at_one_host_holds_up_no_other_hosts_probe() {
        let up = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let records = 10 * PROBES_AT_ONCE;
        let start = Instant::now();
        // One scan, at the start: the provider is probed when the first
        // probes end.
        let (table, stop, task) = probation(
            refusing(),
            records,
            Some(up.local_addr().unwrap()),
            Duration::from_secs(3600),
        );
        let provider = table.snapshot().backends[records].clone();
        let never = format!("the provider behind {records} refusing records was never probed");
        wait_proven(&table, &provider, start + Duration::from_secs(15), &never).await;
        let probed = probed(&table, records);
        assert!(probed <= paced_most(start.elapsed()), "{probed} probed");
        stop.cancel();
        task.await.unwrap();
    }

    /// A host's dead records, back from their ejection, do not spend its
    /// pace while a new one of its backends waits.
    #[tokio::test]
    async fn a_hosts_new_backend_is_probed_before_its_dead_ones_again() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let records = 3 * PROBES_AT_ONCE;
        let (table, stop, task) = probation(
            refusing(),
            records,
            Some(up.local_addr().unwrap()),
            PROBE_SCAN,
        );
        let snap = table.snapshot();
        // Failed once, their ejection over (the runner has not run yet:
        // the test's runtime has one thread).
        for b in &snap.backends[..records] {
            b.stats.set_failing_in_a_row(1);
        }
        let provider = snap.backends[records].clone();
        let end = Instant::now() + Duration::from_secs(15);
        wait_proven(&table, &provider, end, "the new backend was never probed").await;
        let probed = probed(&table, records);
        assert!(probed < records, "all {probed} dead records probed first");
        stop.cancel();
        task.await.unwrap();
    }

    /// A host whose records never answer, each probe waiting out the
    /// connect timeout, holds half the slots: a provider at another host
    /// is probed at once, not once those probes time out.
    #[tokio::test]
    async fn a_host_that_drops_syns_leaves_room_for_others() {
        // A listener that never accepts, its queue full: the kernel drops
        // further SYNs.
        let sink = tokio::net::TcpSocket::new_v4().unwrap();
        sink.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let at = sink.local_addr().unwrap();
        let _sink = sink.listen(0).unwrap();
        let mut filled = Vec::new();
        let connect = || tokio::net::TcpStream::connect(at);
        while let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(300), connect()).await {
            filled.push(c);
        }
        let up = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let records = 2 * PROBES_AT_ONCE;
        let start = Instant::now();
        let (table, stop, task) =
            probation(at, records, Some(up.local_addr().unwrap()), PROBE_SCAN);
        let provider = table.snapshot().backends[records].clone();
        // Well within the 5 s connect timeout.
        let end = start + Duration::from_secs(2);
        let never = "the provider waited behind probes that time out";
        wait_proven(&table, &provider, end, never).await;
        stop.cancel();
        task.await.unwrap();
    }

    /// One host's backends are probed at its pace, and all in time.
    #[tokio::test]
    async fn one_hosts_backends_are_probed_at_its_pace() {
        let records = 3 * PROBES_AT_ONCE;
        let start = Instant::now();
        let (table, stop, task) = probation(refusing(), records, None, PROBE_SCAN);
        let end = start + Duration::from_secs(30);
        loop {
            let probed = probed(&table, records);
            assert!(probed <= paced_most(start.elapsed()), "{probed} probed");
            if probed == records {
                break;
            }
            assert!(Instant::now() < end, "{probed} of {records} probed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
    }
}
