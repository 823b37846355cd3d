//! One provided service: advertise it while its local check passes, withdraw
//! it when the check fails, and leave gracefully on shutdown.
//!
//! Leaving is two steps, so that no consumer sends a client to a node that is
//! about to disappear: re-announce with `state=draining` (consumers stop
//! choosing it within milliseconds but keep their open connections), wait the
//! drain period, then send goodbyes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::mdns::Mdns;
use super::wire::State;
use crate::config::DiscoverySettings;
use crate::health::{probe, Checker};
use crate::spec::ProvideSpec;

/// Upper bound on one local check: a local service that takes longer than
/// this to accept a connection is not fit to take clients.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a provider looks for its local service: loopback, and the
/// advertised addresses for services bound to one interface only.
pub fn check_addrs(port: u16, settings: &DiscoverySettings) -> Vec<SocketAddr> {
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
    addrs
}

/// Runs until `leaving` is cancelled, then drains and withdraws; `force`
/// cuts the drain period short.
pub async fn run(
    mdns: Arc<Mdns>,
    p: ProvideSpec,
    settings: DiscoverySettings,
    leaving: CancellationToken,
    force: CancellationToken,
) {
    let addrs = check_addrs(p.port, &settings);
    let timeout = CHECK_TIMEOUT.min(settings.check_interval);
    let mut checker = Checker::new(settings.rise, settings.fall);
    let mut ticker = tokio::time::interval(settings.check_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut announced_down = false;
    loop {
        tokio::select! {
            _ = leaving.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let ok = probe(&addrs, timeout).await;
        match checker.observe(ok) {
            Some(true) => match mdns.advertise(&p, State::Up) {
                Ok(()) => {
                    info!(provide = %p, instance = %mdns.fullname(&p), "local service answers: advertising")
                }
                Err(e) => warn!(provide = %p, "{e:#}"),
            },
            Some(false) => {
                if let Err(e) = mdns.advertise(&p, State::Down) {
                    warn!(provide = %p, "{e:#}");
                }
                mdns.withdraw(&p).await;
                warn!(provide = %p, "local service stopped answering: advertisement withdrawn");
            }
            None if !checker.is_up() && !announced_down => {
                warn!(provide = %p, "local service does not answer on port {}; not advertising it", p.port);
            }
            None => {}
        }
        announced_down = !checker.is_up();
    }
    if !checker.is_up() {
        return;
    }
    if let Err(e) = mdns.advertise(&p, State::Draining) {
        warn!(provide = %p, "{e:#}");
    }
    info!(provide = %p, period = ?settings.drain_period, "draining: consumers send new clients elsewhere");
    tokio::select! {
        _ = tokio::time::sleep(settings.drain_period) => {}
        _ = force.cancelled() => {}
    }
    mdns.withdraw(&p).await;
    info!(provide = %p, "advertisement withdrawn");
}
