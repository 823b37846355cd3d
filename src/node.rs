//! One node of the mesh: the consumed services with their listeners, the
//! provided services, and discovery, started together, changed while they
//! run by [`NodeHandle::reload`], and stopped by one [`Shutdown`].
//!
//! - `running`: the node's parts and how each is added, changed and
//!   removed while the rest serves on.
//! - `serving`: one listener with its connections (a consume's, a TLS
//!   terminator's), stopped and drained on its own.
//! - `plan`: what a reload may change live and how it is reported.

mod plan;
mod running;
mod serving;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backends::Service;
use crate::discovery::stats::DiscoveryStats;
use crate::net::sockopt;
use crate::settings::Config;
use crate::status::Observer;

pub use plan::ReloadSummary;
use running::Running;

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

/// A request to the node's task: the new settings, and where to answer.
type Reload = (Config, oneshot::Sender<anyhow::Result<ReloadSummary>>);

/// A running node.
pub struct NodeHandle {
    config: watch::Receiver<Arc<Config>>,
    services: watch::Receiver<Vec<Arc<Service>>>,
    discovery_stats: Arc<DiscoveryStats>,
    observer: Observer,
    shutdown: Shutdown,
    reloader: Reloader,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Reloads a running node from elsewhere (a signal handler); see
/// [`NodeHandle::reload`]. Clones share the node.
#[derive(Clone)]
pub struct Reloader {
    requests: mpsc::Sender<Reload>,
}

impl Node {
    /// Binds one listener per consume on the configured address
    /// ([`sockopt::bind_listener`]).
    pub fn bind(config: &Config) -> anyhow::Result<Vec<TcpListener>> {
        let mut listeners = Vec::new();
        for c in &config.consumes {
            let addr = std::net::SocketAddr::new(config.bind, c.port);
            let l = sockopt::bind_listener(addr)
                .with_context(|| format!("cannot listen on {addr} for '{}'", c.name))?;
            listeners.push(l);
        }
        Ok(listeners)
    }

    /// Starts serving `listeners` (one per consume, in `config.consumes`
    /// order), advertising the provides and browsing for the discovered
    /// consumes. Must be called inside a tokio runtime. Fails at once on an
    /// invalid config or when the mDNS daemon cannot start. The node runs
    /// as a task of that runtime: dropping the handle leaves it running
    /// (stop it with [`NodeHandle::shutdown`]); dropping the runtime stops
    /// it and closes its connections at once.
    pub fn start(config: Config, listeners: Vec<TcpListener>) -> anyhow::Result<NodeHandle> {
        // The binary validated already; a config built in code may not be.
        config.validate()?;
        anyhow::ensure!(
            listeners.len() == config.consumes.len(),
            "{} listeners for {} consumes",
            listeners.len(),
            config.consumes.len()
        );
        let given = config
            .consumes
            .iter()
            .map(|c| c.port)
            .zip(listeners)
            .collect();
        let shutdown = Shutdown::new();
        let (mut running, watches) = Running::new(&config, shutdown.clone())?;
        let prepared = running.prepare(config, given)?;
        running.start(prepared);
        let (requests, inbox) = mpsc::channel(1);
        let task = tokio::spawn(running.run(inbox));
        Ok(NodeHandle {
            config: watches.config,
            services: watches.services,
            discovery_stats: watches.discovery_stats,
            observer: watches.observer,
            shutdown,
            reloader: Reloader { requests },
            task,
        })
    }
}

impl NodeHandle {
    /// The configuration this node runs with now.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The consumed services now, in `config.consumes` order.
    pub fn services(&self) -> Vec<Arc<Service>> {
        self.services.borrow().clone()
    }

    /// Reads the node's live status for operators (what the admin endpoint
    /// serves); it follows reloads.
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// What discovery ignored, dropped and probed so far.
    pub fn discovery_stats(&self) -> &DiscoveryStats {
        &self.discovery_stats
    }

    /// The node's stop switch (clone it to stop from elsewhere).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// A handle that reloads this node from elsewhere.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Applies `new` to the running node; see [`Reloader::reload`].
    pub async fn reload(&self, new: Config) -> anyhow::Result<ReloadSummary> {
        self.reloader.reload(new).await
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

impl Reloader {
    /// Applies `new` to the running node without dropping a connection:
    /// consumes (by port) and provides (by name) are added, changed in place
    /// or removed (a removed consume stops accepting at once and drains, a
    /// removed provide drains and says goodbye), and the proxy and provider
    /// settings apply to what starts next. Settings fixed at start keep
    /// their running values and are named in the summary. Everything that
    /// can fail (validation, binding the new listeners, starting mDNS) is
    /// done first: an error changes nothing. The caller logs the outcome.
    pub async fn reload(&self, new: Config) -> anyhow::Result<ReloadSummary> {
        let (answer, answered) = oneshot::channel();
        let stopping = || anyhow::anyhow!("the node is shutting down");
        self.requests
            .send((new, answer))
            .await
            .map_err(|_| stopping())?;
        answered.await.map_err(|_| stopping())?
    }
}
