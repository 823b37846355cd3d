//! What the user typed: clap definitions only. Turning this into a validated
//! [`Config`](crate::config::Config) is `config`'s job, so that flags, the
//! TOML file and the environment share one set of checks and error messages.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A masterless discovery mesh of ambassadors: local TCP proxies that stand
/// in for remote services.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a self-contained demonstration on this machine and exit.
    Demo,
}

/// Flags of the main job. Every setting is optional here so that an absent
/// flag can fall back to the config file, then to the default.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// Stand in for a service: listen on PORT and forward to the given
    /// backends (HOST:PORT[*WEIGHT], comma-separated) or, without them, to
    /// the discovered providers of NAME. Repeatable. Env: MESH_AMB_CONSUME
    /// (whitespace-separated specs).
    #[arg(long, value_name = "NAME:PORT[=HOST:PORT,...]")]
    pub consume: Vec<String>,

    /// Offer the local service listening on PORT to the mesh as NAME.
    /// Repeatable. Env: MESH_AMB_PROVIDE (whitespace-separated specs).
    #[arg(long, value_name = "NAME:PORT")]
    pub provide: Vec<String>,

    /// Address the consume listeners bind to; 0.0.0.0 for a container
    /// ambassador. [default: 127.0.0.1]
    #[arg(long, value_name = "ADDR", env = "MESH_AMB_BIND")]
    pub bind: Option<String>,

    /// Add a static consume for every Docker-link variable of the form
    /// <NAME>_PORT_<P>_TCP=tcp://<ip>:<port>.
    #[arg(long, env = "MESH_AMB_FROM_ENV")]
    pub from_env: bool,

    /// TOML file with the same settings; flags override it.
    #[arg(long, value_name = "FILE", env = "MESH_AMB_CONFIG")]
    pub config: Option<PathBuf>,

    /// How new connections are spread over backends. [default: p2c]
    #[arg(long, value_enum, env = "MESH_AMB_BALANCE")]
    pub balance: Option<crate::balance::Policy>,

    /// Most client connections open at once; further clients wait in the
    /// kernel's accept queue. [default: 10000]
    #[arg(long, value_name = "N", env = "MESH_AMB_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,

    /// Give up on one backend after this long, then try the next (e.g. 1s,
    /// 500ms). [default: 1s]
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<String>,

    /// Backends tried per client connection before it is closed. [default: 3]
    #[arg(long, value_name = "N", env = "MESH_AMB_CONNECT_ATTEMPTS")]
    pub connect_attempts: Option<String>,

    /// Close a connection after this long without traffic either way ("off"
    /// disables). [default: off]
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,

    /// On SIGINT/SIGTERM, how long open connections may take to finish.
    /// [default: 30s]
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,

    /// First ejection of a backend that failed to connect; doubles with each
    /// failure in a row. [default: 1s]
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_EJECT_TIME")]
    pub eject_time: Option<String>,

    /// Advertise and listen for mDNS only on this interface (repeatable).
    /// In a Vagrant VM, name the private network, never the NAT adapter.
    /// Env: MESH_AMB_INTERFACE (whitespace-separated). [default: all]
    #[arg(long, value_name = "IFACE")]
    pub interface: Vec<String>,

    /// Advertise exactly this address of the host (repeatable). Env:
    /// MESH_AMB_ADVERTISE_ADDR (whitespace-separated). [default: every
    /// address of the chosen interfaces]
    #[arg(long, value_name = "ADDR")]
    pub advertise_addr: Vec<String>,

    /// This node's id in instance and host names (letters, digits, '-').
    /// [default: random per start]
    #[arg(long, value_name = "ID", env = "MESH_AMB_NODE_ID")]
    pub node_id: Option<String>,

    /// How often a provider checks that its local service accepts
    /// connections. [default: 500ms]
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_CHECK_INTERVAL")]
    pub check_interval: Option<String>,

    /// Successful checks in a row before a provider advertises again.
    /// [default: 2]
    #[arg(long, value_name = "N", env = "MESH_AMB_RISE")]
    pub rise: Option<String>,

    /// Failed checks in a row before a provider withdraws. [default: 2]
    #[arg(long, value_name = "N", env = "MESH_AMB_FALL")]
    pub fall: Option<String>,

    /// On SIGINT/SIGTERM, how long a provider advertises itself as draining
    /// before it says goodbye. [default: 2s]
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_DRAIN_PERIOD")]
    pub drain_period: Option<String>,

    /// Consumers also check every discovered backend this often ("off"
    /// disables); catches a crashed provider without waiting for a client.
    /// [default: off]
    #[arg(long, value_name = "DURATION", env = "MESH_AMB_BACKEND_CHECK")]
    pub backend_check: Option<String>,

    /// Log line format. Filter with RUST_LOG (e.g. RUST_LOG=debug).
    /// [default: text]
    #[arg(long, value_enum, env = "MESH_AMB_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}
