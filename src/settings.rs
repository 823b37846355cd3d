//! The validated settings of a node: [`Config`] and its parts, their
//! defaults with the reasons for them, and the checks that no single value
//! can make alone. The typed values they are read from live in
//! [`value`](crate::value).
//!
//! Where values come from (flags, environment, a file) is the binary's
//! business: the library takes a `Config`, however it was built. Tests and
//! the demo build one in code from the `Default`s here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use crate::backends::balance::Policy;
use crate::credentials::Credentials;
pub use crate::security::tls::PkiFiles;
use crate::security::ClusterKey;
use crate::spec::{BackendAddr, ConsumeSpec, Host, ProvideSpec};

pub use crate::value::{
    AdminAddr, Count, Ip, NodeId, OrOff, Period, ValueError, Wait, MAX_DURATION,
};

/// Range of `max_connections`: a million connections need two million fds,
/// beyond any fd limit a host grants one process.
pub type ConnectionCount = Count<1_000_000>;
/// Range of small retry and hysteresis counts (connect attempts, rise,
/// fall): a hundred is already far past any useful value.
pub type SmallCount = Count<100>;

/// Consume listeners bind to loopback: an ambassador serves applications on
/// its own host, and listening wider would expose the proxied service to the
/// network. A container ambassador opts in with 0.0.0.0.
pub const DEFAULT_BIND: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// Default connection limit: far above what one ambassador normally carries,
/// low enough that two fds per connection fit a typical 65536 fd limit.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// A backend on the same LAN answers a SYN in well under a millisecond, but
/// Linux retransmits a lost SYN only after one second: a timeout of exactly
/// one second fails the dial (and ejects a healthy backend) whenever one
/// handshake packet is lost. Two seconds covers one loss, and failover from
/// a host that silently vanished still takes seconds, not minutes.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a login (`--credentials`) waits for the backend's answer. A
/// Redis answers `AUTH` at once unless it is busy: a slow command or
/// script, a fork's pause, `DEBUG SLEEP` stall every client alike, and a
/// client without a login would only wait. Bounded at the connect timeout
/// (2 s), each such stall turned every new client of a live backend into a
/// reset, and ejected it; 10 s rides out such stalls, and a backend that
/// accepts and never answers still fails over (and is ejected for the
/// next clients) within seconds.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Three candidates cover "one backend died and the next is also in trouble"
/// without letting one client wait through a whole large pool.
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
/// A discovered service has no working backend for a moment at times:
/// while the first browse after the node's start is answered
/// (milliseconds), while its only provider restarts (its goodbye, then its
/// new record a second or two later), or while it moves (the old host's
/// record stands for a second after the service there stopped). A client
/// that comes then is held this long for a backend rather than closed;
/// three seconds covers a restart, and a client's own connect timeout is
/// rarely shorter. A static backend restarting in place is gone as long.
pub const DEFAULT_WAIT_FOR_BACKEND: Duration = Duration::from_secs(3);
/// Long enough for request/response protocols to finish their exchanges,
/// short enough that an orchestrator's stop timeout (often 30-90 s) is met.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// First ejection after a failed connect. Short, because an ambassador's
/// backends are few and a restarted service should be used again quickly;
/// repeated failures double it up to
/// [`MAX_EJECT_TIME`](crate::backends::table::MAX_EJECT_TIME).
pub const DEFAULT_EJECT_TIME: Duration = Duration::from_secs(1);
/// TCP keepalive on both sides of every proxied connection: first probe after
/// 30 s without traffic, then one every [`DEFAULT_TCP_KEEPALIVE_INTERVAL`],
/// dropped after [`DEFAULT_TCP_KEEPALIVE_PROBES`] unanswered. A host that
/// vanished (pulled cable, crashed VM, rebooted NAT box) sends neither FIN
/// nor RST, and Linux's own default waits two hours before the first probe:
/// the connection and its slot of the limit would be held that long. With
/// these values a dead idle peer is noticed in 30 + 3 x 10 = 60 s, for a few
/// 60-byte packets per idle minute, and NAT and conntrack entries on the path
/// (idle timeouts of minutes) are refreshed long before they expire.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Probe spacing once keepalive started: 10 s rides out a lost packet or two
/// on a busy Wi-Fi link without stretching detection past a minute.
pub const DEFAULT_TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel drops the connection (see above).
pub const DEFAULT_TCP_KEEPALIVE_PROBES: u32 = 3;
/// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the
/// kernel drops the connection. Keepalive only probes idle connections; with
/// data in flight to a vanished host Linux retransmits for about 15 minutes
/// (`tcp_retries2` = 15). 60 s equals the keepalive budget (30 + 3 x 10), so a
/// dead peer costs a minute whether the connection was busy or idle (with
/// keepalive on, the user timeout also bounds the probes, tcp(7)), and is far
/// above any round trip a LAN or a congested uplink produces. Linux counts a
/// peer whose receive window stays closed (alive, not reading) the same way:
/// one that pauses its reads for a minute with data pending is dropped, as
/// Redis drops a pub/sub client 60 s over its soft output limit.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// Once one direction has finished (its FIN forwarded), the connection ends
/// after this long without a byte moving the other way. A client that sent
/// its request and FIN waits for a reply; a peer that never replies nor closes
/// would otherwise hold the slot forever. 60 s is the kernel's own patience
/// with an orphaned half-closed socket (`tcp_fin_timeout`, FIN_WAIT2), and it
/// counts from the last byte, so a long reply still streaming is never cut.
pub const DEFAULT_HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the ambassador needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address every consume listener binds to.
    pub bind: IpAddr,
    /// Local listeners and where they forward.
    pub consumes: Vec<ConsumeSpec>,
    /// Local services offered to the mesh.
    pub provides: Vec<ProvideSpec>,
    /// Connection-level proxy settings shared by every consume.
    pub proxy: ProxySettings,
    /// How this node takes part in the mDNS mesh.
    pub discovery: DiscoverySettings,
    /// The cluster key and TLS between ambassadors.
    pub security: SecuritySettings,
}

/// Who may join the mesh and how ambassadors talk to each other. All off by
/// default: a mesh without a key trusts the link, as Avahi does.
#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    /// Signs our advertisements and accepts only signed ones; derives the
    /// cluster CA for mutual TLS unless [`Self::pki`] replaces it.
    pub cluster_key: Option<Arc<ClusterKey>>,
    /// An existing PKI's PEM files, used for TLS instead of the derived CA.
    pub pki: Option<PkiFiles>,
    /// With TLS on, still use discovered instances without the TLS flag,
    /// and say nothing of static backends given without `tls://` (used
    /// either way: what the user typed).
    pub allow_plaintext: bool,
    /// Logins to the backends of consumed services, at most one per
    /// service, made on the applications' behalf.
    pub credentials: Vec<Arc<Credentials>>,
}

impl SecuritySettings {
    /// Whether ambassadors talk to each other over mutual TLS.
    pub fn tls(&self) -> bool {
        self.cluster_key.is_some() || self.pki.is_some()
    }

    /// The static backends of `c` to warn of ([`crate::spec::PLAIN_STATIC`]),
    /// as written and comma-separated: with TLS on and plaintext not
    /// allowed, those whose traffic leaves this host in clear.
    pub fn plain_static(&self, c: &ConsumeSpec) -> Option<String> {
        let clear: Vec<String> = (c.backends.iter())
            .filter(|b| b.leaves_the_host_in_clear())
            .map(ToString::to_string)
            .collect();
        (self.tls() && !self.allow_plaintext && !clear.is_empty()).then(|| clear.join(","))
    }
}

/// A provider's check of its local service: interval and hysteresis. Half a
/// second with rise/fall 2 takes a dead service out of every consumer's
/// rotation within about a second without flapping on one lost SYN; a TCP
/// connect to a local port every 500 ms costs nothing measurable.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 2;
/// Time between "draining" and goodbye: consumers hear the TXT change in
/// milliseconds, so two seconds covers connects already in flight.
pub const DEFAULT_DRAIN_PERIOD: Duration = Duration::from_secs(2);

/// Settings of the discovery mesh.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// Makes instance labels and the mDNS host name unique to this node.
    pub node_id: String,
    /// The node id was given by the user, so it may not be unique: probe
    /// for name conflicts before the first advertisement.
    pub probe: bool,
    /// Interfaces mDNS runs on; empty means all.
    pub interfaces: Vec<String>,
    /// Addresses to advertise; empty means those of the interfaces.
    pub advertise_addrs: Vec<IpAddr>,
    /// Provider-side local check period.
    pub check_interval: Duration,
    /// Successes in a row to advertise again.
    pub rise: u32,
    /// Failures in a row to withdraw.
    pub fall: u32,
    /// How long a leaving provider advertises "draining".
    pub drain_period: Duration,
    /// Consumer-side active checks of discovered backends, if any.
    pub backend_check: Option<Duration>,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            node_id: crate::value::random_node_id(),
            probe: false,
            interfaces: Vec::new(),
            advertise_addrs: Vec::new(),
            check_interval: DEFAULT_CHECK_INTERVAL,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            drain_period: DEFAULT_DRAIN_PERIOD,
            backend_check: None,
        }
    }
}

/// Interfaces or addresses as a person reads them: an empty list means
/// every one, so it is shown as `all`, never as `[]` (which reads "none").
pub fn all_or_listed<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "all".to_owned();
    }
    let items: Vec<String> = items.iter().map(T::to_string).collect();
    items.join(",")
}

/// Data-plane knobs, shared by every listener.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// How a listener picks among its backends.
    pub policy: Policy,
    /// Cap on concurrent client connections per process.
    pub max_connections: usize,
    /// Per-backend connect timeout before failing over.
    pub connect_timeout: Duration,
    /// Backends tried per client connection.
    pub connect_attempts: usize,
    /// How long a login (`--credentials`) waits for the backend's answer
    /// before it fails over.
    pub login_timeout: Duration,
    /// How long a client of a service with no backend, or whose backends
    /// tried all failed, waits for a backend (one it has not
    /// tried, or those that failed again after a second) before it is
    /// closed; zero closes it at once.
    pub wait_for_backend: Duration,
    /// Close connections idle for this long; `None` keeps them forever.
    pub idle_timeout: Option<Duration>,
    /// Grace period for open connections on shutdown.
    pub drain_timeout: Duration,
    /// First ejection period of a failing backend.
    pub eject_time: Duration,
    /// Idle time before the first TCP keepalive probe on both sides of a
    /// proxied connection, so a vanished peer frees its slot; `None` leaves
    /// keepalive off.
    pub tcp_keepalive: Option<Duration>,
    /// Time between keepalive probes.
    pub tcp_keepalive_interval: Duration,
    /// Unanswered keepalive probes before the connection is dropped.
    pub tcp_keepalive_probes: u32,
    /// TCP_USER_TIMEOUT on both sides: unacknowledged data older than this
    /// (or unread, behind the peer's closed window) drops the connection, so a peer that vanished mid-transfer does not
    /// hold it for the kernel's ~15 minutes of retransmissions; `None` keeps
    /// the kernel default.
    pub tcp_user_timeout: Option<Duration>,
    /// End a half-closed connection (one direction finished) after this long
    /// without traffic in the other; `None` waits forever.
    pub half_close_timeout: Option<Duration>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            connect_attempts: DEFAULT_CONNECT_ATTEMPTS as usize,
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            wait_for_backend: DEFAULT_WAIT_FOR_BACKEND,
            idle_timeout: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            eject_time: DEFAULT_EJECT_TIME,
            tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
            tcp_keepalive_interval: DEFAULT_TCP_KEEPALIVE_INTERVAL,
            tcp_keepalive_probes: DEFAULT_TCP_KEEPALIVE_PROBES,
            tcp_user_timeout: Some(DEFAULT_TCP_USER_TIMEOUT),
            half_close_timeout: Some(DEFAULT_HALF_CLOSE_TIMEOUT),
        }
    }
}

/// A configuration that cannot run, one line naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// One setting's value is wrong here. `setting` is its key as users
    /// spell it (`interface`, `advertise_addr`, `node_id`), so a front end
    /// can name the flag or file key it came from.
    #[error("{setting} '{value}': {reason}")]
    Value {
        setting: &'static str,
        value: String,
        reason: String,
    },
    /// Values that are fine alone but not together.
    #[error("{0}")]
    Conflict(String),
}

impl Config {
    /// Checks what no single value can: listen ports and provided names
    /// are unique, and the discovery settings fit this host.
    pub fn validate(&self) -> Result<(), SettingsError> {
        check_unique(&self.consumes, &self.provides)?;
        check_loops(self.bind, &self.consumes, &self.provides)?;
        check_credentials(&self.consumes, &self.security.credentials)?;
        if !self.security.tls() {
            if let Some(p) = self.provides.iter().find(|p| p.tls_port.is_some()) {
                return Err(SettingsError::Conflict(format!(
                    "provide {p} names a TLS port: give --cluster-key (or --tls-cert, --tls-key and --tls-ca)"
                )));
            }
            let tls_backend = self
                .consumes
                .iter()
                .flat_map(|c| c.backends.iter().map(move |b| (c, b)))
                .find(|(_, b)| b.tls);
            if let Some((c, b)) = tls_backend {
                return Err(SettingsError::Conflict(format!(
                    "backend {b} of '{}' needs TLS: give --cluster-key (or --tls-cert, --tls-key and --tls-ca)",
                    c.name
                )));
            }
        }
        self.proxy.validate()?;
        // Each listener's accept loop waits holding one connection slot:
        // with fewer slots than listeners, some would accept nothing.
        let listeners = self.consumes.len().max(self.provides.len());
        if self.proxy.max_connections < listeners {
            return Err(SettingsError::Value {
                setting: "max_connections",
                value: self.proxy.max_connections.to_string(),
                reason: format!("must be at least the number of listeners ({listeners})"),
            });
        }
        self.discovery.validate()
    }

    /// Checks what holds on this host as it is now, at start and by
    /// `--check`, not at a reload, whose listeners are bound already and
    /// keep their address (a keepalived address that moved away must not
    /// refuse a reload that rotates a password): `bind` is an address of
    /// this host, and each link-local backend's interface is here.
    pub fn check_host(&self) -> Result<(), SettingsError> {
        // An address that is not this host's fails each listener's bind
        // once running, after `--check` passed it. A bind to port 0 asks
        // the kernel itself, which also knows `net.ipv4.ip_nonlocal_bind`
        // (a keepalived address not yet here).
        if let Err(e) = std::net::UdpSocket::bind((self.bind, 0)) {
            let link_local = matches!(self.bind, IpAddr::V6(v6) if v6.is_unicast_link_local());
            let reason = if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                "not an address of this host".to_owned()
            } else if link_local {
                // Linux wants its interface (EINVAL), which an address
                // here cannot carry.
                "a link-local address needs an interface; use another".to_owned()
            } else {
                e.to_string()
            };
            return Err(SettingsError::Value {
                setting: "bind",
                value: self.bind.to_string(),
                reason,
            });
        }
        check_zones(&self.consumes)
    }
}

/// Linux takes keepalive times in whole seconds, from 1 to 32767
/// (`TCP_KEEPIDLE`, `TCP_KEEPINTVL`), and at most 127 probes.
const KEEPALIVE_SECS: std::ops::RangeInclusive<u64> = 1..=32767;
const MAX_KEEPALIVE_PROBES: u32 = 127;
/// `TCP_USER_TIMEOUT` is an int of milliseconds.
const MAX_USER_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

impl ProxySettings {
    /// Checks the values a type alone cannot: counts of at least one, and
    /// socket options within what the kernel accepts (it would refuse them
    /// on every connection otherwise, leaving keepalive off).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |setting, value: String, reason: &str| {
            Err(SettingsError::Value {
                setting,
                value,
                reason: reason.to_owned(),
            })
        };
        let secs = |d: Duration| humantime::format_duration(d).to_string();
        if self.max_connections == 0 {
            return bad("max_connections", "0".into(), "must be at least 1");
        }
        if self.connect_attempts == 0 {
            return bad("connect_attempts", "0".into(), "must be at least 1");
        }
        let keepalive = [
            ("tcp_keepalive", self.tcp_keepalive),
            ("tcp_keepalive_interval", Some(self.tcp_keepalive_interval)),
        ];
        for (setting, d) in keepalive {
            // The kernel takes whole seconds: 1500ms would be 1s unsaid.
            let bad_secs =
                |d: &Duration| !KEEPALIVE_SECS.contains(&d.as_secs()) || d.subsec_nanos() != 0;
            if let Some(d) = d.filter(bad_secs) {
                return bad(
                    setting,
                    secs(d),
                    "use whole seconds from 1s to 32767s (the kernel's range)",
                );
            }
        }
        if !(1..=MAX_KEEPALIVE_PROBES).contains(&self.tcp_keepalive_probes) {
            let n = self.tcp_keepalive_probes.to_string();
            return bad(
                "tcp_keepalive_probes",
                n,
                "use 1 to 127 (the kernel's range)",
            );
        }
        if let Some(t) = self.tcp_user_timeout.filter(|t| *t > MAX_USER_TIMEOUT) {
            return bad(
                "tcp_user_timeout",
                secs(t),
                "at most 24 days (the kernel's range)",
            );
        }
        // Taken in milliseconds, where 0 is the kernel's default (about 15
        // minutes, as "off"): less than 1ms would turn it off unsaid.
        if let Some(t) = self.tcp_user_timeout.filter(|t| t.as_millis() == 0) {
            return bad("tcp_user_timeout", secs(t), "at least 1ms, or off");
        }
        Ok(())
    }
}

impl DiscoverySettings {
    /// Checks the node id, and that the chosen interfaces and addresses
    /// exist on this host (a typo would otherwise advertise nothing).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |setting, value: &dyn std::fmt::Display, reason: String| {
            Err(SettingsError::Value {
                setting,
                value: value.to_string(),
                reason,
            })
        };
        if !crate::value::valid_node_id(&self.node_id) {
            let reason = "use 1-16 letters, digits or '-'".to_owned();
            return bad("node_id", &self.node_id, reason);
        }
        if self.interfaces.is_empty() && self.advertise_addrs.is_empty() {
            return Ok(());
        }
        let local = local_interfaces();
        for i in &self.interfaces {
            // One without an address yet (a DHCP lease not yet taken, a
            // cable not yet plugged in) is taken up once it has one, as
            // the interfaces of a node without `--interface` are.
            if !local.iter().any(|(name, _)| name == i) && !interface_exists(i) {
                let mut names: Vec<&str> = local.iter().map(|(n, _)| n.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                let reason = format!(
                    "no interface of that name here (with an address: {})",
                    names.join(", ")
                );
                return bad("interface", i, reason);
            }
        }
        for a in &self.advertise_addrs {
            if !local.iter().any(|(_, l)| l == a) {
                let reason = "not an address of this host".to_owned();
                return bad("advertise_addr", a, reason);
            }
        }
        Ok(())
    }
}

/// Two listeners cannot share a port, and a node has one instance per
/// provided service name; say which specs collide.
fn check_unique(consumes: &[ConsumeSpec], provides: &[ProvideSpec]) -> Result<(), SettingsError> {
    let mut ports: HashMap<u16, &ConsumeSpec> = HashMap::new();
    for c in consumes {
        if let Some(prev) = ports.insert(c.port, c) {
            return Err(SettingsError::Conflict(format!(
                "duplicate listen port {}: '{prev}' and '{c}'",
                c.port
            )));
        }
    }
    let mut names: HashMap<&str, &ProvideSpec> = HashMap::new();
    // A terminator listens on every address of the host: no consume
    // listener nor another terminator can share its port.
    let mut tls_ports: HashMap<u16, &ProvideSpec> = HashMap::new();
    for p in provides {
        if let Some(prev) = names.insert(&p.name, p) {
            return Err(SettingsError::Conflict(format!(
                "'{}' is provided twice ('{prev}' and '{p}'): one instance per service and node",
                p.name
            )));
        }
        let Some(port) = p.tls_port else { continue };
        if let Some(c) = ports.get(&port) {
            return Err(SettingsError::Conflict(format!(
                "TLS port {port} of '{p}' is the listen port of '{c}'"
            )));
        }
        if let Some(prev) = tls_ports.insert(port, p) {
            return Err(SettingsError::Conflict(format!(
                "TLS port {port} is given twice: '{prev}' and '{p}'"
            )));
        }
    }
    Ok(())
}

/// A node that forwards a service to itself takes a connection slot at
/// each turn of the loop, until none is left for the applications: its
/// own listener named as a static backend, or provided as the service it
/// consumes from discovery (it would be among its own backends). Loops
/// through other nodes are not seen here.
fn check_loops(
    bind: IpAddr,
    consumes: &[ConsumeSpec],
    provides: &[ProvideSpec],
) -> Result<(), SettingsError> {
    for c in consumes {
        if let Some(b) = c.backends.iter().find(|b| is_listener(bind, c.port, b)) {
            return Err(SettingsError::Conflict(format!(
                "'{c}' forwards to its own listener ({b}): name the service's own port"
            )));
        }
        let discovered = c.backends.is_empty();
        if let Some(p) =
            (provides.iter()).find(|p| discovered && p.name == c.name && p.port == c.port)
        {
            return Err(SettingsError::Conflict(format!(
                "'{p}' provides the listener of '{c}', which forwards to the providers of '{}': \
                 provide the port the service itself listens on",
                c.name
            )));
        }
    }
    Ok(())
}

/// Whether the plain backend `b` is the listener a consume binds on `bind`
/// and `port`: that very address, a loopback address of the same family
/// when the listener is on every address of it, or `localhost` (127.0.0.1
/// first) when the listener has 127.0.0.1. A listener on one loopback
/// address does not take connections to another (Redis on 127.0.0.2 beside
/// a listener on 127.0.0.1 is no loop), and where it is unsure (`::` and
/// an IPv4 address, which depends on `net.ipv6.bindv6only`) it says no: a
/// loop missed costs what it did before, a valid setup refused costs more.
/// (`discovery::addr::is_listener` judges a discovered record the other
/// way when unsure: a stranger's record dropped costs nothing.)
fn is_listener(bind: IpAddr, port: u16, b: &BackendAddr) -> bool {
    b.port == port
        && !b.tls
        && match &b.host {
            Host::Ip(ip) => {
                let ip = ip.to_canonical();
                let every = bind.is_unspecified() && ip.is_ipv4() == bind.is_ipv4();
                ip == bind || (every && ip.is_loopback())
            }
            // A listener is never on a link-local address (`--bind`
            // cannot name its interface).
            Host::Scoped(..) => false,
            Host::Name(_) => {
                let v4 = [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED];
                b.host.is_loopback() && v4.map(IpAddr::V4).contains(&bind)
            }
        }
}

/// A link-local backend's interface is on this host: a typo there would
/// leave the backend undialable (the kernel refuses a link-local address
/// without its interface).
fn check_zones(consumes: &[ConsumeSpec]) -> Result<(), SettingsError> {
    for c in consumes {
        for b in &c.backends {
            if let Host::Scoped(_, zone) = &b.host {
                if crate::spec::zone_index(zone).is_none() {
                    return Err(SettingsError::Value {
                        setting: "consume",
                        value: c.to_string(),
                        reason: format!("no interface '{zone}' with an address here"),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Credentials are for a consumed service, one set per service: a name
/// that matches nothing is most likely a typo, which would otherwise leave
/// the application facing `NOAUTH` with nothing in the log.
fn check_credentials(
    consumes: &[ConsumeSpec],
    credentials: &[Arc<Credentials>],
) -> Result<(), SettingsError> {
    let mut seen: HashMap<&str, &Credentials> = HashMap::new();
    for c in credentials {
        let name = c.spec.service.as_str();
        if !consumes.iter().any(|s| s.name == name) {
            return Err(SettingsError::Value {
                setting: "credentials",
                value: c.spec.to_string(),
                reason: format!("'{name}' is not a consumed service (no --consume {name}:PORT)"),
            });
        }
        if let Some(prev) = seen.insert(name, c) {
            return Err(SettingsError::Conflict(format!(
                "two sets of credentials for '{name}': '{}' and '{}'",
                prev.spec, c.spec
            )));
        }
    }
    Ok(())
}

/// Whether this host (its network namespace) has an interface named
/// `name`, with an address or not.
fn interface_exists(name: &str) -> bool {
    use rustix::net::{netdevice, socket, AddressFamily, SocketType};
    // The kernel's own lookup (SIOCGIFINDEX), which any socket can ask.
    socket(AddressFamily::INET, SocketType::DGRAM, None)
        .and_then(|s| netdevice::name_to_index(&s, name))
        .is_ok()
}

/// Every (interface name, address) of this host, for checking the chosen
/// interfaces and advertised addresses against.
fn local_interfaces() -> Vec<(String, IpAddr)> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.name.clone(), i.ip()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_is_looked_up_by_the_kernel_with_an_address_or_not() {
        assert!(interface_exists("lo"), "every network namespace has lo");
        for name in [
            "nosuch0",
            "",
            "../lo",
            "lo/",
            "a-name-far-too-long-for-linux",
        ] {
            assert!(!interface_exists(name), "{name:?}");
        }
    }

    #[test]
    fn an_empty_list_of_interfaces_or_addresses_reads_all() {
        let none: [IpAddr; 0] = [];
        assert_eq!(all_or_listed(&none), "all");
        let addrs: [IpAddr; 2] = ["192.168.56.11".parse().unwrap(), "fe80::1".parse().unwrap()];
        assert_eq!(all_or_listed(&addrs), "192.168.56.11,fe80::1");
        assert_eq!(all_or_listed(&["eth1"]), "eth1");
    }

    #[test]
    fn every_listener_gets_a_connection_slot() {
        let consume = |port| ConsumeSpec {
            name: "redis".into(),
            port,
            backends: Vec::new(),
        };
        let mut config = Config {
            bind: DEFAULT_BIND,
            consumes: vec![consume(7001), consume(7002)],
            provides: Vec::new(),
            proxy: ProxySettings::default(),
            discovery: DiscoverySettings::default(),
            security: SecuritySettings::default(),
        };
        config.proxy.max_connections = 1;
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("number of listeners (2)"), "{e}");
        config.proxy.max_connections = 2;
        config.validate().unwrap();
    }

    #[test]
    fn proxy_settings_the_kernel_or_the_pipeline_would_refuse() {
        let d = ProxySettings::default;
        let cases: &[(ProxySettings, &str)] = &[
            (
                ProxySettings {
                    max_connections: 0,
                    ..d()
                },
                "max_connections '0'",
            ),
            (
                ProxySettings {
                    connect_attempts: 0,
                    ..d()
                },
                "connect_attempts '0'",
            ),
            (
                ProxySettings {
                    tcp_keepalive: Some(Duration::from_millis(999)),
                    ..d()
                },
                "tcp_keepalive '999ms'",
            ),
            (
                ProxySettings {
                    tcp_keepalive_interval: Duration::from_secs(32768),
                    ..d()
                },
                "tcp_keepalive_interval",
            ),
            (
                ProxySettings {
                    tcp_keepalive_probes: 128,
                    ..d()
                },
                "tcp_keepalive_probes '128'",
            ),
            (
                ProxySettings {
                    tcp_user_timeout: Some(Duration::from_secs(25 * 86400)),
                    ..d()
                },
                "tcp_user_timeout",
            ),
            (
                ProxySettings {
                    tcp_keepalive: Some(Duration::from_millis(1500)),
                    ..d()
                },
                "tcp_keepalive '1s 500ms': use whole seconds",
            ),
            (
                ProxySettings {
                    tcp_user_timeout: Some(Duration::from_micros(500)),
                    ..d()
                },
                "tcp_user_timeout '500us': at least 1ms, or off",
            ),
        ];
        for (p, want) in cases {
            let e = p.validate().expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
        let off = ProxySettings {
            tcp_keepalive: None,
            tcp_user_timeout: None,
            ..d()
        };
        assert_eq!(off.validate(), Ok(()));
        assert_eq!(d().validate(), Ok(()));
    }

    fn config(consumes: &[&str], provides: &[&str]) -> Config {
        Config {
            bind: [127, 0, 0, 1].into(),
            consumes: consumes.iter().map(|s| s.parse().unwrap()).collect(),
            provides: provides.iter().map(|s| s.parse().unwrap()).collect(),
            proxy: ProxySettings::default(),
            discovery: DiscoverySettings::default(),
            security: SecuritySettings::default(),
        }
    }

    #[test]
    fn the_host_check_refuses_a_bind_address_not_here() {
        let with_bind = |bind: &str| {
            let mut c = config(&["r:6379=10.0.0.5:6379"], &[]);
            c.bind = bind.parse().unwrap();
            c
        };
        assert_eq!(with_bind("127.0.0.1").check_host(), Ok(()));
        assert_eq!(with_bind("0.0.0.0").check_host(), Ok(()));
        let e = with_bind("fe80::1").check_host().unwrap_err().to_string();
        assert!(
            e.contains("bind 'fe80::1': a link-local address needs an interface"),
            "{e}"
        );
        // Where the host lets anything be bound, any address is its own.
        let nonlocal = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind");
        if nonlocal.is_ok_and(|v| v.trim() == "0") {
            let e = with_bind("192.0.2.77")
                .check_host()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("bind '192.0.2.77': not an address of this host"),
                "{e}"
            );
        }
        let mut c = config(&["r:6379=[fe80::1%nosuchif9]:6379"], &[]);
        assert_eq!(c.validate(), Ok(()), "checked at start, not at a reload");
        let e = c.check_host().unwrap_err().to_string();
        assert!(e.contains("no interface 'nosuchif9'"), "{e}");
        c.consumes.clear();
        assert_eq!(c.check_host(), Ok(()));
    }

    #[test]
    fn what_is_and_is_not_a_forwarding_loop() {
        for (bind, consume, provide) in [
            // Another port, another address, or TLS to a terminator.
            ("127.0.0.1", "r:6379=localhost:6380", "x:1"),
            ("127.0.0.1", "r:6379=10.0.0.5:6379", "x:1"),
            ("127.0.0.1", "r:6379=[::1]:6379", "x:1"),
            ("10.0.0.5", "r:6379=127.0.0.1:6379", "x:1"),
            ("127.0.0.1", "r:6379=tls://127.0.0.1:6379", "x:1"),
            // Another loopback address, or one the listener may not have.
            ("127.0.0.1", "r:6379=127.0.0.2:6379", "x:1"),
            ("127.0.0.2", "r:6379=localhost:6379", "x:1"),
            ("::", "r:6379=127.0.0.1:6379", "x:1"),
            ("::1", "r:6379=localhost:6379", "x:1"),
            // A static forward offered to the mesh: a gateway, no loop.
            ("0.0.0.0", "r:6379=10.0.0.5:6379", "r:6379"),
            // Another service on the consume's port.
            ("127.0.0.1", "r:6379", "s:6379"),
        ] {
            let mut c = config(&[consume], &[provide]);
            c.bind = bind.parse().unwrap();
            assert!(
                check_loops(c.bind, &c.consumes, &c.provides).is_ok(),
                "{bind} {consume} {provide}"
            );
        }
        for (bind, consume) in [
            ("::", "r:6379=[::1]:6379"),
            ("0.0.0.0", "r:6379=127.0.0.5:6379"),
            ("0.0.0.0", "r:6379=localhost:6379"),
            ("10.0.0.5", "r:6379=10.0.0.5:6379"),
        ] {
            let mut c = config(&[consume], &[]);
            c.bind = bind.parse().unwrap();
            assert!(
                check_loops(c.bind, &c.consumes, &c.provides).is_err(),
                "{bind} {consume}"
            );
        }
    }

    #[test]
    fn defaults_validate() {
        config(&["a:1=h:1", "b:2"], &["a:1", "b:1"])
            .validate()
            .unwrap();
        let d = DiscoverySettings::default();
        assert!(crate::value::valid_node_id(&d.node_id));
        assert!(!d.probe);
    }

    #[test]
    fn what_cannot_run_is_named() {
        let cases: &[(Config, &str)] = &[
            (
                config(&["r:6379=localhost:6379"], &[]),
                "'r:6379=localhost:6379' forwards to its own listener (localhost:6379)",
            ),
            (
                config(&["r:6379=127.0.0.1:6379"], &[]),
                "forwards to its own listener (127.0.0.1:6379)",
            ),
            (
                config(&["redis:6379"], &["redis:6379"]),
                "'redis:6379' provides the listener of 'redis:6379'",
            ),
            (
                config(&["a:7000=h:1"], &["r:1@7000"]),
                "TLS port 7000 of 'r:1@7000' is the listen port of 'a:7000=h:1'",
            ),
            (
                config(&[], &["r:1@5", "s:2@5"]),
                "TLS port 5 is given twice: 'r:1@5' and 's:2@5'",
            ),
            (
                config(&["a:6379=h:1", "b:6379=h:2"], &[]),
                "duplicate listen port 6379: 'a:6379=h:1' and 'b:6379=h:2'",
            ),
            (
                config(&[], &["a:1", "a:2"]),
                "'a' is provided twice ('a:1' and 'a:2')",
            ),
            {
                let mut c = config(&[], &[]);
                c.discovery.node_id = "a.b".into();
                (c, "node_id 'a.b': use 1-16 letters")
            },
            {
                let mut c = config(&[], &[]);
                c.discovery.interfaces = vec!["nosuchif0".into()];
                (c, "interface 'nosuchif0': no interface of that name")
            },
            {
                let mut c = config(&[], &[]);
                c.discovery.advertise_addrs = vec!["192.0.2.77".parse().unwrap()];
                (
                    c,
                    "advertise_addr '192.0.2.77': not an address of this host",
                )
            },
        ];
        for (c, want) in cases {
            let e = c.validate().expect_err(want).to_string();
            assert!(e.contains(want), "got {e:?}, want {want:?}");
        }
    }
}
