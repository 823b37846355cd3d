//! mesh-amb: a masterless mesh of ambassadors.
//!
//! An ambassador is a local TCP proxy that stands in for a remote service.
//! Data flows one way through these modules:
//!
//! ```text
//! cli ──> config ──> Ambassador::new
//!                        │  static backends (spec) ──> table::Update
//!                        ▼
//!                    table::Table  (one per consume; snapshots for readers)
//!                        │
//!   proxy::serve ── accept ──> balance::Balancer::order(snapshot)
//!                        │         └─> proxy::connect: dial down the list,
//!                        │             report failures back to the table
//!                        ▼
//!                    copy both ways until both sides are done
//! ```
//!
//! - [`spec`]: the `--consume`/`--provide` strings and Docker-link variables.
//! - [`cli`] / [`config`]: what the user typed, and the validated result.
//! - [`table`]: live backends of one service, with passive health.
//! - [`balance`]: policies that order a snapshot's backends.
//! - [`proxy`]: listeners, the connection pipeline, byte copying.
//! - [`demo`]: the self-contained demonstration behind `mesh-amb demo`.
//!
//! Shutdown is one [`Shutdown`] handle: `begin` stops every listener and
//! starts the drain, `force` (or the drain timeout) closes what is left.

pub mod balance;
pub mod cli;
pub mod config;
pub mod demo;
pub mod proxy;
pub mod spec;
pub mod table;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::balance::Balancer;
use crate::config::Config;
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

/// One process's set of consumed services.
pub struct Ambassador {
    config: Config,
    services: Vec<Arc<Service>>,
}

impl Ambassador {
    /// Builds the tables and fills them with the static backends.
    pub fn new(config: Config) -> Ambassador {
        let services = config
            .consumes
            .iter()
            .map(|c| {
                let table = Arc::new(Table::new(c.name.clone(), config.proxy.eject_time));
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
                    port: c.port,
                    table,
                    balancer: Balancer::new(config.proxy.policy),
                })
            })
            .collect();
        Ambassador { config, services }
    }

    /// The consumed services, in `config.consumes` order.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// Binds one listener per consume on the configured address.
    pub async fn bind(&self) -> anyhow::Result<Vec<TcpListener>> {
        let mut listeners = Vec::new();
        for c in &self.config.consumes {
            let addr = std::net::SocketAddr::new(self.config.bind, c.port);
            let l = TcpListener::bind(addr)
                .await
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
        for p in &self.config.provides {
            warn!(provide = %p, "advertising needs discovery, which this build does not have yet; ignoring");
        }
        let settings = self.config.proxy.clone();
        let shared = Arc::new(Shared {
            limit: Arc::new(Semaphore::new(settings.max_connections)),
            settings,
            hard_stop: shutdown.immediate.clone(),
        });
        let tracker = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        for (listener, svc) in listeners.into_iter().zip(&self.services) {
            let backends: Vec<String> = svc
                .table
                .snapshot()
                .backends
                .iter()
                .map(|b| b.spec.target.to_string())
                .collect();
            let addr = listener.local_addr().context("listener address")?;
            if backends.is_empty() {
                warn!(service = %svc.name, listen = %addr,
                    "listening, but no backends are configured: connections will be refused");
            } else {
                info!(service = %svc.name, listen = %addr, backends = %backends.join(","),
                    policy = ?svc.balancer.policy(), "listening");
            }
            accept_loops.spawn(proxy::serve(
                listener,
                svc.clone(),
                shared.clone(),
                shutdown.graceful.clone(),
                tracker.clone(),
            ));
        }
        accept_loops.close();

        shutdown.graceful.cancelled().await;
        accept_loops.wait().await; // listeners are closed from here on
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
        info!("shut down");
        Ok(())
    }
}
