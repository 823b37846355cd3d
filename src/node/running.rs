//! The parts of a running node, each added, changed and removed on its own
//! while the rest serves on, and the node's task: it applies reloads until
//! the shutdown, then stops everything in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::plan::{self, ReloadSummary};
use super::serving::{Draining, Serving};
use super::{Reload, Shutdown};
use crate::backends::balance::Balancer;
use crate::backends::table::{unix_ms, BackendSpec, Origin, Snapshot, Table, Target, Update};
use crate::backends::{Service, ServiceCounters, Source, Suspects};
use crate::discovery::mdns::{self, Mdns, Offer, TlsUse};
use crate::discovery::probation;
use crate::discovery::provider::{self, ProvideStatus, Published};
use crate::discovery::stats::DiscoveryStats;
use crate::net::accept::{Listener, Shared};
use crate::net::shards::Shards;
use crate::net::sockopt;
use crate::net::terminator::Terminator;
use crate::security::Tls;
use crate::settings::{all_or_listed, Config, DiscoverySettings};
use crate::spec::{BackendAddr, ConsumeSpec, ProvideSpec};
use crate::status::{Observer, Parts};

/// What the node's handle reads while the node runs.
pub(super) struct Watches {
    pub config: watch::Receiver<Arc<Config>>,
    pub services: watch::Receiver<Vec<Arc<Service>>>,
    pub discovery_stats: Arc<DiscoveryStats>,
    pub observer: Observer,
}

/// A consumed service and its listener.
struct Consume {
    spec: ConsumeSpec,
    service: Arc<Service>,
    serving: Serving<Service>,
    /// Stops its probation and backend checks (discovered services).
    checks: CancellationToken,
}

/// A provided service: its advertisement and, with TLS, its terminator.
struct Provide {
    spec: ProvideSpec,
    /// Starts its leave (draining, then goodbye); a child of the node's.
    leaving: CancellationToken,
    /// Advertises it while its local check passes (`provider::run`).
    task: JoinHandle<()>,
    /// What that task reports to operators.
    status: Arc<ProvideStatus>,
    terminator: Option<Serving<Terminator>>,
}

/// A new configuration with everything that could fail already done.
pub(super) struct Prepared {
    config: Config,
    needs_restart: Vec<&'static str>,
    /// Bound for the consumes to add, by port.
    listeners: HashMap<u16, (Listener, SocketAddr)>,
    /// Bound for the terminators to start, by provided name.
    terminators: HashMap<String, (Listener, SocketAddr)>,
    /// Started because the new configuration is the first to need it.
    mdns: Option<Arc<Mdns>>,
}

/// A running node.
pub(super) struct Running {
    config: Arc<Config>,
    /// By listen port: a consume keeps its listener while its name or
    /// backends change; a new port is a new consume.
    consumes: HashMap<u16, Consume>,
    /// By name.
    provides: HashMap<String, Provide>,
    tls: Option<Arc<Tls>>,
    /// Started with the first discovered consume or provide.
    mdns: Option<Arc<Mdns>>,
    suspects: Arc<Suspects>,
    /// Waits for the browse, which starts with the first discovered
    /// consume or provide (a provider only listens: see
    /// [`mdns::browse`]).
    suspects_rx: Option<mpsc::Receiver<String>>,
    /// Settings and connection limit of the consume listeners.
    local: Shared,
    /// The same for the TLS terminators: the LAN must not take local
    /// clients' slots.
    mesh: Shared,
    shutdown: Shutdown,
    /// Terminators take mesh connections until every provide is withdrawn:
    /// consumers may still dial during the drain period.
    withdrawn: CancellationToken,
    /// Discovery and checks outlive the listeners: they keep tables fresh
    /// while connections drain.
    background: CancellationToken,
    /// The witness ring's links (a child of `background`), both ways,
    /// close as soon as the provides are withdrawn at shutdown (not at a
    /// reload that withdraws the last one): a node linked with
    /// this one counts it alive while a link is up, and a listener asks
    /// the link about such a node when its records go
    /// (`discovery::mdns::browse`), which after our goodbyes would be a
    /// question for nothing.
    ring_link: CancellationToken,
    side_tasks: TaskTracker,
    providers: TaskTracker,
    /// Removed listeners draining and removed provides leaving.
    retiring: TaskTracker,
    config_tx: watch::Sender<Arc<Config>>,
    services_tx: watch::Sender<Vec<Arc<Service>>>,
    parts_tx: watch::Sender<Parts>,
    discovery_stats: Arc<DiscoveryStats>,
    /// Closes every connection if the node is dropped without a shutdown
    /// (an embedder dropped the runtime it ran on): connections run on the
    /// shards' threads, which would serve them on, and stay up for them,
    /// without the node. After a shutdown it closes nothing: none is left.
    _close_connections: DropGuard,
}

impl Running {
    /// A node running nothing yet, with the settings fixed at start taken
    /// from `config`.
    pub fn new(config: &Config, shutdown: Shutdown) -> anyhow::Result<(Running, Watches)> {
        let tls = Tls::new(
            config.security.cluster_key.as_deref(),
            config.security.pki.as_ref(),
            &config.discovery.node_id,
        )
        .context("cannot set up TLS")?;
        let (suspects, suspects_rx) = Suspects::channel(mdns::VERIFY_TIMEOUT * 2);
        let background = CancellationToken::new();
        let shards = Arc::new(Shards::per_core(sockopt::fd_limit())?);
        let mut settings = config.proxy.clone();
        // The TLS terminators' connections have a limit of their own
        // (`mesh`), as large: both may be full at once.
        let pools = if tls.is_some() { 2 } else { 1 };
        settings.max_connections =
            sockopt::fit_connections(settings.max_connections, shards.descriptors(), pools);
        let local = Shared::new(
            settings.clone(),
            shutdown.immediate.clone(),
            tls.clone(),
            shards.clone(),
        );
        let mesh = Shared::new(settings, shutdown.immediate.clone(), tls.clone(), shards);
        let config = Arc::new(config.clone());
        let (config_tx, config_rx) = watch::channel(config.clone());
        let (services_tx, services_rx) = watch::channel(Vec::new());
        let (parts_tx, parts_rx) = watch::channel(Parts::default());
        let discovery_stats = Arc::new(DiscoveryStats::default());
        let watches = Watches {
            observer: Observer {
                config: config_rx.clone(),
                parts: parts_rx,
                started_at_ms: unix_ms(),
                discovery: discovery_stats.clone(),
            },
            config: config_rx,
            services: services_rx,
            discovery_stats: discovery_stats.clone(),
        };
        let close_connections = shutdown.immediate.clone().drop_guard();
        let running = Running {
            config,
            consumes: HashMap::new(),
            provides: HashMap::new(),
            tls,
            mdns: None,
            suspects,
            suspects_rx: Some(suspects_rx),
            local,
            mesh,
            shutdown,
            withdrawn: CancellationToken::new(),
            ring_link: background.child_token(),
            background,
            side_tasks: TaskTracker::new(),
            providers: TaskTracker::new(),
            retiring: TaskTracker::new(),
            config_tx,
            services_tx,
            parts_tx,
            discovery_stats,
            _close_connections: close_connections,
        };
        Ok((running, watches))
    }

    /// Checks `new` and binds or starts what it adds, changing nothing that
    /// runs: an error leaves the node as it was. `given` are listeners the
    /// caller bound, by port.
    pub fn prepare(
        &self,
        new: Config,
        mut given: HashMap<u16, TcpListener>,
    ) -> anyhow::Result<Prepared> {
        let (config, needs_restart) = plan::keep_restart_settings(&self.config, new);
        config.validate()?;
        let mut listeners = HashMap::new();
        for c in &config.consumes {
            if self.consumes.contains_key(&c.port) {
                continue;
            }
            let addr = SocketAddr::new(config.bind, c.port);
            let listener = match given.remove(&c.port) {
                Some(l) => l,
                None => sockopt::bind_listener(addr)
                    .with_context(|| format!("cannot listen on {addr} for '{}'", c.name))?,
            };
            let addr = listener.local_addr().unwrap_or(addr);
            let listener = Listener::register(listener, self.local.shards.home_for_listener())
                .with_context(|| format!("cannot poll the listener on {addr} for '{}'", c.name))?;
            listeners.insert(c.port, (listener, addr));
        }
        let mut terminators = HashMap::new();
        if self.tls.is_some() {
            for p in &config.provides {
                let running = self.provides.get(&p.name);
                let port = running.and_then(|r| r.terminator.as_ref().map(|t| t.addr.port()));
                if port.is_some_and(|port| p.tls_port.is_none_or(|want| want == port)) {
                    continue;
                }
                let what = || format!("cannot listen for TLS connections to '{}'", p.name);
                let listener = Terminator::bind(p.tls_port).with_context(what)?;
                let addr = listener.local_addr().with_context(what)?;
                let home = self.mesh.shards.home_for_listener();
                let listener = Listener::register(listener, home).with_context(|| {
                    format!("cannot poll the TLS listener on {addr} for '{}'", p.name)
                })?;
                terminators.insert(p.name.clone(), (listener, addr));
            }
        }
        let needs_mdns =
            config.consumes.iter().any(|c| c.backends.is_empty()) || !config.provides.is_empty();
        let mdns = match needs_mdns && self.mdns.is_none() {
            true => {
                let key = config.security.cluster_key.as_deref();
                Some(Arc::new(Mdns::start(&config.discovery, key)?))
            }
            false => None,
        };
        Ok(Prepared {
            config,
            needs_restart,
            listeners,
            terminators,
            mdns,
        })
    }

    /// Starts a node that runs nothing yet: everything in `prepared` is new.
    pub fn start(&mut self, prepared: Prepared) {
        let Prepared {
            config,
            listeners: mut bound,
            terminators: mut tls_bound,
            mdns,
            needs_restart: _,
        } = prepared;
        self.config = Arc::new(config);
        self.start_mdns(mdns);
        if let Some(tls) = &self.tls {
            self.side_tasks
                .spawn(tls.clone().renew(self.background.clone()));
        }
        let config = self.config.clone();
        for c in &config.consumes {
            if let Some((listener, addr)) = bound.remove(&c.port) {
                self.add_consume(c, listener, addr);
            }
        }
        self.publish_services();
        for p in &config.provides {
            self.add_provide(p, tls_bound.remove(&p.name));
        }
        self.publish_parts();
        self.start_browse();
    }

    /// Serves until the shutdown, applying reloads meanwhile; then stops
    /// accepting, lets the provides leave, drains and shuts discovery down.
    pub async fn run(mut self, mut reloads: mpsc::Receiver<Reload>) -> anyhow::Result<()> {
        let graceful = self.shutdown.graceful.clone();
        loop {
            tokio::select! {
                biased;
                _ = graceful.cancelled() => break,
                Some((config, answer)) = reloads.recv() => {
                    let result = match self.prepare(config, HashMap::new()) {
                        Ok(prepared) => Ok(self.apply(prepared).await),
                        Err(e) => Err(e),
                    };
                    let _ = answer.send(result);
                }
            }
        }
        // Later reloads are refused at once.
        drop(reloads);
        self.stop().await
    }

    /// Applies a prepared reload; what cannot fail any more.
    async fn apply(&mut self, prepared: Prepared) -> ReloadSummary {
        let Prepared {
            config,
            needs_restart,
            listeners: mut bound,
            terminators: mut tls_bound,
            mdns,
        } = prepared;
        let mut summary = ReloadSummary {
            changes: Vec::new(),
            needs_restart,
        };
        let old = std::mem::replace(&mut self.config, Arc::new(config));
        let new = self.config.clone();
        let proxy_changed = plan::proxy_changes(&old, &new);
        let provider_changed = plan::provider_changes(&old, &new);
        let checks_changed = old.discovery.backend_check != new.discovery.backend_check
            || old.proxy.connect_timeout != new.proxy.connect_timeout;
        for shared in [&mut self.local, &mut self.mesh] {
            // The limit was fitted to the descriptors at start.
            let max = shared.settings.max_connections;
            shared.settings = new.proxy.clone();
            shared.settings.max_connections = max;
        }
        self.start_mdns(mdns);

        let gone: Vec<u16> = self
            .consumes
            .keys()
            .filter(|port| !new.consumes.iter().any(|c| c.port == **port))
            .copied()
            .collect();
        for port in gone {
            let name = self.remove_consume(port).await;
            summary.add('-', "consume", &name);
        }
        for c in &new.consumes {
            if let Some((listener, addr)) = bound.remove(&c.port) {
                self.add_consume(c, listener, addr);
                summary.add('+', "consume", &c.name);
            } else if self
                .change_consume(c, !proxy_changed.is_empty(), checks_changed)
                .await
            {
                summary.add('~', "consume", &c.name);
            }
        }
        self.publish_services();

        let gone: Vec<String> = self
            .provides
            .keys()
            .filter(|name| !new.provides.iter().any(|p| &p.name == *name))
            .cloned()
            .collect();
        for name in gone {
            self.remove_provide(&name);
            summary.add('-', "provide", &name);
        }
        for p in &new.provides {
            let listener = tls_bound.remove(&p.name);
            if !self.provides.contains_key(&p.name) {
                self.add_provide(p, listener);
                summary.add('+', "provide", &p.name);
            } else if self
                .change_provide(
                    p,
                    listener,
                    !provider_changed.is_empty(),
                    !proxy_changed.is_empty(),
                )
                .await
            {
                summary.add('~', "provide", &p.name);
            }
        }
        self.publish_parts();
        self.start_browse();
        let mut settings = proxy_changed;
        settings.extend(provider_changed);
        if old.discovery.backend_check != new.discovery.backend_check {
            settings.push("backend_check");
        }
        for s in settings {
            summary.changes.push(format!("~{s}"));
        }
        for service in plan::rotated_credentials(&old, &new) {
            summary.add('~', "credentials", service);
        }
        self.config_tx.send_replace(new);
        summary
    }

    /// Keeps the daemon started for this configuration, if one was.
    fn start_mdns(&mut self, mdns: Option<Arc<Mdns>>) {
        let Some(m) = mdns else { return };
        let d = &self.config.discovery;
        info!(node = %d.node_id, interfaces = %all_or_listed(&d.interfaces),
            addresses = %all_or_listed(&d.advertise_addrs), "mDNS discovery started");
        if let Some(key) = &self.config.security.cluster_key {
            info!(key = %key.fingerprint(),
                "cluster key: our advertisements are signed, and only signed ones are used");
        }
        self.side_tasks
            .spawn(m.pause_interface_check_when_short(self.background.clone()));
        if let Some((link, watchers)) = m.take_link() {
            let serve = crate::discovery::link::serve(link, watchers, self.ring_link.clone());
            self.side_tasks.spawn(serve);
        }
        self.mdns = Some(m);
    }

    /// Starts the browse once a consume is discovered or a service is
    /// provided (a provider only listens, for the witness ring: see
    /// [`mdns::browse`]); it follows the services through the watch from
    /// then on.
    fn start_browse(&mut self) {
        let discovered = self.consumes.values().any(|c| c.service.is_discovered());
        let (Some(m), true) = (&self.mdns, discovered || !self.provides.is_empty()) else {
            return;
        };
        let Some(suspects) = self.suspects_rx.take() else {
            return;
        };
        self.side_tasks.spawn(mdns::browse(
            m.clone(),
            self.services_tx.subscribe(),
            TlsUse {
                available: self.tls.is_some(),
                allow_plaintext: self.config.security.allow_plaintext,
            },
            suspects,
            self.discovery_stats.clone(),
            self.background.clone(),
            self.ring_link.clone(),
        ));
    }

    /// The consumed services in configuration order, to the handle and the
    /// browse (which replays mDNS's cache into a service it did not have).
    fn publish_services(&self) {
        let services: Vec<Arc<Service>> = self
            .config
            .consumes
            .iter()
            .filter_map(|c| self.consumes.get(&c.port))
            .map(|c| c.service.clone())
            .collect();
        self.services_tx.send_if_modified(|current| {
            let same = current.len() == services.len()
                && current
                    .iter()
                    .zip(&services)
                    .all(|(a, b)| Arc::ptr_eq(a, b));
            *current = services;
            !same
        });
    }

    /// What operators see: the consumes with their listeners and the
    /// provides, in configuration order.
    fn publish_parts(&self) {
        let consumes = self
            .config
            .consumes
            .iter()
            .filter_map(|c| self.consumes.get(&c.port))
            .map(|c| (c.service.clone(), c.serving.addr))
            .collect();
        let provides = self
            .config
            .provides
            .iter()
            .filter_map(|p| self.provides.get(&p.name))
            .map(|p| p.status.clone())
            .collect();
        self.parts_tx.send_replace(Parts { consumes, provides });
    }

    /// The service of consume `c`, on the table and counters `kept` from
    /// the service it replaces (so that health and the totals, which
    /// Prometheus expects never to go backwards, carry on), or new ones.
    fn service(
        &self,
        c: &ConsumeSpec,
        kept: Option<(Arc<Table>, Arc<ServiceCounters>)>,
    ) -> Arc<Service> {
        let (table, counters) = kept.unzip();
        let eject = self.config.proxy.eject_time;
        let table = table.unwrap_or_else(|| {
            Arc::new(match c.backends.is_empty() {
                true => Table::with_probation(eject),
                false => Table::new(eject),
            })
        });
        sync_static(&table, &c.backends);
        let source = match c.backends.is_empty() {
            true => Source::Discovered(self.suspects.clone()),
            false => Source::Static,
        };
        Arc::new(Service {
            name: c.name.clone(),
            table,
            balancer: Balancer::new(self.config.proxy.policy),
            source,
            listener: Some(SocketAddr::new(self.config.bind, c.port)),
            credentials: self
                .config
                .security
                .credentials
                .iter()
                .find(|cr| cr.spec.service == c.name)
                .cloned(),
            counters: counters.unwrap_or_default(),
        })
    }

    /// Probation and backend checks of a discovered service, stopped by
    /// the token returned.
    fn start_checks(&self, svc: &Arc<Service>) -> CancellationToken {
        let stop = self.background.child_token();
        if !svc.is_discovered() {
            return stop;
        }
        let timeout = self.config.proxy.connect_timeout;
        self.side_tasks.spawn(probation::run(
            svc.clone(),
            probation::PROBE_SCAN,
            timeout,
            self.tls.clone(),
            self.discovery_stats.clone(),
            stop.clone(),
        ));
        if let Some(every) = self.config.discovery.backend_check {
            self.side_tasks.spawn(crate::net::checks::check_backends(
                svc.clone(),
                every,
                timeout,
                self.tls.clone(),
                stop.clone(),
            ));
        }
        stop
    }

    fn add_consume(&mut self, c: &ConsumeSpec, listener: Listener, addr: SocketAddr) {
        let service = self.service(c, None);
        log_listening(&service, addr, "listening");
        self.warn_plaintext(c);
        let serving = Serving::start(
            listener,
            addr,
            service.clone(),
            &self.local,
            &self.shutdown.graceful,
        );
        let checks = self.start_checks(&service);
        let consume = Consume {
            spec: c.clone(),
            service,
            serving,
            checks,
        };
        self.consumes.insert(c.port, consume);
    }

    /// With TLS on, the static backends of `c` that are dialed in plain TCP
    /// off this host, named once per listener: they are what the user
    /// typed, and a cluster key must not be taken to cover them. Silent
    /// with `--allow-plaintext`, which says the clear traffic is meant.
    fn warn_plaintext(&self, c: &ConsumeSpec) {
        if let Some(backends) = self.config.security.plain_static(c) {
            warn!(service = %c.name, %backends, "{}", crate::spec::PLAIN_STATIC);
        }
    }

    /// Applies `c` to the consume on its port, keeping the listener and
    /// every open connection; whether the consume itself changed. Static
    /// backends change in place in the table, so ejections and counts
    /// survive; anything else (name, source, credentials, proxy settings)
    /// makes a new service that new connections take.
    async fn change_consume(&mut self, c: &ConsumeSpec, proxy: bool, checks: bool) -> bool {
        let Some(mut consume) = self.consumes.remove(&c.port) else {
            return false;
        };
        let credentials = self
            .config
            .security
            .credentials
            .iter()
            .find(|cr| cr.spec.service == c.name);
        let had = consume.service.credentials.as_ref().map(|cr| &cr.spec);
        let changed = consume.spec != *c || had != credentials.map(|cr| &cr.spec);
        let same_table =
            consume.spec.name == c.name && consume.service.is_discovered() == c.backends.is_empty();
        let discovered = c.backends.is_empty();
        // Credentials files are read again at each reload: a rotated
        // password goes to the next backend connections.
        let in_place = same_table
            && credentials.is_none()
            && had.is_none()
            && !proxy
            && !(discovered && checks);
        if in_place {
            sync_static(&consume.service.table, &c.backends);
        } else {
            let kept = same_table.then(|| {
                let old = &consume.service;
                (old.table.clone(), old.counters.clone())
            });
            let service = self.service(c, kept);
            if let Err(e) = consume.serving.replace(service.clone(), &self.local).await {
                error!(service = %c.name, error = %format!("{e:#}"), "cannot apply the new settings");
            }
            consume.checks.cancel();
            consume.checks = self.start_checks(&service);
            consume.service = service;
        }
        if changed {
            log_listening(&consume.service, consume.serving.addr, "consume changed");
            self.warn_plaintext(c);
        }
        consume.spec = c.clone();
        self.consumes.insert(c.port, consume);
        changed
    }

    /// Stops accepting on the consume's port at once; its connections get
    /// the drain timeout. Returns its name.
    async fn remove_consume(&mut self, port: u16) -> String {
        let Some(c) = self.consumes.remove(&port) else {
            return String::new();
        };
        c.checks.cancel();
        let addr = c.serving.addr;
        let (draining, stopped) = c.serving.close().await;
        if let Err(e) = stopped {
            warn!(service = %c.spec.name, error = %format!("{e:#}"), "consume removed");
        }
        info!(service = %c.spec.name, listen = %addr, connections = draining.tracker.len(),
            "consume removed: stopped accepting; open connections drain");
        self.retire(draining, c.spec.name.clone());
        c.spec.name
    }

    /// Lets `draining` finish within the drain timeout, in the background.
    fn retire(&self, draining: Draining, name: String) {
        let timeout = self.config.proxy.drain_timeout;
        self.retiring
            .spawn(async move { draining.drain(timeout, &name).await });
    }

    fn terminator(&self, p: &ProvideSpec, tls: &Arc<Tls>) -> Arc<Terminator> {
        let local = provider::check_target(p.port, &self.config.discovery);
        Arc::new(Terminator::new(p.clone(), local, tls.clone()))
    }

    fn start_terminator(
        &self,
        p: &ProvideSpec,
        bound: Option<(Listener, SocketAddr)>,
    ) -> Option<Serving<Terminator>> {
        let ((listener, addr), tls) = bound.zip(self.tls.as_ref())?;
        info!(provide = %p.name, listen = %addr, "TLS terminator listening");
        let handler = self.terminator(p, tls);
        Some(Serving::start(
            listener,
            addr,
            handler,
            &self.mesh,
            &self.withdrawn,
        ))
    }

    /// Advertises `p` (through `terminator` when there is one) while its
    /// local check passes, until `leaving`, taking over from a provider
    /// whose last state was `previous`; the task reports to the status
    /// returned.
    fn spawn_provider(
        &self,
        p: &ProvideSpec,
        terminator: Option<&Serving<Terminator>>,
        leaving: CancellationToken,
        settings: DiscoverySettings,
        previous: Published,
    ) -> (JoinHandle<()>, Arc<ProvideStatus>) {
        let offer = Offer {
            port: terminator.map_or(p.port, |t| t.addr.port()),
            tls: terminator.is_some(),
        };
        let mdns = self
            .mdns
            .clone()
            .expect("prepare starts mDNS for any provide");
        let status = Arc::new(ProvideStatus::new(p.clone(), offer, previous));
        let task = self.providers.spawn(provider::run(
            mdns,
            status.clone(),
            settings,
            leaving,
            self.shutdown.immediate.clone(),
        ));
        (task, status)
    }

    fn add_provide(&mut self, p: &ProvideSpec, bound: Option<(Listener, SocketAddr)>) {
        let terminator = self.start_terminator(p, bound);
        let leaving = self.shutdown.graceful.child_token();
        let (task, status) = self.spawn_provider(
            p,
            terminator.as_ref(),
            leaving.clone(),
            self.config.discovery.clone(),
            Published::default(),
        );
        let provide = Provide {
            spec: p.clone(),
            leaving,
            task,
            status,
            terminator,
        };
        self.provides.insert(p.name.clone(), provide);
    }

    /// Applies `p` to the running provide of its name; whether it changed.
    /// A new weight or port is advertised again without a goodbye: the
    /// provider is replaced by one that announces the new record once its
    /// check passes, the old record standing meanwhile.
    async fn change_provide(
        &mut self,
        p: &ProvideSpec,
        bound: Option<(Listener, SocketAddr)>,
        checks: bool,
        proxy: bool,
    ) -> bool {
        let Some(mut provide) = self.provides.remove(&p.name) else {
            return false;
        };
        let changed = provide.spec != *p;
        let moved = bound.is_some();
        if moved {
            // Consumers dial the old port until they hear the new one.
            if let Some(old) = provide.terminator.take() {
                self.retire_terminator(old, &p.name);
            }
            provide.terminator = self.start_terminator(p, bound);
        } else if let (Some(t), Some(tls), true) =
            (&mut provide.terminator, &self.tls, changed || proxy)
        {
            let local = provider::check_target(p.port, &self.config.discovery);
            let handler = Arc::new(Terminator::new(p.clone(), local, tls.clone()));
            if let Err(e) = t.replace(handler, &self.mesh).await {
                error!(provide = %p.name, error = %format!("{e:#}"), "cannot apply the new settings");
            }
        }
        if changed || moved || checks {
            provide.task.abort();
            let _ = (&mut provide.task).await;
            // A re-announcement: no conflict probe (mdns-sd would answer
            // no query for the instance meanwhile).
            let settings = DiscoverySettings {
                probe: false,
                ..self.config.discovery.clone()
            };
            (provide.task, provide.status) = self.spawn_provider(
                p,
                provide.terminator.as_ref(),
                provide.leaving.clone(),
                settings,
                provide.status.get(),
            );
        }
        provide.spec = p.clone();
        self.provides.insert(p.name.clone(), provide);
        changed
    }

    /// Keeps a terminator that moved to another port accepting through the
    /// drain period (consumers still dial what they heard last), then
    /// drains it.
    fn retire_terminator(&self, t: Serving<Terminator>, name: &str) {
        let (period, timeout) = (
            self.config.discovery.drain_period,
            self.config.proxy.drain_timeout,
        );
        let (name, withdrawn) = (name.to_owned(), self.withdrawn.clone());
        self.retiring.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = withdrawn.cancelled() => {}
            }
            let (draining, _) = t.close().await;
            draining.drain(timeout, &name).await;
        });
    }

    /// Starts the provide's leave (draining, then goodbye, as at shutdown);
    /// its terminator takes connections until then and drains after.
    fn remove_provide(&mut self, name: &str) {
        let Some(p) = self.provides.remove(name) else {
            return;
        };
        p.leaving.cancel();
        let timeout = self.config.proxy.drain_timeout;
        let name = name.to_owned();
        self.retiring.spawn(async move {
            let _ = p.task.await;
            if let Some(t) = p.terminator {
                let (draining, _) = t.close().await;
                draining.drain(timeout, &name).await;
            }
        });
    }

    /// Stops accepting, lets the provides leave, drains every connection
    /// (up to the drain timeout), then stops discovery.
    async fn stop(self) -> anyhow::Result<()> {
        // A failure is reported once everything below has stopped.
        let mut failed = None;
        let mut draining = Vec::new();
        // Their loops stopped with the shutdown; this closes the listeners.
        for (_, c) in self.consumes {
            let (d, stopped) = c.serving.close().await;
            failed = failed.or(stopped.err());
            draining.push(d);
        }
        self.providers.close();
        self.providers.wait().await;
        self.withdrawn.cancel();
        self.ring_link.cancel();
        for (_, p) in self.provides {
            if let Some(t) = p.terminator {
                let (d, stopped) = t.close().await;
                let stopped =
                    stopped.with_context(|| format!("TLS terminator of '{}'", p.spec.name));
                failed = failed.or(stopped.err());
                draining.push(d);
            }
        }
        self.retiring.close();
        let open: usize = draining.iter().map(|d| d.tracker.len()).sum();
        let timeout = self.config.proxy.drain_timeout;
        if open > 0 {
            info!(connections = open, timeout = ?timeout,
                "stopped accepting; draining open connections");
        }
        let all_done = || async {
            for d in &draining {
                d.tracker.wait().await;
            }
            self.retiring.wait().await;
        };
        let drained = tokio::select! {
            _ = all_done() => true,
            _ = tokio::time::sleep(timeout) => false,
            _ = self.shutdown.immediate.cancelled() => false,
        };
        if !drained {
            let left: usize = draining.iter().map(|d| d.tracker.len()).sum();
            if left > 0 {
                warn!(
                    connections = left,
                    "closing connections that did not finish in time"
                );
            }
            self.shutdown.immediate.cancel();
            all_done().await;
        }
        self.background.cancel();
        self.side_tasks.close();
        self.side_tasks.wait().await;
        if let Some(m) = self.mdns {
            m.shutdown().await;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        info!("shut down");
        Ok(())
    }
}

/// Makes `table`'s static backends those of `backends`: new ones added,
/// changed ones updated in place (their counts and ejections kept), missing
/// ones removed. Connections open to a removed backend carry on.
fn sync_static(table: &Table, backends: &[BackendAddr]) {
    for update in static_updates(&table.snapshot(), backends) {
        table.apply(update);
    }
}

/// The updates [`sync_static`] applies, in their order: additions and
/// changes first, removals last, so that a connection accepted in between
/// still finds a backend (the other order emptied the table for a moment
/// when a reload replaced a service's only backend, and a client failed).
fn static_updates(snapshot: &Snapshot, backends: &[BackendAddr]) -> Vec<Update> {
    let specs: Vec<BackendSpec> = backends
        .iter()
        .map(|b| BackendSpec {
            key: format!("static:{}:{}", b.host, b.port),
            target: Target::from_host(&b.host, b.port),
            weight: b.weight,
            draining: false,
            tls: b.tls,
            origin: Origin::Static,
        })
        .collect();
    let removed: Vec<Update> = snapshot
        .backends
        .iter()
        .filter(|b| b.spec.key.starts_with("static:"))
        .filter(|b| !specs.iter().any(|s| s.key == b.spec.key))
        .map(|b| Update::Remove(b.spec.key.clone()))
        .collect();
    specs
        .into_iter()
        .map(Update::Upsert)
        .chain(removed)
        .collect()
}

/// One line per listener: where it listens and where its backends come
/// from.
fn log_listening(svc: &Service, addr: SocketAddr, what: &str) {
    if svc.is_discovered() {
        info!(service = %svc.name, listen = %addr, policy = ?svc.balancer.policy(),
            "{what}; backends come from discovery");
    } else {
        let backends: Vec<String> = svc
            .table
            .snapshot()
            .backends
            .iter()
            .map(|b| b.spec.target.to_string())
            .collect();
        info!(service = %svc.name, listen = %addr, backends = %backends.join(","),
            policy = ?svc.balancer.policy(), "{what}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spec::parse_backend;

    /// A reload that replaces a service's only static backend never leaves
    /// its table empty, step by step.
    #[test]
    fn a_reload_that_replaces_the_only_backend_never_empties_the_table() {
        let table = Table::new(Duration::from_secs(10));
        sync_static(&table, &[parse_backend("127.0.0.1:7001").unwrap()]);
        let new = [parse_backend("127.0.0.1:7002").unwrap()];
        for update in static_updates(&table.snapshot(), &new) {
            table.apply(update);
            assert!(!table.snapshot().backends.is_empty(), "the table emptied");
        }
        let keys: Vec<String> = table
            .snapshot()
            .backends
            .iter()
            .map(|b| b.spec.key.clone())
            .collect();
        assert_eq!(keys, ["static:127.0.0.1:7002"]);
    }
}
