//! This node's mDNS responder and browser (mdns-sd), and the task that turns
//! browse events into table updates.
//!
//! mdns-sd 0.21.7 facts this code is shaped by (measured on the project's
//! namespace lab, and read from its source): resolve events
//! repeat, so every one is an upsert; removals can come twice, so removal is
//! idempotent; a second browse of a type replaces the first, so there is one
//! browse and an internal fan-out; the event channel closes silently when it
//! fills, so it is drained promptly and re-opened when it ends; a crashed
//! peer lingers for its 120 s TTL, so connect failures ask for `verify`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mdns_sd::{IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::addr::{self, PeerAddr};
use super::wire::{self, State, SERVICE_TYPE};
use crate::backends::table::{BackendSpec, Target, Update};
use crate::backends::Service;
use crate::settings::DiscoverySettings;
use crate::spec::ProvideSpec;

/// How long a peer that failed a connect gets to answer a verification
/// query before browsers drop it: a crashed peer leaves in this time instead
/// of its two-minute TTL. Measured with mdns-sd 0.21.7: 1 s removed live
/// instances now and then (2-4 false removals in 24 s when two browsers
/// verified at once); 2 s gave none in over 200 verifications.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(2);
/// Goodbyes are sent by the daemon thread; waiting this long for its
/// acknowledgement covers a busy machine without hanging shutdown.
const DAEMON_REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before re-opening a browse that ended, so a daemon in trouble is
/// not asked in a tight loop.
const REBROWSE_DELAY: Duration = Duration::from_millis(100);
/// Re-browse this soon after a removal (debounced: one restart per burst).
const REBROWSE_AFTER_REMOVAL: Duration = Duration::from_secs(1);
/// Safety-net re-browse: after it, mdns-sd queries at 1, 2, 4... seconds,
/// so a node queries the LAN about seven times a minute.
const REBROWSE_EVERY: Duration = Duration::from_secs(60);
/// A re-browse replays mdns-sd's cache at once; this leaves margin for a
/// busy machine before missing instances count as gone.
const SWEEP_GRACE: Duration = Duration::from_secs(2);

/// What consumers are told to dial for a provided service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The SRV port: the local service's, or its TLS terminator's.
    pub port: u16,
    /// The port speaks mutual TLS.
    pub tls: bool,
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
}

impl Mdns {
    /// Starts the daemon, restricted to the configured interfaces or
    /// addresses when there are any.
    pub fn start(settings: &DiscoverySettings) -> anyhow::Result<Mdns> {
        let daemon = ServiceDaemon::new().context("cannot start the mDNS daemon")?;
        let mut ifaces: Vec<IfKind> = settings
            .interfaces
            .iter()
            .map(|i| IfKind::Name(i.clone()))
            .collect();
        ifaces.extend(settings.advertise_addrs.iter().map(|a| IfKind::Addr(*a)));
        if !ifaces.is_empty() {
            daemon
                .disable_interface(IfKind::All)
                .and_then(|_| {
                    daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
                })
                .and_then(|_| daemon.enable_interface(ifaces.clone()))
                .context("cannot restrict mDNS to the chosen interfaces")?;
        } else {
            ifaces.push(IfKind::All);
        }
        Ok(Mdns {
            daemon,
            host: wire::host_name(&settings.node_id),
            node_id: settings.node_id.clone(),
            advertise: settings.advertise_addrs.clone(),
            ifaces,
        })
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
    /// Never probe a re-announcement: mdns-sd answers no query meanwhile.
    pub fn advertise(
        &self,
        p: &ProvideSpec,
        offer: Offer,
        state: State,
        probe: bool,
    ) -> anyhow::Result<()> {
        let label = wire::instance_label(&p.name, &self.node_id);
        let txt = wire::txt(&p.name, &self.node_id, p.weight, state, offer.tls);
        let addrs: Vec<IpAddr> = self.advertise.clone();
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &label,
            &self.host,
            &addrs[..],
            offer.port,
            &txt[..],
        )
        .with_context(|| format!("cannot build the advertisement of {p}"))?;
        if addrs.is_empty() {
            info = info.enable_addr_auto();
        }
        info.set_interfaces(self.ifaces.clone());
        info.set_requires_probe(probe);
        self.daemon
            .register(info)
            .with_context(|| format!("cannot advertise {p}"))
    }

    /// Withdraws our instance of `p` (goodbye packets) and waits until the
    /// daemon has sent them. Withdrawing what is not advertised is fine.
    pub async fn withdraw(&self, p: &ProvideSpec) -> anyhow::Result<()> {
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

    /// Stops the daemon (it sends goodbyes for what is still registered) and
    /// waits for its thread to finish.
    pub async fn shutdown(&self) {
        match self.daemon.shutdown() {
            Ok(rx) => {
                let _ = tokio::time::timeout(DAEMON_REPLY_TIMEOUT, rx.recv_async()).await;
            }
            Err(e) => debug!(error = %e, "mDNS daemon already stopped"),
        }
    }
}

/// Stops the daemon thread however the node ends (an error after start, a
/// panic): dropping the handle alone would leave it running, and its
/// goodbyes unsent.
impl Drop for Mdns {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// Feeds the tables of the consumed services from the one browse of
/// `_amb._tcp`, and verifies instances the data plane reports as failing.
///
/// The browse is started again (which replays mdns-sd's cache and resets its
/// query back-off to one second) in three cases: when its channel ends,
/// shortly after any removal, so an instance dropped by a verification that
/// came back (a link restored, a falsely suspected peer) is found again in
/// seconds rather than at the next hourly query; and every
/// `REBROWSE_EVERY` (a minute) as a safety net. After each restart, instances that
/// the cache does not replay within `SWEEP_GRACE` (2 s) are removed: their
/// removal may have been lost while the channel was closed.
pub async fn browse(
    mdns: Arc<Mdns>,
    services: Vec<Arc<Service>>,
    tls: TlsUse,
    mut suspects: mpsc::Receiver<String>,
    stop: CancellationToken,
) {
    let mut first = true;
    'browse: loop {
        let events = match mdns.daemon.browse(SERVICE_TYPE) {
            Ok(rx) => rx,
            Err(e) => {
                warn!(error = %e, "cannot browse {SERVICE_TYPE}; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(REBROWSE_DELAY * 10) => continue 'browse,
                }
            }
        };
        let mut next_rebrowse = Instant::now() + REBROWSE_EVERY;
        // Instances replayed since this browse started, until the sweep.
        let mut replayed: Option<HashSet<String>> = (!first).then(HashSet::new);
        let sweep_at = Instant::now() + SWEEP_GRACE;
        first = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = events.recv_async() => match ev {
                    Ok(ServiceEvent::ServiceResolved(r)) => {
                        if let Some(seen) = &mut replayed {
                            seen.insert(r.fullname.clone());
                        }
                        resolved(&services, &r, tls);
                    }
                    Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                        if removed(&services, &fullname) {
                            next_rebrowse = next_rebrowse.min(Instant::now() + REBROWSE_AFTER_REMOVAL);
                        }
                    }
                    Ok(ServiceEvent::SearchStopped(_)) | Err(_) => {
                        warn!("the mDNS browse ended; starting it again");
                        tokio::time::sleep(REBROWSE_DELAY).await;
                        continue 'browse;
                    }
                    Ok(_) => {}
                },
                _ = tokio::time::sleep_until(sweep_at), if replayed.is_some() => {
                    let seen = replayed.take().unwrap_or_default();
                    sweep(&services, &seen);
                }
                _ = tokio::time::sleep_until(next_rebrowse) => {
                    debug!("restarting the browse");
                    continue 'browse;
                }
                Some(key) = suspects.recv() => {
                    // The sender already spaces reports of one instance
                    // (backends::Suspects), so a burst of failed connects
                    // does not flood the LAN.
                    debug!(instance = %key, "verifying an instance after a failed connect");
                    mdns.verify(&key);
                }
            }
        }
    }
}

/// Removes discovered backends that a fresh browse did not replay.
fn sweep(services: &[Arc<Service>], seen: &HashSet<String>) {
    for svc in services {
        for b in svc.table.snapshot().backends.iter() {
            if !seen.contains(&b.spec.key) && svc.table.apply(Update::Remove(b.spec.key.clone())) {
                info!(service = %svc.name, instance = %b.spec.key, "backend left (gone from the mDNS cache)");
            }
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

/// Applies one resolved instance to the tables.
fn resolved(services: &[Arc<Service>], r: &ResolvedService, tls: TlsUse) {
    let Some(advert) = wire::parse_txt(|k| r.get_property_val_str(k)) else {
        debug!(instance = %r.fullname, "not a usable mesh service (no valid svc= TXT key)");
        removed(services, &r.fullname);
        return;
    };
    if let Some(why) = tls.refuses(advert.tls) {
        debug!(instance = %r.fullname, "ignored: {why}");
        removed(services, &r.fullname);
        return;
    }
    let peer: Vec<PeerAddr> = r
        .get_addresses()
        .iter()
        .map(|a| PeerAddr {
            ip: a.to_ip_addr(),
            scope: match a {
                ScopedIp::V6(v6) => v6.scope_id().index,
                _ => 0,
            },
        })
        .collect();
    let addrs = addr::choose(&peer, r.get_port(), &addr::local_addrs());
    debug!(instance = %r.fullname, advertised = %Joined(&peer), "resolved");
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
        };
        let known = svc
            .table
            .snapshot()
            .backends
            .iter()
            .any(|b| b.spec.key == spec.key);
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
