//! The `mesh-amb` binary: parse, configure, run, map errors to exit codes
//! (2 for bad input, 1 for runtime failures).
//!
//! - `cli`: the typed command line (clap), defaults from the library.
//! - `config`: flags > `MESH_AMB_*` environment > TOML file > defaults,
//!   into the library's validated `Config`.
//! - `check`: the summary `mesh-amb --check` prints.
//! - `demo`: the self-contained demonstration behind `mesh-amb demo`.
//! - `ls`: `mesh-amb ls`, what the link advertises.
//! - `status`: `mesh-amb status`, a running node's tables from its admin
//!   endpoint.
//! - `columns`: aligned text tables for both.
//! - `reload`: SIGHUP reads the settings again and applies them.

mod check;
mod cli;
mod columns;
mod config;
mod demo;
mod ls;
mod reload;
mod status;

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::error::ErrorKind;
use clap::CommandFactory as _;
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Directive;
use tracing_subscriber::EnvFilter;

use mesh_amb::net::sockopt;
use mesh_amb::settings::Config;
use mesh_amb::{Node, Shutdown};

use crate::cli::{Cli, Command, LogFormat};
use crate::config::ProcessEnv;

/// `eprintln!` that gives up quietly when stderr is gone (a closed pipe)
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let (cli, matches) = match Cli::parse_from_argv(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => return usage_error(&cli::error_line(&e)),
    };
    match cli.command {
        Some(Command::Demo(args)) => {
            let (log_path, log) = match demo::open_log() {
                Ok(l) => l,
                Err(e) => {
                    say!("error: cannot create the demo's log file: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            // Bound before the move into the demo's namespace, so that it
            // stays in the user's, where a browser reaches it.
            let admin = match args.admin.map(|a| mesh_amb::admin::bind(a.0)).transpose() {
                Ok(l) => l,
                Err(e) => {
                    say!("error: cannot listen for the stats page (--admin): {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            // Before any thread exists: a user namespace needs that.
            let isolation = match demo::isolate_network() {
                Ok(i) => i,
                Err(e) => {
                    say!("error: cannot set up the demo's private network namespace: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            // The story goes to stdout; the nodes' logs, which would break
            // it up, to their file.
            init_file_logs(log);
            report(
                runtime().and_then(|rt| rt.block_on(demo::run(isolation, &args, &log_path, admin))),
            )
        }
        Some(Command::Keygen { file }) => keygen(&file),
        Some(Command::Ls(args)) => failure(ls::run(args)),
        Some(Command::Status(args)) => failure(status::run(args)),
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mesh-amb", &mut script);
            print_out(&script)
        }
        Some(Command::Man) => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => print_out(&page),
                Err(e) => report(Err(e.into())),
            }
        }
        None => {
            let source = match &cli.run.config {
                Some(file) => file.display().to_string(),
                None => "flags and environment".to_owned(),
            };
            let config::Resolved {
                config,
                log_format: format,
                admin,
            } = match config::resolve(cli.run.clone(), &matches, &ProcessEnv) {
                Ok(r) => r,
                Err(e) => return usage_error(&e.to_string()),
            };
            if config.consumes.is_empty() && config.provides.is_empty() {
                return usage_error(
                    "nothing to do: give --consume or --provide (see --help), or try 'mesh-amb demo'",
                );
            }
            if let Err(e) = config::check_host(&config) {
                return usage_error(&e.to_string());
            }
            if let Some(a) = admin {
                if let Some(taken) = config::admin_port_taken(&config, a) {
                    return usage_error(&format!("--admin {a}: the port of {taken}"));
                }
            }
            if cli.check {
                let mut out = format!("configuration ok ({source}); it would run:\n");
                out.push_str(&check::summary(&config));
                if let Some(addr) = admin {
                    out.push_str(&format!(
                        "admin: the stats page at http://{addr}/, /metrics, /api/v1/status\n"
                    ));
                }
                out.push_str("nothing listened or was advertised (--check)\n");
                return print_out(out.as_bytes());
            }
            init_logs(format, "info");
            protect_secrets(&config);
            let source = reload::Source {
                args: cli.run,
                matches,
                log_format: format,
                admin,
            };
            let result = runtime().and_then(|rt| {
                let result = rt.block_on(serve(config, source));
                // The node is done; a reload still reading a pipe would
                // hold a plain drop, which waits for it.
                rt.shutdown_background();
                result
            });
            if let (LogFormat::Json, Err(e)) = (format, &result) {
                // Keep a JSON log parseable to the last line.
                tracing::error!(error = %format!("{e:#}"), "exiting");
                return ExitCode::from(EXIT_RUNTIME);
            }
            report(result)
        }
    }
}

/// Keeps a process that holds secrets out of core dumps and tracers.
fn protect_secrets(config: &Config) {
    let security = &config.security;
    let secrets = security.cluster_key.is_some()
        || security.pki.is_some()
        || !security.credentials.is_empty();
    if secrets {
        if let Err(e) = mesh_amb::secret::protect_process_memory() {
            tracing::warn!(error = %e, "cannot keep secrets out of core dumps");
        }
    }
}

/// `mesh-amb keygen FILE`: a new key, never over an existing file.
fn keygen(file: &std::path::Path) -> ExitCode {
    let key = mesh_amb::security::ClusterKey::generate();
    match mesh_amb::secret::write_new_secret_file(file, key.to_file_text().as_bytes()) {
        // The key is written: a closed stdout is still an error, as the
        // user did not learn its fingerprint.
        Ok(()) => print_out(
            format!(
                "wrote a new cluster key to {} (fingerprint {}); copy this file to every node \
                 of the cluster and start each with --cluster-key {0}\n",
                file.display(),
                key.fingerprint()
            )
            .as_bytes(),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => usage_error(&format!(
            "{} exists; keygen never replaces a key (remove it first if you mean to)",
            file.display()
        )),
        Err(e) => {
            say!("error: cannot write {}: {e}", file.display());
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Writes generated text to stdout; a closed pipe (`| head`) is an error
/// to report, not a panic.
fn print_out(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    report(
        stdout
            .write_all(bytes)
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout"),
    )
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn serve(config: Config, source: reload::Source) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before anything is bound or advertised, so an early SIGTERM
    // still shuts down cleanly (with goodbyes) instead of killing the process,
    // and an early SIGHUP does not kill it either.
    let int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    // Before the listeners are sized from it: a service manager's soft
    // limit (often 1024) fits only a few hundred connections.
    if let Err(e) = sockopt::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the file descriptor limit");
    }
    let listeners = Node::bind(&config)?;
    let admin = source.admin;
    // Bound before the node starts: a taken port is an error at start-up,
    // not a page that is silently missing.
    let admin = admin
        .map(|addr| {
            mesh_amb::admin::bind(addr).with_context(|| {
                format!("cannot listen on {addr} for the admin endpoint (--admin)")
            })
        })
        .transpose()?;
    let node = Node::start(config, listeners)?;
    tokio::spawn(on_signals(int, term, node.shutdown().clone()));
    tokio::spawn(reload::on_hangup(hup, node.reloader(), source));
    // The page stays up while the node drains: that is when it is read.
    let admin_stop = CancellationToken::new();
    let admin_task = admin.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(url = %format!("http://{addr}/"), "admin endpoint listening");
        }
        let observer = node.observer();
        let stop = admin_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = mesh_amb::admin::serve(listener, observer, stop).await {
                tracing::error!(error = %e, "the admin endpoint failed");
            }
        })
    });
    let result = node.join().await;
    admin_stop.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    result
}

/// First SIGINT/SIGTERM drains; a second one closes everything at once.
async fn on_signals(mut int: Signal, mut term: Signal, shutdown: Shutdown) {
    let sig = tokio::select! { _ = int.recv() => "SIGINT", _ = term.recv() => "SIGTERM" };
    tracing::info!(
        signal = sig,
        "shutting down; send it again to close connections now"
    );
    shutdown.begin();
    let sig = tokio::select! { _ = int.recv() => "SIGINT", _ = term.recv() => "SIGTERM" };
    tracing::warn!(signal = sig, "closing all connections now");
    shutdown.force();
}

/// `RUST_LOG`, or `default` when it is unset, blank or no filter: set and
/// empty (`RUST_LOG= mesh-amb ...`), it would hide every line, the
/// warnings too. A directive that does not parse (`mesh_amb=loud`) is left
/// out, and returned to be named in a warning once logging is up: the
/// library's own lossy parse prints it with `eprintln!`, outside a JSON
/// log stream, and its strict parse drops the valid ones with it.
fn log_filter(default: &str) -> (EnvFilter, Vec<String>) {
    let given = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default();
    let (mut kept, mut ignored) = (Vec::new(), Vec::new());
    for part in given.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<Directive>() {
            Ok(_) => kept.push(part),
            Err(e) => ignored.push(format!("{part:?} ({e})")),
        }
    }
    let directives = if kept.is_empty() {
        default.to_owned()
    } else {
        kept.join(",")
    };
    (EnvFilter::new(directives), ignored)
}

fn warn_ignored(ignored: &[String]) {
    for directive in ignored {
        tracing::warn!("RUST_LOG: ignoring {directive}");
    }
}

fn init_logs(format: LogFormat, default: &str) {
    let (filter, ignored) = log_filter(default);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Its report of a failed write is itself a write to stderr, which
        // panics once stderr is gone (a closed pipe): the task logging at
        // that moment, the signal handler say, would die with it.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    warn_ignored(&ignored);
}

/// The demo nodes' logs, at `info` unless `RUST_LOG` says otherwise.
fn init_file_logs(file: std::fs::File) {
    let (filter, ignored) = log_filter("info");
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .log_internal_errors(false)
        .with_ansi(false)
        .init();
    warn_ignored(&ignored);
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("error: {}", shown(&format!("{e:#}")));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Bad input, or a failure once running: exit codes 2 and 1.
pub enum Failure {
    Usage(String),
    Runtime(anyhow::Error),
}

fn failure(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => usage_error(&msg),
        Err(Failure::Runtime(e)) => report(Err(e)),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    let msg = msg.strip_prefix("error: ").unwrap_or(msg);
    say!("error: {}", shown(msg));
    ExitCode::from(EXIT_USAGE)
}

/// An error line as it may reach a terminal: one line, whatever the
/// offending value contained, and its control characters escaped (`\n`,
/// `\u{1b}`), so that a value from a config file someone else wrote cannot
/// move the cursor or recolour the terminal.
fn shown(msg: &str) -> String {
    msg.chars()
        .map(|c| match c {
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}
