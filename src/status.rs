//! What a running node shows its operators: every consumed service with
//! its backends, every provided service, and what discovery refused, read
//! from the live counters at one instant.
//!
//! This is the shape of `/api/v1/status` (serialised as is, with
//! [`VERSION`]), and what the stats page and `/metrics` render. Fields are
//! only ever added within a version; a removal or a change of meaning
//! bumps it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

use crate::backends::balance::Policy;
use crate::backends::counters::HistogramSnapshot;
use crate::backends::table::{unix_ms, Health, Origin};
use crate::backends::Service;
use crate::discovery::provider::ProvideStatus;
use crate::discovery::stats::DiscoveryStats;
use crate::discovery::wire::{self, State};
use crate::settings::Config;

/// Version of the status document's shape.
pub const VERSION: u32 = 1;

/// The whole document: one node, or several (`mesh-amb demo`).
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    pub version: u32,
    /// When it was read, in ms since the Unix epoch.
    pub generated_at_ms: u64,
    pub nodes: Vec<NodeStatus>,
}

impl Document {
    pub fn new(nodes: Vec<NodeStatus>) -> Document {
        Document {
            version: VERSION,
            generated_at_ms: unix_ms(),
            nodes,
        }
    }
}

/// One node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// The node id (`--node-id`, or a random one).
    pub node: String,
    /// mesh-amb's version.
    pub version: &'static str,
    pub started_at_ms: u64,
    /// Advertisements signed with a cluster key (its fingerprint), or not.
    pub cluster_key: Option<String>,
    /// Mutual TLS between ambassadors.
    pub tls: bool,
    pub consumes: Vec<ConsumeStatus>,
    pub provides: Vec<ProvideView>,
    /// Browse events received from the link.
    pub discovery_events: u64,
    /// What discovery refused or dropped, by reason (see
    /// [`DiscoveryStats`]).
    pub discovery: Vec<(&'static str, u64)>,
}

/// One consumed service.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeStatus {
    pub name: String,
    /// The local listener.
    pub listen: SocketAddr,
    /// `discovered` or `static`.
    pub source: &'static str,
    pub policy: Policy,
    /// Client connections accepted.
    pub clients: u64,
    /// Client connections closed without a backend.
    pub turned_away: u64,
    /// Clients held now for a backend (`--wait-for-backend`).
    pub waiting: u64,
    /// Backend ejections started (failed connects or checks, connections
    /// closed at once unanswered).
    pub ejections: u64,
    pub active: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Seconds from accept to a ready backend.
    pub connect_latency: HistogramSnapshot,
    pub backends: Vec<BackendStatus>,
}

/// One backend of a consumed service.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    /// Its identity: the DNS-SD instance name, or `static:HOST:PORT`.
    pub key: String,
    pub origin: Origin,
    /// Where it is dialed (several addresses are tried in order).
    pub address: String,
    pub state: BackendState,
    /// While ejected or down: the failure that ejected it.
    pub ejected_for: Option<String>,
    /// While ejected: how long until it is tried again.
    pub ejected_remaining_ms: Option<u64>,
    pub weight: u32,
    /// Dialed with mutual TLS.
    pub tls: bool,
    pub active: u64,
    pub total: u64,
    pub failures: u64,
    /// Backend-to-client bytes, counted live.
    pub bytes_in: u64,
    /// Client-to-backend bytes, counted live.
    pub bytes_out: u64,
    /// When it joined or last changed state, in ms since the Unix epoch.
    pub changed_at_ms: u64,
}

/// The state of a backend as an operator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Takes new connections.
    Up,
    /// Discovered, and has not answered yet: tried after proven backends.
    Unproven,
    /// Its provider is leaving: open connections finish, new ones go
    /// elsewhere unless nothing else is left.
    Draining,
    /// Failed recently: skipped until the ejection ends.
    Ejected,
    /// Its ejection is over but it has not answered since: the next
    /// client tries it (and ejects it again for longer if it fails).
    Down,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Unproven => "unproven",
            BackendState::Draining => "draining",
            BackendState::Ejected => "ejected",
            BackendState::Down => "down",
        }
    }
}

/// One provided service.
#[derive(Debug, Clone, Serialize)]
pub struct ProvideView {
    pub name: String,
    /// The local service's port.
    pub port: u16,
    pub weight: u32,
    /// The DNS-SD instance name it is advertised under.
    pub instance: String,
    /// The port consumers dial (a TLS terminator's, with TLS).
    pub advertised_port: u16,
    pub tls: bool,
    /// The local check: `up`, `down`, or `unknown` before the first one.
    pub local: &'static str,
    /// What the record says now (`up`, `draining`, `down`), or
    /// `withdrawn` while not advertised.
    pub advertised: &'static str,
    /// The addresses the seal covers (with a cluster key).
    pub signed_addrs: Vec<IpAddr>,
    pub changed_at_ms: u64,
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `850 ms`, `12 s`, `3 min`, `2 h`, `4 d`.
pub fn human_span(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1_000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        7_200_000..172_800_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

/// A node's consumes (with their listeners) and provides, in
/// configuration order, as the node publishes them at start and after each
/// reload.
#[derive(Clone, Default)]
pub struct Parts {
    pub consumes: Vec<(Arc<Service>, SocketAddr)>,
    pub provides: Vec<Arc<ProvideStatus>>,
}

/// Reads a running node's status; clones share the node (an admin server
/// holds one while the node runs), and follow its reloads.
#[derive(Clone)]
pub struct Observer {
    pub(crate) config: watch::Receiver<Arc<Config>>,
    pub(crate) parts: watch::Receiver<Parts>,
    pub(crate) started_at_ms: u64,
    pub(crate) discovery: Arc<DiscoveryStats>,
}

impl Observer {
    /// The node id of the node it reads.
    pub fn node_id(&self) -> String {
        self.config.borrow().discovery.node_id.clone()
    }

    /// Reads every counter once. Cheap (no lock on the data path), but it
    /// walks every backend: a page refresh, not a hot loop.
    pub fn read(&self) -> NodeStatus {
        let config = self.config.borrow().clone();
        let parts = self.parts.borrow().clone();
        let node = config.discovery.node_id.clone();
        let consumes = parts
            .consumes
            .iter()
            .map(|(svc, addr)| consume(svc, *addr))
            .collect();
        let provides = parts.provides.iter().map(|p| provide(p, &node)).collect();
        NodeStatus {
            node,
            version: env!("CARGO_PKG_VERSION"),
            started_at_ms: self.started_at_ms,
            cluster_key: config
                .security
                .cluster_key
                .as_ref()
                .map(|k| k.fingerprint().to_string()),
            tls: config.security.cluster_key.is_some() || config.security.pki.is_some(),
            consumes,
            provides,
            discovery_events: self.discovery.events.load(Ordering::Relaxed),
            discovery: self.discovery.counters().to_vec(),
        }
    }
}

fn consume(svc: &Service, listen: SocketAddr) -> ConsumeStatus {
    let c = &svc.counters;
    let v = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let snap = svc.table.snapshot();
    let backends: Vec<BackendStatus> = snap
        .backends
        .iter()
        .map(|b| {
            let s = &b.stats;
            let health = svc.table.health(s);
            let state = match health {
                Health::Ejected { .. } => BackendState::Ejected,
                Health::Healthy if s.failing_in_a_row() > 0 => BackendState::Down,
                Health::Healthy if b.spec.draining => BackendState::Draining,
                Health::Healthy if !svc.table.is_proven(s) => BackendState::Unproven,
                Health::Healthy => BackendState::Up,
            };
            let remaining = match health {
                Health::Ejected { remaining } => Some(remaining.as_millis() as u64),
                Health::Healthy => None,
            };
            BackendStatus {
                key: b.spec.key.clone(),
                origin: b.spec.origin,
                address: b.spec.target.to_string(),
                state,
                ejected_for: matches!(state, BackendState::Ejected | BackendState::Down)
                    .then(|| s.ejected_for())
                    .flatten(),
                ejected_remaining_ms: remaining,
                weight: b.spec.weight,
                tls: b.spec.tls,
                active: v(&s.active),
                total: v(&s.total),
                failures: v(&s.failures),
                bytes_in: v(&s.bytes_in),
                bytes_out: v(&s.bytes_out),
                changed_at_ms: s.changed_at_ms(),
            }
        })
        .collect();
    ConsumeStatus {
        name: svc.name.clone(),
        listen,
        source: if svc.is_discovered() {
            "discovered"
        } else {
            "static"
        },
        policy: svc.balancer.policy(),
        clients: v(&c.clients),
        turned_away: v(&c.turned_away),
        waiting: v(&c.waiting),
        ejections: svc.table.ejections(),
        active: backends.iter().map(|b| b.active).sum(),
        bytes_in: v(&c.bytes_in),
        bytes_out: v(&c.bytes_out),
        connect_latency: c.connect_latency.snapshot(),
        backends,
    }
}

fn provide(p: &ProvideStatus, node: &str) -> ProvideView {
    let now = p.get();
    ProvideView {
        name: p.spec.name.clone(),
        port: p.spec.port,
        weight: p.spec.weight,
        instance: format!(
            "{}.{}",
            wire::instance_label(&p.spec.name, node),
            wire::SERVICE_TYPE
        ),
        advertised_port: p.offer.port,
        tls: p.offer.tls,
        local: match now.local_up {
            None => "unknown",
            Some(true) => "up",
            Some(false) => "down",
        },
        advertised: match now.advertised {
            None => "withdrawn",
            Some(State::Up) => "up",
            Some(State::Draining) => "draining",
            Some(State::Down) => "down",
        },
        signed_addrs: now.signed,
        changed_at_ms: now.changed_at_ms,
    }
}
