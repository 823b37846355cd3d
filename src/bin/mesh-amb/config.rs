//! Flags + environment + TOML file -> one validated [`Config`].
//!
//! Precedence, highest first: command-line flags, `MESH_AMB_*` environment
//! variables, the `--config` file, built-in defaults. A list given on the
//! command line (or its environment variable) replaces the file's list rather
//! than merging with it, so what is running is always what one source says.
//! `--from-env` consumes are added on top. Every error is a single line that
//! names the offending value; the binary exits 2 on it.
//!
//! The layering knows no setting by name. clap parses flags, scalar
//! variables and defaults into [`RunArgs`] and says, per setting, whether
//! the user gave it ([`ArgMatches::value_source`]). Those settings are
//! written to a TOML table; a list's variable, then the file's key, replace
//! each setting the user did not give; the table is read back into
//! `RunArgs`. Every value from the file or a list variable is first checked
//! alone, by the same `Deserialize` (hence `FromStr`) as its flag, so its
//! error names it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args as _};
use toml::{Spanned, Table, Value};

use mesh_amb::files;
use mesh_amb::security::ClusterKey;
use mesh_amb::settings::{
    Config, DiscoverySettings, NodeId, PkiFiles, ProxySettings, SecuritySettings, SettingsError,
};
use mesh_amb::spec;

use crate::cli::{LogFormat, RunArgs};

/// Everything the binary runs with: the library's [`Config`] and what only
/// the binary uses.
#[derive(Debug)]
pub struct Resolved {
    /// What the library runs.
    pub config: Config,
    /// Log line format, applied before anything runs.
    pub log_format: LogFormat,
    /// Where to serve the admin endpoint, if anywhere.
    pub admin: Option<SocketAddr>,
}

/// A configuration error: one line, naming the offending value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Reads the environment once so that tests can pass their own. clap reads
/// the scalar settings' variables itself, from the process.
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

/// Builds the settings from what clap parsed (`args`, with `matches` saying
/// where each value came from), the `--config` file and `env`.
pub fn resolve(
    args: RunArgs,
    matches: &ArgMatches,
    env: &dyn Env,
) -> Result<Resolved, ConfigError> {
    let file = args.config.as_deref().map(File::load).transpose()?;
    let parsed = match Value::try_from(&args) {
        Ok(Value::Table(t)) => t,
        other => return Err(bad(format!("internal error: settings as TOML: {other:?}"))),
    };
    let known = settings();
    // Every key of the file is checked, even one a flag overrides: a typo
    // is an error wherever it is.
    if let Some(file) = &file {
        let mut entries: Vec<_> = file.entries.iter().collect();
        entries.sort_by_key(|(_, value)| value.span().start);
        for (key, value) in entries {
            check(&parsed, key, value.get_ref()).map_err(|r| {
                let at = file.at(value);
                match known.iter().any(|s| s.key == *key) {
                    true => bad(format!("{at}: {key} '{}': {}", r.shown, r.why)),
                    false => bad(format!("{at}: {}", r.why)),
                }
            })?;
        }
    }
    let mut merged = parsed.clone();
    for setting in &known {
        let key = setting.key.as_str();
        if matches!(
            matches.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        if let Some((var, items)) = setting.list.then(|| env_list(env, key)).flatten() {
            check(&parsed, key, &items).map_err(|r| {
                bad(format!(
                    "{} '{}' (from {var}): {}",
                    setting.flag, r.shown, r.why
                ))
            })?;
            merged.insert(key.to_owned(), items);
        } else if let Some(value) = file.as_ref().and_then(|f| f.entries.get(key)) {
            merged.insert(key.to_owned(), value.get_ref().clone());
        }
    }
    let args: RunArgs = Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| {
            bad(format!("internal error: merged settings: {}", e.message()))
        })?;
    into_settings(args, env)
}

/// A setting that the file and the environment can give.
struct Setting {
    /// The file's key, clap's id: the field name.
    key: String,
    /// The long flag, to name a list's bad item from its variable.
    flag: String,
    /// Takes several values (a repeatable flag).
    list: bool,
}

/// Every argument but `--config` itself.
fn settings() -> Vec<Setting> {
    let cmd = RunArgs::augment_args(clap::Command::new("mesh-amb"));
    cmd.get_arguments()
        .filter(|a| a.get_id() != "config")
        .map(|a| Setting {
            key: a.get_id().to_string(),
            flag: format!("--{}", a.get_long().unwrap_or(a.get_id().as_str())),
            list: matches!(a.get_action(), ArgAction::Append),
        })
        .collect()
}

/// A list's environment variable, `MESH_AMB_<KEY>`, as a TOML array of
/// its whitespace-separated items; `None` if unset or empty.
fn env_list(env: &dyn Env, key: &str) -> Option<(String, Value)> {
    let var = format!("MESH_AMB_{}", key.to_ascii_uppercase());
    let items: Vec<Value> = env
        .var(&var)?
        .split_whitespace()
        .map(|s| Value::String(s.to_owned()))
        .collect();
    (!items.is_empty()).then_some((var, Value::Array(items)))
}

/// Why one value was refused, and the part of it to show.
struct Rejected {
    /// The offending value, or item of a list, as the user wrote it.
    shown: String,
    /// What is wrong with it, one line.
    why: String,
}

/// Checks `value` as setting `key` alone: the clap-parsed settings (all
/// valid) with only that key replaced must read back. For a list, the
/// first bad item is the one named.
fn check(parsed: &Table, key: &str, value: &Value) -> Result<(), Rejected> {
    let read = |v: &Value| {
        let mut t = parsed.clone();
        t.insert(key.to_owned(), v.clone());
        Value::Table(t)
            .try_into::<RunArgs>()
            .map(drop)
            .map_err(|e| e.message().replace('\n', " "))
    };
    let Err(why) = read(value) else {
        return Ok(());
    };
    if let Value::Array(items) = value {
        for item in items {
            if let Err(why) = read(&Value::Array(vec![item.clone()])) {
                let shown = show(item);
                return Err(Rejected { shown, why });
            }
        }
    }
    let shown = show(value);
    Err(Rejected { shown, why })
}

/// A value as the user wrote it, near enough: strings without quotes.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Table(_) => "{...}".to_owned(),
    }
}

/// The `--config` file: its keys, each with where it is.
struct File {
    /// As given, to name the file in errors.
    path: PathBuf,
    /// The text, to turn a value's byte offset into a line number.
    text: String,
    /// Top-level keys and their values, with where each value is.
    entries: BTreeMap<String, Spanned<Value>>,
}

/// Largest config file read: a few hundred bytes make a node, and more
/// than this is some other file named by mistake.
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

impl File {
    fn load(path: &Path) -> Result<File, ConfigError> {
        let bytes =
            files::read(path, MAX_CONFIG_FILE).map_err(|e| bad(format!("config file: {e}")))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| bad(format!("config file {}: not UTF-8 text", path.display())))?;
        let entries = toml::from_str(&text).map_err(|e| {
            // toml's message spans several lines (a source excerpt); keep
            // the first, and add the location.
            let first = e.message().lines().next().unwrap_or("invalid TOML");
            let at = e.span().map(|s| line_of(&text, s.start));
            bad(format!(
                "config file {}{}: {first}",
                path.display(),
                in_line(at)
            ))
        })?;
        Ok(File {
            path: path.to_owned(),
            text,
            entries,
        })
    }

    /// "config file F (line N)", for an error about `value`.
    fn at(&self, value: &Spanned<Value>) -> String {
        let line = line_of(&self.text, value.span().start);
        format!("config file {}{}", self.path.display(), in_line(Some(line)))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn in_line(line: Option<usize>) -> String {
    line.map(|n| format!(" (line {n})")).unwrap_or_default()
}

/// The merged, typed settings as the library's [`Config`], plus from-env
/// consumes and the checks across values. The destructuring is exhaustive
/// so that a new flag does not compile until it is used here.
fn into_settings(args: RunArgs, env: &dyn Env) -> Result<Resolved, ConfigError> {
    let RunArgs {
        consume,
        provide,
        bind,
        from_env,
        config: _,
        balance,
        max_connections,
        connect_timeout,
        connect_attempts,
        wait_for_backend,
        idle_timeout,
        drain_timeout,
        eject_time,
        tcp_keepalive,
        tcp_keepalive_interval,
        tcp_keepalive_probes,
        tcp_user_timeout,
        half_close_timeout,
        interface,
        advertise_addr,
        node_id,
        check_interval,
        rise,
        fall,
        drain_period,
        backend_check,
        credentials,
        login_timeout,
        cluster_key,
        tls_cert,
        tls_key,
        tls_ca,
        allow_plaintext,
        admin,
        log_format,
    } = args;
    let mut consumes = consume;
    if from_env {
        let linked =
            spec::consumes_from_env(env.vars()).map_err(|e| bad(format!("--from-env: {e}")))?;
        consumes.extend(linked);
    }
    let config =
        Config {
            bind: bind.into(),
            consumes,
            provides: provide,
            proxy: ProxySettings {
                policy: balance,
                max_connections: max_connections.into(),
                connect_timeout: connect_timeout.into(),
                connect_attempts: connect_attempts.into(),
                login_timeout: login_timeout.into(),
                wait_for_backend: wait_for_backend.into(),
                idle_timeout: idle_timeout.into(),
                drain_timeout: drain_timeout.into(),
                eject_time: eject_time.into(),
                tcp_keepalive: tcp_keepalive.into(),
                tcp_keepalive_interval: tcp_keepalive_interval.into(),
                tcp_keepalive_probes: tcp_keepalive_probes.into(),
                tcp_user_timeout: tcp_user_timeout.into(),
                half_close_timeout: half_close_timeout.into(),
            },
            discovery: DiscoverySettings {
                probe: node_id.is_some(),
                node_id: node_id.unwrap_or_else(NodeId::random).into(),
                interfaces: interface,
                advertise_addrs: advertise_addr.into_iter().map(IpAddr::from).collect(),
                check_interval: check_interval.into(),
                rise: rise.into(),
                fall: fall.into(),
                drain_period: drain_period.into(),
                backend_check: backend_check.into(),
            },
            security: SecuritySettings {
                cluster_key: cluster_key
                    .map(|path| ClusterKey::load(&path).map(Arc::new))
                    .transpose()
                    .map_err(|e| bad(format!("--cluster-key: {e}")))?,
                pki: match (tls_cert, tls_key, tls_ca) {
                    (Some(cert), Some(key), Some(ca)) => Some(PkiFiles { cert, key, ca }),
                    (None, None, None) => None,
                    _ => return Err(bad(
                        "--tls-cert, --tls-key and --tls-ca go together: give all three or none",
                    )),
                },
                allow_plaintext,
                credentials: credentials
                    .iter()
                    .map(|c| c.load().map(Arc::new))
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(format!("--credentials: {e}")))?,
            },
        };
    config.validate().map_err(settings_error)?;
    // Reads the PKI files now, so that a wrong one is a usage error.
    if let Some(pki) = &config.security.pki {
        pki.check().map_err(|e| bad(format!("{e:#}")))?;
    }
    Ok(Resolved {
        config,
        log_format,
        admin: admin.map(|a| a.0),
    })
}

/// A settings error in the words of the command line: the flag it names.
fn settings_error(e: SettingsError) -> ConfigError {
    match e {
        SettingsError::Value {
            setting,
            value,
            reason,
        } => bad(format!(
            "--{} '{value}': {reason}",
            setting.replace('_', "-")
        )),
        other => bad(other.to_string()),
    }
}

/// [`Config::check_host`]: at start and by `--check` only (see there).
pub fn check_host(config: &Config) -> Result<(), ConfigError> {
    config.check_host().map_err(settings_error)
}

/// The listener of `config` that the admin endpoint at `admin` would
/// collide with, found before anything is bound (`--check` would pass it
/// otherwise): a consume on an overlapping address, or a TLS terminator,
/// which listens on every address. Checked at start only: a reload keeps
/// the endpoint where it is, and binds a new listener before it applies.
pub fn admin_port_taken(config: &Config, admin: SocketAddr) -> Option<String> {
    let overlaps =
        |ip: IpAddr| ip == admin.ip() || ip.is_unspecified() || admin.ip().is_unspecified();
    let consume = (config.consumes.iter())
        .find(|c| c.port == admin.port() && overlaps(config.bind))
        .map(|c| format!("--consume {c}"));
    let terminator = (config.provides.iter())
        .find(|p| p.tls_port == Some(admin.port()))
        .map(|p| format!("the TLS terminator of --provide {p}"));
    consume.or(terminator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory as _;
    use mesh_amb::backends::balance::Policy;
    use mesh_amb::settings::*;
    use std::io::Write;
    use std::time::Duration;

    /// The binary's path from argv to settings, with `env` for the list
    /// variables and `--from-env` (clap reads scalar variables from the
    /// process, which these tests leave alone).
    fn resolve_env(argv: &[&str], env: &[(&str, &str)]) -> Result<Resolved, ConfigError> {
        let (cli, matches) =
            Cli::parse_from_argv(std::iter::once("mesh-amb").chain(argv.iter().copied()))
                .map_err(|e| bad(crate::cli::error_line(&e)))?;
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        super::resolve(cli.run, &matches, &env)
    }

    fn resolve(argv: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        resolve_env(argv, env).map(|s| s.config)
    }

    fn temp_toml(body: &str) -> tempfile_lite::TempFile {
        let f = tempfile_lite::TempFile::new("toml");
        std::fs::File::create(&f.path)
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        f
    }

    /// A throwaway file holding a secret: readable by its owner only.
    fn temp_secret(body: &str) -> tempfile_lite::TempFile {
        use std::os::unix::fs::PermissionsExt;
        let f = temp_toml(body);
        std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o600)).unwrap();
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
        let s = resolve_env(&["--consume", "redis:7379=127.0.0.1:6379"], &[]).unwrap();
        let c = s.config;
        assert_eq!(c.bind.to_string(), "127.0.0.1");
        assert_eq!(c.consumes.len(), 1);
        assert_eq!(c.proxy.policy, Policy::P2c);
        assert_eq!(c.proxy.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.proxy.idle_timeout, None);
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(c.discovery.check_interval, DEFAULT_CHECK_INTERVAL);
        assert!(c.discovery.interfaces.is_empty());
        assert_eq!(c.discovery.node_id.len(), 8);
        assert!(!c.discovery.probe);
    }

    /// clap's defaults and the library's `Default`s are the same values:
    /// both come from the library's constants.
    #[test]
    fn command_line_defaults_are_the_library_defaults() {
        let c = resolve(&[], &[]).unwrap();
        assert_eq!(c.bind, DEFAULT_BIND);
        assert_eq!(
            format!("{:?}", c.proxy),
            format!("{:?}", ProxySettings::default())
        );
        let (got, want) = (c.discovery, DiscoverySettings::default());
        assert_eq!(got.probe, want.probe);
        assert_eq!(got.interfaces, want.interfaces);
        assert_eq!(got.advertise_addrs, want.advertise_addrs);
        assert_eq!(got.check_interval, want.check_interval);
        assert_eq!((got.rise, got.fall), (want.rise, want.fall));
        assert_eq!(got.drain_period, want.drain_period);
        assert_eq!(got.backend_check, want.backend_check);
    }

    #[test]
    fn help_prints_the_library_defaults() {
        let help = Cli::command().render_long_help().to_string();
        let flags: &[(&str, String)] = &[
            ("--bind", DEFAULT_BIND.to_string()),
            ("--balance", Policy::default().to_string()),
            ("--max-connections", DEFAULT_MAX_CONNECTIONS.to_string()),
            (
                "--connect-timeout",
                Period(DEFAULT_CONNECT_TIMEOUT).to_string(),
            ),
            ("--connect-attempts", DEFAULT_CONNECT_ATTEMPTS.to_string()),
            ("--login-timeout", Period(DEFAULT_LOGIN_TIMEOUT).to_string()),
            (
                "--wait-for-backend",
                Wait(DEFAULT_WAIT_FOR_BACKEND).to_string(),
            ),
            ("--idle-timeout", "off".to_owned()),
            ("--drain-timeout", Wait(DEFAULT_DRAIN_TIMEOUT).to_string()),
            ("--eject-time", Period(DEFAULT_EJECT_TIME).to_string()),
            (
                "--check-interval",
                Period(DEFAULT_CHECK_INTERVAL).to_string(),
            ),
            ("--rise", DEFAULT_RISE.to_string()),
            ("--fall", DEFAULT_FALL.to_string()),
            ("--drain-period", Wait(DEFAULT_DRAIN_PERIOD).to_string()),
            ("--backend-check", "off".to_owned()),
        ];
        for (flag, default) in flags {
            // The flag's entry runs from its name to the next flag.
            let start = help
                .find(&format!("{flag} <"))
                .unwrap_or_else(|| panic!("{flag} not in help"));
            let entry = &help[start..];
            let entry = &entry[..entry[2..].find("\n      --").map_or(entry.len(), |e| e + 2)];
            assert!(
                entry.contains(&format!("[default: {default}]")),
                "{flag}: {entry}"
            );
        }
        assert!(help.contains("[default: 10000]"), "{help}");
        assert!(help.contains("[default: 1s]"), "{help}");
        assert!(!help.contains("[default: ]"), "{help}");
    }

    /// A scalar's variable is `MESH_AMB_` + its key in capitals, as a
    /// list's variable is (`env_list`), so users can guess every name.
    #[test]
    fn every_variable_is_named_after_its_key() {
        let cmd = Cli::command();
        for a in cmd.get_arguments() {
            let key = a.get_id().as_str().to_ascii_uppercase();
            if let Some(var) = a.get_env() {
                assert_eq!(var.to_str().unwrap(), format!("MESH_AMB_{key}"));
            } else {
                let list = matches!(a.get_action(), ArgAction::Append);
                // Modes of the command, not settings: a variable left in
                // a unit's environment would turn every start into one.
                let builtin = ["HELP", "VERSION", "CHECK"].contains(&key.as_str());
                assert!(list || builtin, "{key} has no environment variable");
            }
        }
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
        assert!(c.discovery.probe);
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
                "config file: cannot read /nonexistent/mesh.toml",
            ),
            (
                &[],
                &[("MESH_AMB_CONSUME", "a:1=h:1 b:oops")],
                "--consume 'b:oops' (from MESH_AMB_CONSUME)",
            ),
            (
                &[],
                &[("MESH_AMB_ADVERTISE_ADDR", "127.0.0.1 nope")],
                "--advertise-addr 'nope' (from MESH_AMB_ADVERTISE_ADDR): not an IP",
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
            (&["--balance", "fastest"], &[], "'fastest'"),
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
    fn file_durations_may_be_bare_seconds() {
        let f = temp_toml(
            "consume = [\"a:7379=127.0.0.1:6379\"]\nconnect_timeout = 5\nidle_timeout = 600\ndrain_timeout = 0\n",
        );
        let c = resolve_env(&["--config", f.path.to_str().unwrap()], &[])
            .unwrap()
            .config;
        assert_eq!(c.proxy.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.proxy.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(c.proxy.drain_timeout, Duration::ZERO);
        let f = temp_toml("connect_timeout = 0\n");
        let e = resolve_env(&["--config", f.path.to_str().unwrap()], &[])
            .expect_err("zero")
            .to_string();
        assert!(
            e.contains("connect_timeout '0': must be greater than zero"),
            "{e}"
        );
    }

    #[test]
    fn file_settings_and_flag_precedence() {
        let f = temp_toml(
            r#"
bind = "0.0.0.0"
balance = "round-robin"
consume = ["redis:7379=127.0.0.1:6379", "api:8080"]
provide = ["web:80"]
max_connections = 5000
connect_timeout = "250ms"
idle_timeout = "5m"
log_format = "json"
"#,
        );
        let path = f.path.to_str().unwrap();
        let s = resolve_env(&["--config", path], &[]).unwrap();
        let c = s.config;
        assert_eq!(c.bind.to_string(), "0.0.0.0");
        assert_eq!(c.proxy.policy, Policy::RoundRobin);
        assert_eq!(c.consumes.len(), 2);
        assert_eq!(c.provides.len(), 1);
        assert_eq!(c.proxy.max_connections, 5000);
        assert_eq!(c.proxy.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.proxy.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(s.log_format, LogFormat::Json);

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

    /// Flag > environment > file > default, for a scalar and for a list.
    /// (A scalar's variable is read by clap from the process, which these
    /// tests share: `flags_beat_the_environment_which_beats_the_file` in
    /// tests/cli.rs covers it with a real process.)
    #[test]
    fn precedence_for_a_scalar_and_a_list() {
        let f = temp_toml("connect_attempts = 7\nprovide = [\"file:1\"]\n");
        let file = f.path.to_str().unwrap();
        let env = [("MESH_AMB_PROVIDE", "env:2 env2:3")];
        let provides =
            |c: &Config| -> Vec<String> { c.provides.iter().map(|p| p.name.clone()).collect() };
        fn with<'a>(file: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
            let mut argv = vec!["--config", file];
            argv.extend_from_slice(extra);
            argv
        }

        // Defaults.
        let c = resolve(&[], &[]).unwrap();
        assert_eq!(c.proxy.connect_attempts, DEFAULT_CONNECT_ATTEMPTS as usize);
        assert!(c.provides.is_empty());
        // The file over defaults.
        let c = resolve(&with(file, &[]), &[]).unwrap();
        assert_eq!(c.proxy.connect_attempts, 7);
        assert_eq!(provides(&c), ["file"]);
        // The environment over the file.
        let c = resolve(&with(file, &[]), &env).unwrap();
        assert_eq!(provides(&c), ["env", "env2"]);
        assert_eq!(c.proxy.connect_attempts, 7);
        // Flags over everything.
        let c = resolve(
            &with(file, &["--connect-attempts", "9", "--provide", "flag:4"]),
            &env,
        )
        .unwrap();
        assert_eq!(c.proxy.connect_attempts, 9);
        assert_eq!(provides(&c), ["flag"]);
        // A flag equal to the default still wins over the file.
        let c = resolve(
            &with(
                file,
                &["--connect-attempts", &DEFAULT_CONNECT_ATTEMPTS.to_string()],
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.proxy.connect_attempts, DEFAULT_CONNECT_ATTEMPTS as usize);
    }

    /// Every setting read from the file gives what the same text gives as
    /// a flag: one parser per value, whatever the source.
    #[test]
    fn the_file_and_the_flags_agree_on_every_setting() {
        let settings: &[(&str, &str)] = &[
            ("consume", "redis:7379=127.0.0.1:6379,[::1]:6380*2"),
            ("provide", "web:80*3"),
            ("bind", "::1"),
            ("balance", "random"),
            ("max_connections", "123"),
            ("connect_timeout", "1m 30s"),
            ("connect_attempts", "5"),
            ("idle_timeout", "10m"),
            ("drain_timeout", "0s"),
            ("eject_time", "3s"),
            ("interface", "lo"),
            ("advertise_addr", "127.0.0.1"),
            ("node_id", "Node-1"),
            ("check_interval", "250ms"),
            ("rise", "4"),
            ("fall", "6"),
            ("drain_period", "100ms"),
            ("backend_check", "2s"),
            ("log_format", "json"),
        ];
        let lists = ["consume", "provide", "interface", "advertise_addr"];
        let mut argv = vec!["--from-env".to_owned()];
        let mut toml = "from_env = true\n".to_owned();
        for (key, value) in settings {
            argv.push(format!("--{}={value}", key.replace('_', "-")));
            toml += &match lists.contains(key) {
                true => format!("{key} = [\"{value}\"]\n"),
                false => format!("{key} = \"{value}\"\n"),
            };
        }
        let f = temp_toml(&toml);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let env = [("CACHE_PORT_9_TCP", "tcp://10.0.0.1:9")];
        let from_flags = resolve_env(&argv, &env).unwrap();
        let from_file = resolve_env(&["--config", f.path.to_str().unwrap()], &env).unwrap();
        assert_eq!(
            format!("{from_flags:?}"),
            format!("{from_file:?}"),
            "{toml}"
        );
        let c = &from_file.config;
        assert_eq!(c.consumes.len(), 2, "the file's consume and the link");
        assert_eq!(c.proxy.connect_timeout, Duration::from_secs(90));
        assert_eq!(c.proxy.drain_timeout, Duration::ZERO);
        assert_eq!(c.discovery.node_id, "node-1");
        assert!(c.discovery.probe);
        assert_eq!(from_file.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_files_name_the_problem() {
        for (body, want) in [
            ("bnid = \"0.0.0.0\"\n", "unknown field `bnid`"),
            ("consume = \"redis:1\"\n", "invalid type"),
            ("consume = [\"redis:0\"]\n", "consume 'redis:0': port 0"),
            (
                "consume = [\"a:1\", \"b:0\"]\n",
                "(line 1): consume 'b:0': port 0",
            ),
            ("balance = \"fastest\"\n", "unknown variant `fastest`"),
            (
                "\nmax_connections = 0\n",
                "(line 2): max_connections '0': expected a number from 1 to 1000000",
            ),
            (
                "rise = \"x\"\n",
                "rise 'x': expected a number from 1 to 100",
            ),
            (
                "connect_timeout = \"soon\"\n",
                "connect_timeout 'soon': not a duration",
            ),
            ("config = \"other.toml\"\n", "unknown field `config`"),
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
        // A bad key is an error even where a flag overrides it.
        let f = temp_toml("bind = \"nowhere\"\n");
        let e = resolve(
            &["--config", f.path.to_str().unwrap(), "--bind", "::1"],
            &[],
        )
        .expect_err("bad bind in the file")
        .to_string();
        assert!(e.contains("bind 'nowhere': not an IP"), "{e}");
    }

    /// `--credentials` from a flag, its variable and the file, all the
    /// same; the secret is in no `Debug` of the settings.
    #[test]
    fn credentials_from_every_source_never_shown() {
        const PASSWORD: &str = "pw-config-never-shown";
        let pass = temp_secret(&format!("{PASSWORD}\n"));
        let spec = format!("cache=redis:{}", pass.path.display());
        let consume = "cache:7379=127.0.0.1:6379";
        let f = temp_toml(&format!(
            "consume = [\"{consume}\"]\ncredentials = [\"{spec}\"]\n"
        ));
        let file = f.path.to_str().unwrap();
        for (argv, env) in [
            (vec!["--consume", consume, "--credentials", &spec], vec![]),
            (
                vec!["--consume", consume],
                vec![("MESH_AMB_CREDENTIALS", spec.as_str())],
            ),
            (vec!["--config", file], vec![]),
        ] {
            let r = resolve_env(&argv, &env).unwrap();
            let creds = &r.config.security.credentials;
            assert_eq!(creds.len(), 1, "{argv:?}");
            assert_eq!(creds[0].spec.to_string(), spec);
            let shown = format!("{r:?}");
            assert!(shown.contains(pass.path.to_str().unwrap()), "{shown}");
            assert!(!shown.contains(PASSWORD), "{shown}");
        }

        let other = temp_secret("another\n");
        let twice = format!("cache=redis:{}", other.path.display());
        let cases: &[(&[&str], &str)] = &[
            (&["--credentials", &spec], "--credentials 'cache=redis:"),
            (
                &[
                    "--consume",
                    consume,
                    "--credentials",
                    &spec,
                    "--credentials",
                    &twice,
                ],
                "two sets of credentials for 'cache'",
            ),
            (
                &["--consume", consume, "--credentials", "cache=redis"],
                "expected NAME=PROTOCOL:FILE",
            ),
        ];
        for (argv, want) in cases {
            let e = resolve(argv, &[]).expect_err(want).to_string();
            assert!(e.contains(want), "{argv:?}: {e}");
            assert!(!e.contains(PASSWORD) && !e.contains("another"), "{e}");
        }
        let e = resolve(&["--credentials", &spec], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("'cache' is not a consumed service (no --consume cache:PORT)"),
            "{e}"
        );
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
