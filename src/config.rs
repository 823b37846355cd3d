//! Flags + TOML file + environment -> one validated [`Config`].
//!
//! Precedence, highest first: command-line flags, `MESH_AMB_*` environment
//! variables, the `--config` file, built-in defaults. A list given on the
//! command line (or its environment variable) replaces the file's list rather
//! than merging with it, so what is running is always what one source says.
//! `--from-env` consumes are added on top. Every error is a single line that
//! names the offending value; the binary exits 2 on it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::balance::Policy;
use crate::cli::{LogFormat, RunArgs};
use crate::spec::{self, ConsumeSpec, ProvideSpec};

/// Default connection limit: far above what one ambassador normally carries,
/// low enough that two fds per connection fit a typical 65536 fd limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// A backend on the same LAN answers a SYN in well under a millisecond; one
/// second tolerates a loaded host while keeping failover to the next
/// candidate quick when a host has silently vanished.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Three candidates cover "one backend died and the next is also in trouble"
/// without letting one client wait through a whole large pool.
pub const DEFAULT_CONNECT_ATTEMPTS: usize = 3;
/// Long enough for request/response protocols to finish their exchanges,
/// short enough that an orchestrator's stop timeout (often 30-90 s) is met.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// First ejection after a failed connect. Short, because an ambassador's
/// backends are few and a restarted service should be used again quickly;
/// repeated failures double it up to [`MAX_EJECT_TIME`].
pub const DEFAULT_EJECT_TIME: Duration = Duration::from_secs(1);
/// Cap on the ejection back-off, so a backend that comes back after a long
/// outage is retried within half a minute.
pub const MAX_EJECT_TIME: Duration = Duration::from_secs(30);
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
/// above any round trip a LAN or a congested uplink produces.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// Once one direction has finished (its FIN forwarded), the connection ends
/// after this long without a byte moving the other way. A client that sent
/// its request and FIN waits for a reply; a peer that never replies nor closes
/// would otherwise hold the slot forever. 60 s is the kernel's own patience
/// with an orphaned half-closed socket (`tcp_fin_timeout`, FIN_WAIT2), and it
/// counts from the last byte, so a long reply still streaming is never cut.
pub const DEFAULT_HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

/// A configuration error: one line, naming the offending value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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
    /// Log line format, applied by the binary before anything runs.
    pub log_format: LogFormat,
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
            node_id: crate::discovery::wire::random_node_id(),
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
    /// drops the connection, so a peer that vanished mid-transfer does not
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
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            connect_attempts: DEFAULT_CONNECT_ATTEMPTS,
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

/// The TOML file, mirroring the long flags (with `_` for `-`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    consume: Option<Vec<String>>,
    provide: Option<Vec<String>>,
    from_env: Option<bool>,
    balance: Option<Policy>,
    max_connections: Option<u64>,
    connect_timeout: Option<String>,
    connect_attempts: Option<u64>,
    idle_timeout: Option<String>,
    drain_timeout: Option<String>,
    eject_time: Option<String>,
    interface: Option<Vec<String>>,
    advertise_addr: Option<Vec<String>>,
    node_id: Option<String>,
    check_interval: Option<String>,
    rise: Option<u64>,
    fall: Option<u64>,
    drain_period: Option<String>,
    backend_check: Option<String>,
    log_format: Option<LogFormat>,
}

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Longest duration accepted anywhere: far beyond any sensible timeout, and
/// small enough that adding it to an instant can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration like `500ms`, `1s`, `5m`; a bare number is seconds.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(s).ok()
    };
    match d {
        Some(d) if d <= MAX_DURATION => Ok(d),
        Some(_) => Err(bad(format!("{what} '{s}': at most 30 days"))),
        None => Err(bad(format!(
            "{what} '{s}': not a duration (e.g. 500ms, 2s, 5m)"
        ))),
    }
}

fn positive_duration(what: &str, s: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(what, s)?;
    if d.is_zero() {
        return Err(bad(format!("{what} '{s}': must be greater than zero")));
    }
    Ok(d)
}

/// A scalar setting's text: the flag (clap already folded its environment
/// variable in), else the file.
fn scalar<'a>(flag: &'a Option<String>, file: &'a Option<String>) -> Option<&'a str> {
    flag.as_deref().or(file.as_deref())
}

/// A duration that must be positive.
fn duration_or(
    flag: &Option<String>,
    file: &Option<String>,
    what: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    scalar(flag, file).map_or(Ok(default), |s| positive_duration(what, s))
}

/// A duration that may be zero ("do not wait").
fn wait_or(
    flag: &Option<String>,
    file: &Option<String>,
    what: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    scalar(flag, file).map_or(Ok(default), |s| parse_duration(what, s))
}

/// A positive duration, or `off` (the default) for none.
fn optional_duration(
    flag: &Option<String>,
    file: &Option<String>,
    what: &str,
) -> Result<Option<Duration>, ConfigError> {
    match scalar(flag, file).map(str::trim) {
        None | Some("off") => Ok(None),
        Some(s) => positive_duration(what, s).map(Some),
    }
}

/// A count in `1..=max`, from the flag (text) or the file (a TOML integer).
fn count_or(
    flag: &Option<String>,
    file: Option<u64>,
    what: &str,
    max: u64,
    default: usize,
) -> Result<usize, ConfigError> {
    let (text, name) = match (flag, file) {
        (Some(s), _) => (s.clone(), format!("--{what}")),
        (None, Some(n)) => (n.to_string(), what.replace('-', "_")),
        (None, None) => return Ok(default),
    };
    match text.trim().parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n as usize),
        _ => Err(bad(format!(
            "{name} '{text}': expected a number from 1 to {max}"
        ))),
    }
}

/// A list of specs: the flags, else their environment variable, else the
/// file; each parsed, errors naming where the bad one came from.
#[allow(clippy::too_many_arguments)]
fn spec_list<T>(
    flags: &[String],
    env: &dyn Env,
    var: &str,
    file: &Option<Vec<String>>,
    file_ctx: &str,
    what: &str,
    parse: fn(&str) -> Result<T, crate::spec::SpecError>,
) -> Result<Vec<T>, ConfigError> {
    let (items, source) = match list_from(flags, env, var) {
        Some((items, src)) => (items, Source::Flag(src)),
        None => (file.clone().unwrap_or_default(), Source::File),
    };
    items
        .iter()
        .map(|raw| {
            parse(raw).map_err(|e| match &source {
                Source::Flag(src) => bad(format!("--{what} '{raw}'{src}: {e}")),
                Source::File => bad(format!("{file_ctx}{what} '{raw}': {e}")),
            })
        })
        .collect()
}

/// Where a list came from, for error messages.
enum Source {
    /// Flags, or (with the suffix naming it) their environment variable.
    Flag(String),
    File,
}

/// Reads the environment once so that tests can pass their own.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// One source of a list: flags win, then their environment variable.
fn list_from(flags: &[String], env: &dyn Env, var: &str) -> Option<(Vec<String>, String)> {
    if !flags.is_empty() {
        return Some((flags.to_vec(), String::new()));
    }
    let v = env.var(var)?;
    let items: Vec<String> = v.split_whitespace().map(str::to_owned).collect();
    (!items.is_empty()).then(|| (items, format!(" (from {var})")))
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans several lines (a source excerpt); keep the
        // first, which names the key, and add the location.
        let first = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_owned();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        bad(format!("config file {}{at}: {first}", path.display()))
    })
}

impl Config {
    /// Builds the configuration from parsed flags and an environment.
    pub fn resolve(args: &RunArgs, env: &dyn Env) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let file_ctx = args
            .config
            .as_ref()
            .map(|p| format!("config file {}: ", p.display()))
            .unwrap_or_default();

        let bind = match (&args.bind, &file.bind) {
            (Some(b), _) => (b.as_str(), "--bind"),
            (None, Some(b)) => (b.as_str(), "bind"),
            (None, None) => ("127.0.0.1", "default"),
        };
        let bind: IpAddr = bind.0.parse().map_err(|_| {
            bad(format!(
                "{} '{}': not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::)",
                bind.1, bind.0
            ))
        })?;

        let mut consumes = spec_list(
            &args.consume,
            env,
            "MESH_AMB_CONSUME",
            &file.consume,
            &file_ctx,
            "consume",
            spec::parse_consume,
        )?;
        if args.from_env || file.from_env.unwrap_or(false) {
            let from_env =
                spec::consumes_from_env(env.vars()).map_err(|e| bad(format!("--from-env: {e}")))?;
            consumes.extend(from_env);
        }
        let provides = spec_list(
            &args.provide,
            env,
            "MESH_AMB_PROVIDE",
            &file.provide,
            &file_ctx,
            "provide",
            spec::parse_provide,
        )?;
        check_unique(&consumes, &provides)?;

        let d = ProxySettings::default();
        let proxy = ProxySettings {
            policy: args.balance.or(file.balance).unwrap_or(d.policy),
            max_connections: count_or(
                &args.max_connections,
                file.max_connections,
                "max-connections",
                1_000_000,
                d.max_connections,
            )?,
            connect_timeout: duration_or(
                &args.connect_timeout,
                &file.connect_timeout,
                "connect-timeout",
                d.connect_timeout,
            )?,
            connect_attempts: count_or(
                &args.connect_attempts,
                file.connect_attempts,
                "connect-attempts",
                100,
                d.connect_attempts,
            )?,
            idle_timeout: optional_duration(
                &args.idle_timeout,
                &file.idle_timeout,
                "idle-timeout",
            )?,
            drain_timeout: wait_or(
                &args.drain_timeout,
                &file.drain_timeout,
                "drain-timeout",
                d.drain_timeout,
            )?,
            eject_time: duration_or(
                &args.eject_time,
                &file.eject_time,
                "eject-time",
                d.eject_time,
            )?,
            ..d
        };

        let discovery = resolve_discovery(args, &file, env)?;

        Ok(Config {
            bind,
            consumes,
            provides,
            proxy,
            discovery,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
        })
    }
}

/// A list setting: flags, else its environment variable, else the file.
fn pick_list(
    flags: &[String],
    env: &dyn Env,
    var: &str,
    file: &Option<Vec<String>>,
) -> Vec<String> {
    match list_from(flags, env, var) {
        Some((items, _)) => items,
        None => file.clone().unwrap_or_default(),
    }
}

fn resolve_discovery(
    args: &RunArgs,
    file: &FileConfig,
    env: &dyn Env,
) -> Result<DiscoverySettings, ConfigError> {
    let d = DiscoverySettings::default();
    let node_id = match args.node_id.as_ref().or(file.node_id.as_ref()) {
        Some(id) if crate::discovery::wire::valid_node_id(id) => id.to_ascii_lowercase(),
        Some(id) => {
            return Err(bad(format!(
                "--node-id '{id}': use 1-16 letters, digits or '-'"
            )))
        }
        None => d.node_id,
    };
    let local = crate::discovery::addr::local_interfaces();
    let interfaces = pick_list(&args.interface, env, "MESH_AMB_INTERFACE", &file.interface);
    for i in &interfaces {
        if !local.iter().any(|(name, _)| name == i) {
            let mut names: Vec<&str> = local.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            return Err(bad(format!(
                "--interface '{i}': no interface of that name with an address here (have: {})",
                names.join(", ")
            )));
        }
    }
    let mut advertise_addrs = Vec::new();
    for a in pick_list(
        &args.advertise_addr,
        env,
        "MESH_AMB_ADVERTISE_ADDR",
        &file.advertise_addr,
    ) {
        let ip: IpAddr = a
            .parse()
            .map_err(|_| bad(format!("--advertise-addr '{a}': not an IP address")))?;
        if !local.iter().any(|(_, l)| *l == ip) {
            return Err(bad(format!(
                "--advertise-addr '{a}': not an address of this host"
            )));
        }
        advertise_addrs.push(ip);
    }
    Ok(DiscoverySettings {
        probe: args.node_id.is_some() || file.node_id.is_some(),
        node_id,
        interfaces,
        advertise_addrs,
        check_interval: duration_or(
            &args.check_interval,
            &file.check_interval,
            "check-interval",
            d.check_interval,
        )?,
        rise: count_or(&args.rise, file.rise, "rise", 100, d.rise as usize)? as u32,
        fall: count_or(&args.fall, file.fall, "fall", 100, d.fall as usize)? as u32,
        drain_period: wait_or(
            &args.drain_period,
            &file.drain_period,
            "drain-period",
            d.drain_period,
        )?,
        backend_check: optional_duration(
            &args.backend_check,
            &file.backend_check,
            "backend-check",
        )?,
    })
}

/// Two listeners cannot share a port, and a node has one instance per
/// provided service name; say which specs collide.
fn check_unique(consumes: &[ConsumeSpec], provides: &[ProvideSpec]) -> Result<(), ConfigError> {
    let mut ports: HashMap<u16, &ConsumeSpec> = HashMap::new();
    for c in consumes {
        if let Some(prev) = ports.insert(c.port, c) {
            return Err(bad(format!(
                "duplicate listen port {}: '{prev}' and '{c}'",
                c.port
            )));
        }
    }
    let mut names: HashMap<&str, &ProvideSpec> = HashMap::new();
    for p in provides {
        if let Some(prev) = names.insert(&p.name, p) {
            return Err(bad(format!(
                "'{}' is provided twice ('{prev}' and '{p}'): one instance per service and node",
                p.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    fn resolve(argv: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let cli = crate::cli::Cli::try_parse_from(
            std::iter::once("mesh-amb").chain(argv.iter().copied()),
        )
        .map_err(|e| bad(e.to_string()))?;
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::resolve(&cli.run, &env)
    }

    fn temp_toml(body: &str) -> tempfile_lite::TempFile {
        let f = tempfile_lite::TempFile::new("toml");
        std::fs::File::create(&f.path)
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        f
    }

    /// A throwaway file removed on drop; enough for these tests, so the
    /// crate does not pull in `tempfile`.
    mod tempfile_lite {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct TempFile {
            pub path: PathBuf,
        }
        impl TempFile {
            pub fn new(ext: &str) -> Self {
                static N: AtomicU32 = AtomicU32::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                let path = std::env::temp_dir()
                    .join(format!("mesh-amb-test-{}-{n}.{ext}", std::process::id()));
                TempFile { path }
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    #[test]
    fn defaults() {
        let c = resolve(&["--consume", "redis:7379=127.0.0.1:6379"], &[]).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1");
        assert_eq!(c.consumes.len(), 1);
        assert_eq!(c.proxy.policy, Policy::P2c);
        assert_eq!(c.proxy.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.proxy.idle_timeout, None);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.discovery.check_interval, DEFAULT_CHECK_INTERVAL);
        assert!(c.discovery.interfaces.is_empty());
        assert_eq!(c.discovery.node_id.len(), 8);
    }

    #[test]
    fn discovery_settings() {
        let c = resolve(
            &[
                "--advertise-addr",
                "127.0.0.1",
                "--node-id",
                "H1",
                "--rise",
                "3",
                "--backend-check",
                "500ms",
            ],
            &[("MESH_AMB_INTERFACE", "lo")],
        )
        .unwrap();
        assert_eq!(c.discovery.interfaces, ["lo"]);
        assert_eq!(
            c.discovery.advertise_addrs,
            ["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.discovery.node_id, "h1");
        assert_eq!(c.discovery.rise, 3);
        assert_eq!(c.discovery.backend_check, Some(Duration::from_millis(500)));
    }

    /// Arguments, environment, and what the error must mention.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn bad_input_is_one_line_naming_the_value() {
        let cases: &[Case] = &[
            (
                &["--consume", "redis:0"],
                &[],
                "--consume 'redis:0': port 0",
            ),
            (
                &["--consume", "redis:70000"],
                &[],
                "port 70000 is out of range",
            ),
            (&["--provide", "redis:0"], &[], "--provide 'redis:0'"),
            (
                &["--consume", "a:6379=h:1", "--consume", "b:6379=h:2"],
                &[],
                "duplicate listen port 6379: 'a:6379=h:1' and 'b:6379=h:2'",
            ),
            (
                &["--provide", "a:1", "--provide", "a:2"],
                &[],
                "'a' is provided twice",
            ),
            (&["--idle-timeout", "500000000000y"], &[], "at most 30 days"),
            (
                &["--eject-time", "31days"],
                &[],
                "eject-time '31days': at most 30 days",
            ),
            (
                &["--bind", "localhost"],
                &[],
                "--bind 'localhost': not an IP",
            ),
            (
                &["--connect-timeout", "soon"],
                &[],
                "connect-timeout 'soon'",
            ),
            (&["--connect-timeout", "0s"], &[], "greater than zero"),
            (&["--idle-timeout=-3"], &[], "idle-timeout '-3'"),
            (&["--max-connections", "0"], &[], "--max-connections '0'"),
            (&["--connect-attempts", "x"], &[], "--connect-attempts 'x'"),
            (
                &["--config", "/nonexistent/mesh.toml"],
                &[],
                "cannot read config file /nonexistent/mesh.toml",
            ),
            (
                &[],
                &[("MESH_AMB_CONSUME", "a:1=h:1 b:oops")],
                "--consume 'b:oops' (from MESH_AMB_CONSUME)",
            ),
            (
                &["--from-env"],
                &[("REDIS_PORT_6379_TCP", "tcp://nope")],
                "--from-env: REDIS_PORT_6379_TCP=tcp://nope",
            ),
            (
                &["--interface", "nosuchif0"],
                &[],
                "--interface 'nosuchif0': no interface",
            ),
            (
                &["--advertise-addr", "192.0.2.77"],
                &[],
                "--advertise-addr '192.0.2.77': not an address of this host",
            ),
            (
                &["--advertise-addr", "x"],
                &[],
                "--advertise-addr 'x': not an IP",
            ),
            (&["--node-id", "a.b"], &[], "--node-id 'a.b'"),
            (&["--rise", "0"], &[], "--rise '0'"),
            (&["--check-interval", "0"], &[], "check-interval '0'"),
            (
                &["--from-env", "--consume", "x:6379=h:1"],
                &[("REDIS_PORT_6379_TCP", "tcp://10.0.0.5:6379")],
                "duplicate listen port 6379",
            ),
        ];
        for (argv, env, want) in cases {
            let e = resolve(argv, env).expect_err(want).to_string();
            assert!(e.contains(want), "{argv:?}: got {e:?}, want {want:?}");
            assert!(!e.contains('\n'), "{argv:?}: multi-line error {e:?}");
        }
    }

    #[test]
    fn file_settings_and_flag_precedence() {
        let f = temp_toml(
            r#"
bind = "0.0.0.0"
balance = "round-robin"
consume = ["redis:7379=127.0.0.1:6379", "api:8080"]
provide = ["web:80"]
connect_timeout = "250ms"
idle_timeout = "5m"
log_format = "json"
"#,
        );
        let path = f.path.to_str().unwrap();
        let c = resolve(&["--config", path], &[]).unwrap();
        assert_eq!(c.bind.to_string(), "0.0.0.0");
        assert_eq!(c.proxy.policy, Policy::RoundRobin);
        assert_eq!(c.consumes.len(), 2);
        assert_eq!(c.provides.len(), 1);
        assert_eq!(c.proxy.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.proxy.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.log_format, LogFormat::Json);

        // Flags win, and a flag list replaces the file's list.
        let c = resolve(
            &[
                "--config",
                path,
                "--bind",
                "::1",
                "--balance",
                "least-conn",
                "--consume",
                "x:9=h:1",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.bind.to_string(), "::1");
        assert_eq!(c.proxy.policy, Policy::LeastConn);
        assert_eq!(
            c.consumes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            ["x:9=h:1"]
        );
        assert_eq!(c.provides.len(), 1, "provides were not given as flags");

        // The environment counts as flags.
        let c = resolve(
            &["--config", path],
            &[("MESH_AMB_CONSUME", "a:1=h:1  b:2=h:2")],
        )
        .unwrap();
        assert_eq!(c.consumes.len(), 2);
        assert_eq!(c.consumes[1].name, "b");
    }

    #[test]
    fn bad_files_name_the_problem() {
        for (body, want) in [
            ("bnid = \"0.0.0.0\"\n", "unknown field `bnid`"),
            ("consume = \"redis:1\"\n", "invalid type"),
            ("consume = [\"redis:0\"]\n", "consume 'redis:0': port 0"),
            ("balance = \"fastest\"\n", "unknown variant `fastest`"),
            ("this is not toml", "(line 1)"),
        ] {
            let f = temp_toml(body);
            let e = resolve(&["--config", f.path.to_str().unwrap()], &[])
                .expect_err(body)
                .to_string();
            assert!(e.contains(want), "{body:?}: got {e:?}");
            assert!(e.contains("config file"), "{body:?}: got {e:?}");
            assert!(!e.contains('\n'), "{body:?}: multi-line {e:?}");
        }
    }

    #[test]
    fn from_env_adds_docker_links() {
        let c = resolve(
            &["--from-env", "--consume", "api:8080=10.0.0.9:80"],
            &[("REDIS_PORT_6379_TCP", "tcp://10.0.0.5:6379")],
        )
        .unwrap();
        let got: Vec<String> = c.consumes.iter().map(|c| c.to_string()).collect();
        assert_eq!(got, ["api:8080=10.0.0.9:80", "redis:6379=10.0.0.5:6379"]);
    }
}
