//! What the user can type: clap definitions, typed. Every value is parsed by
//! its library type's `FromStr` (the same one the config file goes through),
//! and every default comes from a library constant, printed by clap.
//!
//! Adding a setting is one field here, with its doc and `#[arg]`: the config
//! file key (the field name), the `MESH_AMB_*` variable and the layering come
//! with it (see `config`). A library setting also needs its field in
//! `mesh_amb::settings` and one line in `config::into_settings`, which the
//! compiler asks for.

use std::path::PathBuf;

use clap::builder::{BoolishValueParser, PossibleValuesParser, TypedValueParser as _};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{
    ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum,
};
use serde::{Deserialize, Serialize};

use mesh_amb::backends::balance::Policy;
use mesh_amb::credentials::CredentialsSpec;
use mesh_amb::settings::{
    AdminAddr, ConnectionCount, Ip, NodeId, OrOff, Period, SmallCount, Wait, DEFAULT_BIND,
    DEFAULT_CHECK_INTERVAL, DEFAULT_CONNECT_ATTEMPTS, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_PERIOD, DEFAULT_DRAIN_TIMEOUT, DEFAULT_EJECT_TIME, DEFAULT_FALL,
    DEFAULT_HALF_CLOSE_TIMEOUT, DEFAULT_LOGIN_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_RISE,
    DEFAULT_TCP_KEEPALIVE, DEFAULT_TCP_KEEPALIVE_INTERVAL, DEFAULT_TCP_KEEPALIVE_PROBES,
    DEFAULT_TCP_USER_TIMEOUT, DEFAULT_WAIT_FOR_BACKEND,
};
use mesh_amb::spec::{ConsumeSpec, ProvideSpec};

/// A masterless discovery mesh of ambassadors: local TCP proxies that stand
/// in for remote services.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Check the configuration (every value, and the files it names) and
    /// print what would run, then exit: nothing listens or is advertised.
    /// Exit 0 if it would start, 2 otherwise.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

impl Cli {
    /// Parses `argv` (program name first). The matches say where each
    /// value came from, which the config file layering needs.
    pub fn parse_from_argv<I, T>(argv: I) -> Result<(Cli, ArgMatches), clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(argv)?;
        let cli = Cli::from_arg_matches(&matches)?;
        Ok((cli, matches))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a self-contained demonstration on this machine and exit.
    Demo(DemoArgs),
    /// Write a new random cluster key to FILE (readable by its owner only;
    /// an existing file is never replaced). Copy that one file to every
    /// node of the cluster and start each with --cluster-key FILE.
    Keygen {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// List the ambassadors (and other _amb._tcp services) that answer on
    /// the link, as a table or JSON: what avahi-browse -r shows, readable.
    Ls(crate::ls::LsArgs),
    /// Show a running node's tables (backends, their state and counters;
    /// provides; discovery), read from its admin endpoint (--admin).
    Status(crate::status::StatusArgs),
    /// Print a completion script for SHELL to stdout, e.g.
    /// `mesh-amb completions bash > /etc/bash_completion.d/mesh-amb`.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, e.g.
    /// `mesh-amb man > /usr/local/share/man/man1/mesh-amb.1`.
    Man,
}

/// `mesh-amb demo`'s options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// After the story, keep every node running until Ctrl-C (SIGINT or
    /// SIGTERM), to look around.
    #[arg(long)]
    pub keep: bool,
    /// Serve the stats page of every demo node here ([ADDR:]PORT, loopback
    /// unless an address is given), reachable from this machine's browser
    /// although the demo runs in a private network namespace.
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub admin: Option<AdminAddr>,
}

/// Settings of the main job. The field names are the config file's keys;
/// a scalar's environment variable is `MESH_AMB_` + its name in capitals
/// (given to clap, which reads it); a list's is the same name, read by
/// `config` because it holds several whitespace-separated values.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// Stand in for a service: listen on PORT and forward to the given
    /// backends ([tls://]HOST:PORT[*WEIGHT], comma-separated; tls:// is
    /// another ambassador's TLS terminator; IPv6 in brackets, link-local
    /// with its interface: [fe80::1%eth1]:6379) or, without them, to the
    /// discovered providers of NAME. Repeatable. Env: MESH_AMB_CONSUME
    /// (whitespace-separated specs).
    #[arg(long, value_name = "NAME:PORT[=BACKEND,...]")]
    pub consume: Vec<ConsumeSpec>,

    /// Offer the local service listening on PORT to the mesh as NAME, with
    /// WEIGHT its share of new connections (default 1); with TLS on, other
    /// ambassadors reach it through a terminator on TLSPORT (default: one
    /// the kernel picks). Repeatable. Env: MESH_AMB_PROVIDE
    /// (whitespace-separated specs).
    #[arg(long, value_name = "NAME:PORT[*WEIGHT][@TLSPORT]")]
    pub provide: Vec<ProvideSpec>,

    /// Address the consume listeners bind to; 0.0.0.0 for a container
    /// ambassador.
    #[arg(long, value_name = "ADDR", env = "MESH_AMB_BIND", default_value_t = Ip(DEFAULT_BIND))]
    pub bind: Ip,

    /// Add a static consume for every Docker-link variable of the form
    /// <NAME>_PORT_<P>_TCP=tcp://<ip>:<port>.
    #[arg(long, env = "MESH_AMB_FROM_ENV", value_parser = BoolishValueParser::new())]
    pub from_env: bool,

    /// TOML file with the same settings; flags override it.
    #[arg(long, value_name = "FILE", env = "MESH_AMB_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// How new connections are spread over backends.
    #[arg(long, value_name = "POLICY", env = "MESH_AMB_BALANCE",
        value_parser = policy_parser(), default_value_t = Policy::default())]
    pub balance: Policy,

    /// Most client connections open at once; further clients wait in the
    /// kernel's accept queue (sized to match). Lowered, with a warning, when
    /// the file descriptor limit cannot hold two per connection.
    #[arg(long, value_name = "N", env = "MESH_AMB_MAX_CONNECTIONS",
        default_value_t = ConnectionCount::new(DEFAULT_MAX_CONNECTIONS))]
    pub max_connections: ConnectionCount,

    /// Give up on one backend after this long, then try the next (e.g. 1s,
    /// 500ms).
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_CONNECT_TIMEOUT",
        default_value_t = Period(DEFAULT_CONNECT_TIMEOUT))]
    pub connect_timeout: Period,

    /// Backends tried per client connection before it is closed.
    #[arg(long, value_name = "N", env = "MESH_AMB_CONNECT_ATTEMPTS",
        default_value_t = SmallCount::new(DEFAULT_CONNECT_ATTEMPTS))]
    pub connect_attempts: SmallCount,

    /// How long a client waits when there is no backend, or every one tried
    /// failed, for a backend (a provider found, restarted or moved, a
    /// static backend back; those that failed are tried again each second)
    /// before it is closed (a retry begun within it may run one
    /// --connect-timeout past it); 0 closes it at once.
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_WAIT_FOR_BACKEND",
        default_value_t = Wait(DEFAULT_WAIT_FOR_BACKEND))]
    pub wait_for_backend: Wait,

    /// Close a connection after this long without traffic either way ("off"
    /// disables).
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_IDLE_TIMEOUT",
        default_value_t = OrOff(None))]
    pub idle_timeout: OrOff<Period>,

    /// On SIGINT/SIGTERM, how long open connections may take to finish.
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_DRAIN_TIMEOUT",
        default_value_t = Wait(DEFAULT_DRAIN_TIMEOUT))]
    pub drain_timeout: Wait,

    /// First ejection of a backend that failed to connect; doubles with each
    /// failure in a row.
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_EJECT_TIME",
        default_value_t = Period(DEFAULT_EJECT_TIME))]
    pub eject_time: Period,

    /// Idle time before the first TCP keepalive probe, on both sides of
    /// every proxied connection, so a vanished host frees its connection
    /// ("off" leaves keepalive off).
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_TCP_KEEPALIVE",
        default_value_t = OrOff(Some(Period(DEFAULT_TCP_KEEPALIVE))))]
    pub tcp_keepalive: OrOff<Period>,

    /// Time between TCP keepalive probes.
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_TCP_KEEPALIVE_INTERVAL",
        default_value_t = Period(DEFAULT_TCP_KEEPALIVE_INTERVAL))]
    pub tcp_keepalive_interval: Period,

    /// Unanswered TCP keepalive probes before a connection is dropped.
    #[arg(long, value_name = "N", env = "MESH_AMB_TCP_KEEPALIVE_PROBES",
        default_value_t = SmallCount::new(DEFAULT_TCP_KEEPALIVE_PROBES))]
    pub tcp_keepalive_probes: SmallCount,

    /// Drop a connection whose sent data stays unacknowledged, or unread
    /// (the peer's window closed), this long (TCP_USER_TIMEOUT), on both
    /// sides ("off": the kernel's ~15 minutes for unacknowledged data, no
    /// limit for a live peer that does not read).
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_TCP_USER_TIMEOUT",
        default_value_t = OrOff(Some(Period(DEFAULT_TCP_USER_TIMEOUT))))]
    pub tcp_user_timeout: OrOff<Period>,

    /// Once one side has finished sending, close the connection after this
    /// long without a byte from the other ("off" waits forever).
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_HALF_CLOSE_TIMEOUT",
        default_value_t = OrOff(Some(Period(DEFAULT_HALF_CLOSE_TIMEOUT))))]
    pub half_close_timeout: OrOff<Period>,

    /// Advertise and listen for mDNS only on this interface (repeatable;
    /// one without an address yet is taken up once it has one).
    /// In a Vagrant VM, name the private network, never the NAT adapter.
    /// Env: MESH_AMB_INTERFACE (whitespace-separated). Default: all.
    #[arg(long, value_name = "IFACE")]
    pub interface: Vec<String>,

    /// Advertise exactly this address of the host (repeatable). Env:
    /// MESH_AMB_ADVERTISE_ADDR (whitespace-separated). Default: every
    /// address of the chosen interfaces.
    #[arg(long, value_name = "ADDR")]
    pub advertise_addr: Vec<Ip>,

    /// This node's id in instance and host names (1-16 letters, digits and
    /// '-').
    /// Default: random per start.
    #[arg(long, value_name = "ID", env = "MESH_AMB_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,

    /// How often a provider checks that its local service accepts
    /// connections (and does not close them at once, unanswered).
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_CHECK_INTERVAL",
        default_value_t = Period(DEFAULT_CHECK_INTERVAL))]
    pub check_interval: Period,

    /// Successful checks in a row before a provider advertises again.
    #[arg(long, value_name = "N", env = "MESH_AMB_RISE",
        default_value_t = SmallCount::new(DEFAULT_RISE))]
    pub rise: SmallCount,

    /// Failed checks in a row before a provider withdraws.
    #[arg(long, value_name = "N", env = "MESH_AMB_FALL",
        default_value_t = SmallCount::new(DEFAULT_FALL))]
    pub fall: SmallCount,

    /// On SIGINT/SIGTERM, how long a provider advertises itself as draining
    /// before it says goodbye.
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_DRAIN_PERIOD",
        default_value_t = Wait(DEFAULT_DRAIN_PERIOD))]
    pub drain_period: Wait,

    /// Consumers also check every discovered backend this often ("off"
    /// disables); catches a crashed provider without waiting for a client.
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_BACKEND_CHECK",
        default_value_t = OrOff(None))]
    pub backend_check: OrOff<Period>,

    /// Log in to every backend of the consumed service NAME on the
    /// application's behalf, with the secret in FILE: for redis, a password
    /// on one line, or an ACL user name and its password on two. FILE must
    /// be readable by its owner only. Repeatable. Env: MESH_AMB_CREDENTIALS
    /// (whitespace-separated specs).
    #[arg(long, value_name = "NAME=redis:FILE")]
    pub credentials: Vec<CredentialsSpec>,

    /// With --credentials, how long a backend has to answer the login
    /// before the next is tried: a busy Redis (a slow command, a fork's
    /// pause) answers late, not never.
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_LOGIN_TIMEOUT",
        default_value_t = Period(DEFAULT_LOGIN_TIMEOUT))]
    pub login_timeout: Period,

    /// Cluster key file (from 'mesh-amb keygen'): sign our advertisements
    /// and accept only signed ones, and speak mutual TLS with other
    /// ambassadors through a CA every holder of the key derives. Must be
    /// readable by its owner only.
    #[arg(long, value_name = "FILE", env = "MESH_AMB_CLUSTER_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_key: Option<PathBuf>,

    /// This node's TLS certificate chain (PEM), from an existing PKI;
    /// with --tls-key and --tls-ca, used instead of the cluster CA.
    #[arg(long, value_name = "FILE", env = "MESH_AMB_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM; owner-only permissions).
    #[arg(long, value_name = "FILE", env = "MESH_AMB_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that other ambassadors' certificates must
    /// chain to.
    #[arg(long, value_name = "FILE", env = "MESH_AMB_TLS_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,

    /// With TLS on (--cluster-key or --tls-*), still use discovered
    /// instances that offer no TLS, and dial static backends written
    /// without tls:// off this host without a warning (they are dialed in
    /// plain TCP either way: what the user typed). Their traffic crosses the
    /// network in clear.
    #[arg(long, env = "MESH_AMB_ALLOW_PLAINTEXT", value_parser = BoolishValueParser::new())]
    pub allow_plaintext: bool,

    /// Serve the read-only admin endpoint here: the stats page at /,
    /// Prometheus metrics at /metrics, JSON at /api/v1/status, /healthz.
    /// A PORT alone listens on loopback; give 0.0.0.0:PORT to expose it.
    /// Off unless given.
    #[arg(long, value_name = "[ADDR:]PORT", env = "MESH_AMB_ADMIN")]
    pub admin: Option<AdminAddr>,

    /// Log line format. Filter with RUST_LOG (e.g. RUST_LOG=mesh_amb=debug).
    #[arg(long, value_enum, env = "MESH_AMB_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines look; a concern of the binary only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `--balance`: the policy names as possible values (listed by `--help` and
/// in errors), turned into a [`Policy`] by its `FromStr`.
fn policy_parser() -> impl clap::builder::TypedValueParser<Value = Policy> {
    PossibleValuesParser::new(Policy::ALL.map(Policy::name)).try_map(|s| s.parse::<Policy>())
}

/// A clap error as one line. A value that its type rejected reads like
/// every other bad value, `--flag 'value': why`; anything else keeps
/// clap's wording, joined onto one line.
pub fn error_line(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::ValueValidation {
        let arg = e.get(ContextKind::InvalidArg);
        let value = e.get(ContextKind::InvalidValue);
        let why = std::error::Error::source(e);
        if let (Some(ContextValue::String(arg)), Some(ContextValue::String(value)), Some(why)) =
            (arg, value, why)
        {
            let flag = arg.split(' ').next().unwrap_or(arg);
            return format!("{flag} '{value}': {why}");
        }
    }
    one_line(&e.render().to_string())
}

/// clap spreads an error over several lines (hints, usage); keep the ones
/// that carry information, on one line.
fn one_line(rendered: &str) -> String {
    let line = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}
