//! One provided service: advertise it while its local check passes, withdraw
//! it when the check fails, and leave gracefully on shutdown.
//!
//! Leaving is two steps, so that no consumer sends a client to a node that is
//! about to disappear: re-announce with `state=draining` (consumers stop
//! choosing it within milliseconds but keep their open connections), wait the
//! drain period, then send goodbyes.
//!
//! With the cluster key, an advertisement is sealed again before its seal is
//! half-way through its validity and whenever the host's addresses change.
//! A drain period longer than the validity ends early at consumers: the
//! draining record expires there, which only hastens what draining asks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::mdns::{Mdns, Offer, Stamp};
use super::wire::State;
use crate::backends::table::{unix_ms, Target};
use crate::net::checks::{probe, Checker, Down, CLOSE_GRACE};
use crate::settings::DiscoverySettings;
use crate::spec::ProvideSpec;

/// Upper bound on one local check: a local service that takes longer than
/// this to accept a connection is not fit to take clients.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a provider looks for its local service: loopback, and the
/// advertised addresses for services bound to one interface only.
pub fn check_target(port: u16, settings: &DiscoverySettings) -> Target {
    let mut addrs = vec![
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
    ];
    addrs.extend(
        settings
            .advertise_addrs
            .iter()
            .map(|a| SocketAddr::new(*a, port)),
    );
    Target::Addrs(addrs)
}

/// What one provide shows operators: its local service's health and what
/// the link was last told. Written by [`run`], read by the stats page.
#[derive(Debug)]
pub struct ProvideStatus {
    pub spec: ProvideSpec,
    /// What consumers are told to dial.
    pub offer: Offer,
    now: Mutex<Published>,
}

/// The state of one provide at some instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// The local check's verdict; `None` before the first check.
    pub local_up: Option<bool>,
    /// What the instance's record says now; `None` while not advertised.
    pub advertised: Option<State>,
    /// The addresses the last seal covers (with the cluster key).
    pub signed: Vec<IpAddr>,
    /// When any of the above last changed, in ms since the Unix epoch.
    pub changed_at_ms: u64,
}

impl ProvideStatus {
    /// The status of a provider whose predecessor's last state was
    /// `previous` (a reload changed the provide; `Published::default()`
    /// for a new one): what the link was told stands until the new
    /// provider tells it otherwise.
    pub fn new(spec: ProvideSpec, offer: Offer, previous: Published) -> ProvideStatus {
        ProvideStatus {
            spec,
            offer,
            now: Mutex::new(previous),
        }
    }

    pub fn get(&self) -> Published {
        self.now.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut Published)) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        let before = now.clone();
        change(&mut now);
        if *now != before {
            now.changed_at_ms = unix_ms();
        }
    }
}

/// Runs until `leaving` is cancelled, then drains and withdraws; `force`
/// cuts the drain period short. `status.offer` is what consumers are told
/// to dial (the local port, or a TLS terminator's).
pub async fn run(
    mdns: Arc<Mdns>,
    status: Arc<ProvideStatus>,
    settings: DiscoverySettings,
    leaving: CancellationToken,
    force: CancellationToken,
) {
    let (p, offer) = (status.spec.clone(), status.offer);
    let target = check_target(p.port, &settings);
    let timeout = CHECK_TIMEOUT.min(settings.check_interval);
    let mut checker = Checker::new(settings.rise, settings.fall);
    let mut ticker = tokio::time::interval(settings.check_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // What consumers were last told: whether our instance is advertised.
    // Kept apart from the checker's verdict so that a failed advertise or
    // withdraw (a full daemon queue) is retried on the next tick. A
    // provider that takes over from one a reload replaced starts with the
    // record that one left, outdated: it is announced anew once the check
    // passes, or withdrawn once it fails, never left standing.
    let mut announced = status.get().advertised.is_some();
    let mut outdated = announced;
    let mut probe_first = settings.probe;
    let mut warned = false;
    // Why the last check failed, for the line that says so.
    let mut why = Down::NoConnection;
    // The first check only connects: a service already running is
    // advertised at once (a consumer routes to a provider started 11 ms
    // before; held 100 ms, 114 ms). One that closes each connection is
    // found by the next checks, and withdrawn after `fall` of them.
    let mut grace = Duration::ZERO;
    let mut short_of_resources = false;
    // What the last seal covered (with the key, while advertised).
    let mut stamp: Option<Stamp> = None;
    loop {
        tokio::select! {
            _ = leaving.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let ok = match check(&target, (timeout, grace), &leaving).await {
            None => break,
            Some(Ok(verdict)) => {
                short_of_resources = false;
                grace = CLOSE_GRACE;
                if let Err(down) = verdict {
                    why = down;
                }
                verdict.is_ok()
            }
            // Our own shortage (EMFILE...): no reason to withdraw. One line
            // per shortage, not one per tick.
            Some(Err(e)) => {
                if !std::mem::replace(&mut short_of_resources, true) {
                    warn!(provide = %p, error = %e, "local check cannot be made; skipped until it can");
                }
                continue;
            }
        };
        checker.observe(ok);
        status.update(|s| s.local_up = Some(checker.is_up()));
        match (checker.is_up(), announced) {
            (true, was) if !was || outdated => {
                match mdns.advertise(&p, offer, State::Up, probe_first) {
                    Ok(sealed) => {
                        announced = true;
                        outdated = false;
                        probe_first = false;
                        info!(provide = %p, instance = %mdns.fullname(&p), "local service answers: advertising");
                        note_seal(&p, &mut stamp, sealed);
                        status.update(|s| {
                            s.advertised = Some(State::Up);
                            s.signed = stamp
                                .as_ref()
                                .map(|st| st.signed.clone())
                                .unwrap_or_default();
                        });
                    }
                    Err(e) => warn!(provide = %p, "{e:#}; retrying"),
                }
            }
            (true, true) if stamp.as_ref().is_some_and(|s| mdns.resign_due(s)) => {
                match mdns.advertise(&p, offer, State::Up, false) {
                    Ok(sealed) => {
                        note_seal(&p, &mut stamp, sealed);
                        status.update(|s| {
                            s.signed = stamp
                                .as_ref()
                                .map(|st| st.signed.clone())
                                .unwrap_or_default();
                        });
                    }
                    Err(e) => warn!(provide = %p, "{e:#}; retrying"),
                }
            }
            (true, true) => mdns.refresh_if_due(&p),
            (false, true) => {
                // "down" first: a TXT change takes consumers' traffic away in
                // milliseconds, the goodbye only after a second.
                if let Err(e) = mdns.advertise(&p, offer, State::Down, false) {
                    warn!(provide = %p, "{e:#}");
                }
                match mdns.withdraw(&p).await {
                    Ok(()) => {
                        announced = false;
                        outdated = false;
                        status.update(|s| s.advertised = None);
                        warn!(provide = %p, "local service stopped answering ({why}): advertisement withdrawn");
                    }
                    Err(e) => {
                        // `withdraw` forgot the instance before the daemon
                        // failed to confirm: if the service answers again
                        // before the retry, it is advertised anew, not
                        // refreshed (there is nothing left to refresh).
                        outdated = true;
                        warn!(provide = %p, "{e:#}; retrying");
                    }
                }
            }
            (false, false) if !warned => {
                warn!(provide = %p, "local service does not answer on {target} ({why}); not advertising it");
                warned = true;
            }
            _ => {}
        }
        warned &= !checker.is_up();
    }
    if !announced {
        return;
    }
    if let Err(e) = mdns.advertise(&p, offer, State::Draining, false) {
        warn!(provide = %p, "{e:#}");
    }
    status.update(|s| s.advertised = Some(State::Draining));
    info!(provide = %p, period = ?settings.drain_period, "draining: consumers send new clients elsewhere");
    tokio::select! {
        _ = tokio::time::sleep(settings.drain_period) => {}
        _ = force.cancelled() => {}
    }
    status.update(|s| s.advertised = None);
    match mdns.withdraw(&p).await {
        Ok(()) => info!(provide = %p, "advertisement withdrawn"),
        // The daemon's shutdown, which follows, sends the goodbyes anyway.
        Err(e) => warn!(provide = %p, "{e:#}"),
    }
}

/// Keeps the new seal, and says which addresses it signs whenever that
/// changes (at the first advertisement, then after address changes): a host
/// with more addresses than a record holds learns which ones consumers can
/// dial, and how to choose.
fn note_seal(p: &ProvideSpec, stamp: &mut Option<Stamp>, sealed: Option<Stamp>) {
    let Some(new) = sealed else { return };
    let changed = stamp
        .as_ref()
        .is_none_or(|old| old.signed != new.signed || old.left_out != new.left_out);
    if changed {
        let list = |a: &[IpAddr]| {
            a.iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if new.left_out.is_empty() {
            info!(provide = %p, signed = %list(&new.signed), "signed advertisement: consumers may dial these addresses");
        } else {
            warn!(provide = %p, signed = %list(&new.signed), left_out = %list(&new.left_out),
                "signed advertisement: consumers may dial only the signed addresses \
                 (IPv4 first, at most 4, as the TXT record allows); \
                 choose others with --advertise-addr or --interface");
        }
    }
    *stamp = Some(new);
}

/// One check of the local service (see [`probe`]), cut short when the node
/// starts leaving (`None`), so shutdown never waits for a slow check.
async fn check(
    target: &Target,
    (timeout, grace): (Duration, Duration),
    leaving: &CancellationToken,
) -> Option<std::io::Result<Result<(), Down>>> {
    tokio::select! {
        ok = probe(target, timeout, grace) => Some(ok),
        _ = leaving.cancelled() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_in_progress_ends_when_the_node_leaves() {
        let silent = mesh_amb_lab::SilentListener::new();
        let target = Target::Addrs(vec![silent.addr()]);
        let leaving = CancellationToken::new();
        // Long enough that only the cancellation can end it in time.
        let timeout = Duration::from_secs(3600);
        let checking = tokio::spawn({
            let leaving = leaving.clone();
            async move { check(&target, (timeout, CLOSE_GRACE), &leaving).await }
        });
        leaving.cancel();
        let got = tokio::time::timeout(Duration::from_secs(30), checking)
            .await
            .expect("the check ended after the cancellation")
            .unwrap();
        assert!(got.is_none(), "cancelled, not a result: {got:?}");
    }
}
