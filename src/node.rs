//! One node of the mesh: the consumed services with their listeners, the
//! provided services, and discovery, started together and stopped by one
//! [`Shutdown`].

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backends::balance::Balancer;
use crate::backends::table::{BackendSpec, Table, Target, Update};
use crate::backends::{Service, Source, Suspects};
use crate::discovery::mdns::{self, Mdns, Offer, TlsUse};
use crate::discovery::stats::DiscoveryStats;
use crate::discovery::{probation, provider};
use crate::net::accept::{self, Handler as _, Shared};
use crate::net::sockopt;
use crate::net::terminator::Terminator;
use crate::security::Tls;
use crate::settings::{all_or_listed, Config};

/// Tells a running node to stop. Clones share state.
#[derive(Clone, Default)]
pub struct Shutdown {
    graceful: CancellationToken,
    immediate: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }
    /// Stop accepting and let open connections finish (up to the drain
    /// timeout).
    pub fn begin(&self) {
        self.graceful.cancel();
    }
    /// Close every open connection now.
    pub fn force(&self) {
        self.graceful.cancel();
        self.immediate.cancel();
    }
}

/// Starts nodes; see [`Node::start`].
pub enum Node {}

/// A running node.
pub struct NodeHandle {
    config: Arc<Config>,
    services: Vec<Arc<Service>>,
    discovery_stats: Arc<DiscoveryStats>,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    /// Binds one listener per consume on the configured address, with a
    /// listen backlog as deep as the connection limit that fits this
    /// process's descriptors (raise them first: [`sockopt::raise_fd_limit`]).
    pub fn bind(config: &Config) -> anyhow::Result<Vec<TcpListener>> {
        let max = sockopt::clamp_max_connections(
            config.proxy.max_connections,
            sockopt::fd_limit(),
            sockopt::FD_MARGIN,
        );
        let backlog = sockopt::backlog_for(max);
        let mut listeners = Vec::new();
        for c in &config.consumes {
            let addr = std::net::SocketAddr::new(config.bind, c.port);
            let l = sockopt::bind_listener(addr, backlog)
                .with_context(|| format!("cannot listen on {addr} for '{}'", c.name))?;
            listeners.push(l);
        }
        Ok(listeners)
    }

    /// Starts serving `listeners` (one per consume, in `config.consumes`
    /// order), advertising the provides and browsing for the discovered
    /// consumes. Must be called inside a tokio runtime. Fails at once on an
    /// invalid config or when the mDNS daemon cannot start.
    pub fn start(config: Config, listeners: Vec<TcpListener>) -> anyhow::Result<NodeHandle> {
        // The binary validated already; a config built in code may not be.
        config.validate()?;
        anyhow::ensure!(
            listeners.len() == config.consumes.len(),
            "{} listeners for {} consumes",
            listeners.len(),
            config.consumes.len()
        );
        let (suspects, suspects_rx) = Suspects::channel(mdns::VERIFY_TIMEOUT * 2);
        let services: Vec<Arc<Service>> = config
            .consumes
            .iter()
            .map(|c| {
                let table = Arc::new(if c.backends.is_empty() {
                    Table::with_probation(config.proxy.eject_time)
                } else {
                    Table::new(config.proxy.eject_time)
                });
                for b in &c.backends {
                    table.apply(Update::Upsert(BackendSpec {
                        key: format!("static:{}:{}", b.host, b.port),
                        target: Target::from_host(&b.host, b.port),
                        weight: b.weight,
                        draining: false,
                        tls: b.tls,
                    }));
                }
                let source = if c.backends.is_empty() {
                    Source::Discovered(suspects.clone())
                } else {
                    Source::Static
                };
                Arc::new(Service {
                    name: c.name.clone(),
                    table,
                    balancer: Balancer::new(config.proxy.policy),
                    source,
                    credentials: config
                        .security
                        .credentials
                        .iter()
                        .find(|cr| cr.spec.service == c.name)
                        .cloned(),
                })
            })
            .collect();
        let tls = Tls::new(
            config.security.cluster_key.as_deref(),
            config.security.pki.as_ref(),
            &config.discovery.node_id,
        )
        .context("cannot set up TLS")?;
        // With TLS, each provide is offered through a terminator of its own.
        let mut terminators = Vec::new();
        let mut offers = Vec::new();
        for p in &config.provides {
            let Some(tls) = &tls else {
                offers.push(Offer {
                    port: p.port,
                    tls: false,
                });
                continue;
            };
            let backlog = sockopt::backlog_for(config.proxy.max_connections);
            let listener = Terminator::bind(p.tls_port, backlog)
                .with_context(|| format!("cannot listen for TLS connections to '{}'", p.name))?;
            let port = listener.local_addr()?.port();
            let local = provider::check_target(p.port, &config.discovery);
            let terminator = Terminator::new(p.clone(), local, tls.clone());
            terminators.push((listener, Arc::new(terminator)));
            offers.push(Offer { port, tls: true });
        }
        let needs_mdns = services.iter().any(|s| s.is_discovered()) || !config.provides.is_empty();
        let mdns = if needs_mdns {
            let d = &config.discovery;
            let key = config.security.cluster_key.as_deref();
            let m = Arc::new(Mdns::start(d, key)?);
            info!(node = %d.node_id, interfaces = %all_or_listed(&d.interfaces),
                addresses = %all_or_listed(&d.advertise_addrs),
                "mDNS discovery started");
            if let Some(key) = key {
                info!(key = %key.fingerprint(),
                    "cluster key: our advertisements are signed, and only signed ones are used");
            }
            Some(m)
        } else {
            None
        };
        let config = Arc::new(config);
        let shutdown = Shutdown::new();
        let discovery_stats = Arc::new(DiscoveryStats::default());
        let task = tokio::spawn(run(
            config.clone(),
            services.clone(),
            listeners,
            Security {
                tls,
                terminators,
                offers,
            },
            Discovery {
                mdns,
                suspects: suspects_rx,
                stats: discovery_stats.clone(),
            },
            shutdown.clone(),
        ));
        Ok(NodeHandle {
            config,
            services,
            discovery_stats,
            shutdown,
            task,
        })
    }
}

impl NodeHandle {
    /// The configuration this node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The consumed services, in `config.consumes` order.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// What discovery ignored, dropped and probed so far.
    pub fn discovery_stats(&self) -> &DiscoveryStats {
        &self.discovery_stats
    }

    /// The node's stop switch (clone it to stop from elsewhere).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Whether the node has stopped (or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the node has stopped: listeners closed, connections
    /// drained, goodbyes sent.
    pub async fn join(self) -> anyhow::Result<()> {
        self.task.await.context("the node task failed")?
    }
}

/// This node's TLS, its terminators, and what it offers for each provide
/// (in `config.provides` order).
struct Security {
    tls: Option<Arc<Tls>>,
    terminators: Vec<(TcpListener, Arc<Terminator>)>,
    offers: Vec<Offer>,
}

/// This node's mDNS daemon (when it needs one), the connect failures to
/// verify, and the counters of what the link sent.
struct Discovery {
    mdns: Option<Arc<Mdns>>,
    suspects: mpsc::Receiver<String>,
    stats: Arc<DiscoveryStats>,
}

/// Serves until `shutdown`, then drains. Returns once every connection task
/// and every discovery task has ended.
async fn run(
    config: Arc<Config>,
    services: Vec<Arc<Service>>,
    listeners: Vec<TcpListener>,
    security: Security,
    discovery: Discovery,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let Discovery {
        mdns,
        suspects,
        stats: discovery_stats,
    } = discovery;
    let discovered: Vec<Arc<Service>> = services
        .iter()
        .filter(|s| s.is_discovered())
        .cloned()
        .collect();
    // Discovery and checks outlive the listeners: they keep tables fresh
    // while connections drain.
    let background = CancellationToken::new();
    let side_tasks = TaskTracker::new();
    if let Some(m) = &mdns {
        // A provider-only node consumes nothing discovered: browsing would
        // only add queries to the LAN.
        if !discovered.is_empty() {
            side_tasks.spawn(mdns::browse(
                m.clone(),
                discovered.clone(),
                TlsUse {
                    available: security.tls.is_some(),
                    allow_plaintext: config.security.allow_plaintext,
                },
                suspects,
                discovery_stats.clone(),
                background.clone(),
            ));
        }
    }
    for svc in &discovered {
        side_tasks.spawn(probation::run(
            svc.clone(),
            config.proxy.connect_timeout,
            security.tls.clone(),
            discovery_stats.clone(),
            background.clone(),
        ));
    }
    if let Some(every) = config.discovery.backend_check {
        for svc in &discovered {
            side_tasks.spawn(crate::net::checks::check_backends(
                svc.clone(),
                every,
                config.proxy.connect_timeout,
                security.tls.clone(),
                background.clone(),
            ));
        }
    }
    if let Some(tls) = &security.tls {
        side_tasks.spawn(tls.clone().renew(background.clone()));
    }
    let providers = TaskTracker::new();
    if let Some(m) = &mdns {
        for (p, offer) in config.provides.iter().zip(&security.offers) {
            providers.spawn(provider::run(
                m.clone(),
                p.clone(),
                *offer,
                config.discovery.clone(),
                shutdown.graceful.clone(),
                shutdown.immediate.clone(),
            ));
        }
    }
    providers.close();

    let mut settings = config.proxy.clone();
    settings.max_connections = sockopt::fit_connections(settings.max_connections);
    let shared = Arc::new(Shared::new(
        settings,
        shutdown.immediate.clone(),
        security.tls.clone(),
    ));
    let tracker = TaskTracker::new();
    let mut serving = Vec::new();
    for (listener, svc) in listeners.into_iter().zip(&services) {
        // Only for the log line: nothing here may return early, or the
        // tasks started above would outlive the node.
        let addr = listener
            .local_addr()
            .map_or_else(|e| format!("? ({e})"), |a| a.to_string());
        if svc.is_discovered() {
            info!(service = %svc.name, listen = %addr, policy = ?svc.balancer.policy(),
                "listening; backends come from discovery");
        } else {
            let backends: Vec<String> = svc
                .table
                .snapshot()
                .backends
                .iter()
                .map(|b| b.spec.target.to_string())
                .collect();
            info!(service = %svc.name, listen = %addr, backends = %backends.join(","),
                policy = ?svc.balancer.policy(), "listening");
        }
        serving.push((listener, svc.clone()));
    }
    let accepting = (!serving.is_empty()).then(|| {
        tokio::spawn(accept::serve(
            serving,
            shared.clone(),
            shutdown.graceful.clone(),
            tracker.clone(),
        ))
    });

    // Terminators take mesh connections until their service is withdrawn:
    // consumers may still dial during the drain period.
    let withdrawn = CancellationToken::new();
    for (listener, t) in &security.terminators {
        if let Ok(addr) = listener.local_addr() {
            info!(provide = %t.name(), listen = %addr, "TLS terminator listening");
        }
    }
    // Their own connection limit: the LAN must not take local clients' slots.
    let mesh_shared = Arc::new(Shared::new(
        shared.settings.clone(),
        shutdown.immediate.clone(),
        security.tls.clone(),
    ));
    let terminating = (!security.terminators.is_empty()).then(|| {
        tokio::spawn(accept::serve(
            security.terminators,
            mesh_shared,
            withdrawn.clone(),
            tracker.clone(),
        ))
    });

    shutdown.graceful.cancelled().await;
    // A failure is reported once everything below has stopped.
    let mut failed = None;
    if let Some(task) = accepting {
        // The listeners are closed once it returns.
        failed = task.await.context("the accept loop failed").err();
    }
    providers.wait().await;
    withdrawn.cancel();
    if let Some(task) = terminating {
        let e = task
            .await
            .context("the TLS terminators' accept loop failed");
        failed = failed.or(e.err());
    }
    tracker.close();
    let open = tracker.len();
    if open > 0 {
        info!(connections = open, timeout = ?config.proxy.drain_timeout,
            "stopped accepting; draining open connections");
    }
    let drained = tokio::select! {
        _ = tracker.wait() => true,
        _ = tokio::time::sleep(config.proxy.drain_timeout) => false,
        _ = shutdown.immediate.cancelled() => false,
    };
    if !drained {
        if !tracker.is_empty() {
            warn!(
                connections = tracker.len(),
                "closing connections that did not finish in time"
            );
        }
        shutdown.immediate.cancel();
        tracker.wait().await;
    }
    background.cancel();
    side_tasks.close();
    side_tasks.wait().await;
    if let Some(m) = mdns {
        m.shutdown().await;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    info!("shut down");
    Ok(())
}
