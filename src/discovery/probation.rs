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

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::stats::DiscoveryStats;
use crate::backends::table::{Backend, Health, Origin};
use crate::backends::Service;
use crate::net::checks::reach;
use crate::net::dial::DialError;
use crate::security::Tls;

/// How often the table is scanned for backends to probe: a new provider
/// waits at most this long for its probe; a scan of a full table (1,024
/// backends) is a few microseconds of atomic loads.
pub const PROBE_SCAN: Duration = Duration::from_millis(100);
/// Probes in flight at once per service. Each is a socket for up to
/// `--connect-timeout`: 10,000 records that drop SYNs cost at most this
/// many descriptors, and are worked through at 32 per second (refusals,
/// the usual case on a LAN, at thousands per second).
pub const PROBES_AT_ONCE: usize = 32;

/// Probes `svc`'s backends on probation until `stop`.
pub async fn run(
    svc: Arc<Service>,
    timeout: Duration,
    tls: Option<Arc<Tls>>,
    stats: Arc<DiscoveryStats>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(PROBE_SCAN);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut probing: HashSet<String> = HashSet::new();
    let mut probes = crate::net::dial::Concurrent::new();
    loop {
        let done = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => None,
            Some(done) = probes.next(), if !probes.is_empty() => Some(done),
        };
        match done {
            None => {
                let snap = svc.table.snapshot();
                for b in snap.backends.iter().filter(|b| due(&svc, b)) {
                    if probes.len() >= PROBES_AT_ONCE {
                        break;
                    }
                    if probing.insert(b.spec.key.clone()) {
                        let b = b.clone();
                        let tls = tls.clone();
                        probes.push(async move {
                            let reached = match reach(&b, timeout, tls.as_deref()).await {
                                Ok(()) => Ok(true),
                                Err(DialError::Backend(_)) => Ok(false),
                                Err(DialError::Local(e)) => Err(e),
                            };
                            (reached, b)
                        });
                    }
                }
            }
            Some((result, b)) => {
                probing.remove(&b.spec.key);
                settle(&svc, &stats, &b, result);
            }
        }
    }
}

/// On probation, and not waiting out a failed probe.
fn due(svc: &Service, b: &Backend) -> bool {
    !svc.table.is_proven(&b.stats) && svc.table.health(&b.stats) == Health::Healthy
}

fn settle(svc: &Service, stats: &DiscoveryStats, b: &Backend, result: std::io::Result<bool>) {
    match result {
        Ok(true) => {
            stats.probes_passed.fetch_add(1, Ordering::Relaxed);
            svc.table.report_success(&b.stats);
            debug!(service = %svc.name, instance = %b.spec.key, backend = %b.spec.target,
                "new backend answered its probe");
        }
        Ok(false) => {
            // A client may have proven it meanwhile: then the probe's
            // failure is an ordinary one, not a probation's.
            if svc.table.is_proven(&b.stats) || stale(svc, b) {
                return;
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
        }
        // Out of descriptors: says nothing about the backend; the next
        // scan probes it again.
        Err(e) => debug!(service = %svc.name, backend = %b.spec.target, error = %e,
            "cannot probe a new backend"),
    }
}

/// Whether the table's entry for `b` now dials another target than the
/// probe did: a peer's first record often resolves with one address (a
/// link-local IPv6 one its service may not listen on) and the rest follow
/// within milliseconds; a failure of the old target says nothing of the
/// new one, which the next scan probes. Suspecting it would ask mDNS to
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
