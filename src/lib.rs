//! mesh-amb: a masterless mesh of ambassadors.
//!
//! An ambassador is a local TCP proxy that stands in for a remote service.
//! Data flows one way through these modules:
//!
//! ```text
//! cli ──> config ──> Ambassador::new
//!                        │  static backends (spec) ──┐
//!                        │  discovery::mdns::browse ─┴─> table::Update
//!                        ▼
//!                    table::Table  (one per consume; snapshots for readers)
//!                        │
//!   proxy::serve ── accept ──> balance::Balancer::order(snapshot)
//!                        │         └─> proxy::connect: dial down the list,
//!                        │             report failures back to the table
//!                        ▼
//!                    copy both ways until both sides are done
//!
//! discovery::provider: local health check ──> advertise / withdraw (mDNS)
//! proxy::connect failure ──> Service::suspect ──> mdns verify ──> Remove
//! ```
//!
//! - [`spec`]: the `--consume`/`--provide` strings and Docker-link variables.
//! - [`cli`] / [`config`]: what the user typed, and the validated result.
//! - [`table`]: live backends of one service, with passive health.
//! - [`balance`]: policies that order a snapshot's backends.
//! - [`proxy`]: listeners, the connection pipeline, byte copying.
//! - [`dial`]: connecting to a backend with several addresses.
//! - [`discovery`]: the mDNS mesh: advertising, browsing, the wire contract.
//! - [`health`]: active TCP checks (provider-side and consumer-side).
//! - [`demo`]: the self-contained demonstration behind `mesh-amb demo`.
//!
//! Shutdown is one [`Shutdown`] handle: `begin` stops every listener and
//! starts the drain, `force` (or the drain timeout) closes what is left.

pub mod balance;
pub mod cli;
pub mod config;
pub mod copy;
pub mod demo;
pub mod dial;
pub mod discovery;
pub mod health;
pub mod proxy;
pub mod sockopt;
pub mod spec;
pub mod table;

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::balance::Balancer;
use crate::config::Config;
use crate::discovery::mdns::{self, Mdns};
use crate::proxy::{Service, Shared};
use crate::table::{BackendSpec, Table, Target, Update};

/// Tells a running [`Ambassador`] to stop. Clones share state.
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

/// One node: its consumed services and its provided ones.
pub struct Ambassador {
    config: Config,
    services: Vec<Arc<Service>>,
    /// Failing discovered backends, for the browse task to verify; taken
    /// by `run`.
    suspects: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

impl Ambassador {
    /// Builds the tables and fills them with the static backends; consumes
    /// without static backends will be fed by discovery.
    pub fn new(config: Config) -> Ambassador {
        let (suspect_tx, suspect_rx) = mpsc::unbounded_channel();
        let services = config
            .consumes
            .iter()
            .map(|c| {
                let table = Arc::new(Table::new(config.proxy.eject_time));
                for b in &c.backends {
                    table.apply(Update::Upsert(BackendSpec {
                        key: format!("static:{}:{}", b.host, b.port),
                        target: Target::from_host(&b.host, b.port),
                        weight: b.weight,
                        draining: false,
                    }));
                }
                Arc::new(Service {
                    name: c.name.clone(),
                    table,
                    balancer: Balancer::new(config.proxy.policy),
                    suspects: c.backends.is_empty().then(|| suspect_tx.clone()),
                })
            })
            .collect();
        Ambassador {
            config,
            services,
            suspects: Mutex::new(Some(suspect_rx)),
        }
    }

    /// Services whose backends come from discovery.
    fn discovered(&self) -> Vec<Arc<Service>> {
        self.services
            .iter()
            .filter(|s| s.suspects.is_some())
            .cloned()
            .collect()
    }

    /// The configuration this node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The consumed services, in `config.consumes` order.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// Binds one listener per consume on the configured address, with a
    /// backlog sized from the connection limit; raises the process's file
    /// descriptor limit first, as the connection limit needs it.
    pub async fn bind(&self) -> anyhow::Result<Vec<TcpListener>> {
        if let Err(e) = sockopt::raise_fd_limit() {
            warn!(error = %e, "cannot raise the file descriptor limit");
        }
        let max = sockopt::clamp_max_connections(
            self.config.proxy.max_connections,
            sockopt::fd_limit(),
            sockopt::FD_MARGIN,
        );
        let backlog = sockopt::backlog_for(max);
        let mut listeners = Vec::new();
        for c in &self.config.consumes {
            let addr = std::net::SocketAddr::new(self.config.bind, c.port);
            let l = sockopt::bind_listener(addr, backlog)
                .with_context(|| format!("cannot listen on {addr} for '{}'", c.name))?;
            listeners.push(l);
        }
        Ok(listeners)
    }

    /// Serves `listeners` (one per consume, in order) until `shutdown`, then
    /// drains. Returns once every connection task has ended.
    pub async fn run(&self, listeners: Vec<TcpListener>, shutdown: Shutdown) -> anyhow::Result<()> {
        anyhow::ensure!(
            listeners.len() == self.services.len(),
            "{} listeners for {} consumes",
            listeners.len(),
            self.services.len()
        );
        let discovered = self.discovered();
        let needs_mdns = !discovered.is_empty() || !self.config.provides.is_empty();
        let mdns = if needs_mdns {
            let d = &self.config.discovery;
            let m = Arc::new(Mdns::start(d)?);
            info!(node = %d.node_id, interfaces = ?d.interfaces, addresses = ?d.advertise_addrs,
                "mDNS discovery started");
            Some(m)
        } else {
            None
        };
        // Discovery and checks outlive the listeners: they keep tables fresh
        // while connections drain.
        let background = CancellationToken::new();
        let side_tasks = TaskTracker::new();
        if let Some(m) = &mdns {
            let suspects = self
                .suspects
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .context("run() called twice")?;
            side_tasks.spawn(mdns::browse(
                m.clone(),
                discovered.clone(),
                suspects,
                background.clone(),
            ));
        }
        if let Some(every) = self.config.discovery.backend_check {
            for svc in &discovered {
                side_tasks.spawn(health::check_backends(
                    svc.clone(),
                    every,
                    self.config.proxy.connect_timeout,
                    background.clone(),
                ));
            }
        }
        let providers = TaskTracker::new();
        if let Some(m) = &mdns {
            for p in &self.config.provides {
                providers.spawn(discovery::provider::run(
                    m.clone(),
                    p.clone(),
                    self.config.discovery.clone(),
                    shutdown.graceful.clone(),
                    shutdown.immediate.clone(),
                ));
            }
        }
        providers.close();

        let mut settings = self.config.proxy.clone();
        settings.max_connections = sockopt::fit_connections(settings.max_connections);
        let shared = Arc::new(Shared {
            limit: Arc::new(Semaphore::new(settings.max_connections)),
            settings,
            hard_stop: shutdown.immediate.clone(),
        });
        let tracker = TaskTracker::new();
        let mut serving = Vec::new();
        for (listener, svc) in listeners.into_iter().zip(&self.services) {
            let backends: Vec<String> = svc
                .table
                .snapshot()
                .backends
                .iter()
                .map(|b| b.spec.target.to_string())
                .collect();
            let addr = listener.local_addr().context("listener address")?;
            if svc.suspects.is_some() {
                info!(service = %svc.name, listen = %addr, policy = ?svc.balancer.policy(),
                    "listening; backends come from discovery");
            } else {
                info!(service = %svc.name, listen = %addr, backends = %backends.join(","),
                    policy = ?svc.balancer.policy(), "listening");
            }
            serving.push((listener, svc.clone()));
        }
        let accepting = (!serving.is_empty()).then(|| {
            tokio::spawn(proxy::serve(
                serving,
                shared.clone(),
                shutdown.graceful.clone(),
                tracker.clone(),
            ))
        });

        shutdown.graceful.cancelled().await;
        if let Some(task) = accepting {
            // The listeners are closed once it returns.
            task.await.context("the accept loop failed")?;
        }
        tracker.close();
        let open = tracker.len();
        if open > 0 {
            info!(connections = open, timeout = ?self.config.proxy.drain_timeout,
                "stopped accepting; draining open connections");
        }
        let drained = tokio::select! {
            _ = tracker.wait() => true,
            _ = tokio::time::sleep(self.config.proxy.drain_timeout) => false,
            _ = shutdown.immediate.cancelled() => false,
        };
        if !drained {
            warn!(
                connections = tracker.len(),
                "closing connections that did not finish in time"
            );
            shutdown.immediate.cancel();
            tracker.wait().await;
        }
        providers.wait().await;
        background.cancel();
        side_tasks.close();
        side_tasks.wait().await;
        if let Some(m) = mdns {
            m.shutdown().await;
        }
        info!("shut down");
        Ok(())
    }
}
