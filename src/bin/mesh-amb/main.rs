//! The `mesh-amb` binary: parse, configure, run, map errors to exit codes
//! (2 for bad input, 1 for runtime failures).
//!
//! - `cli`: the typed command line (clap), defaults from the library.
//! - `config`: flags > `MESH_AMB_*` environment > TOML file > defaults,
//!   into the library's validated `Config`.
//! - `check`: the summary `mesh-amb --check` prints.
//! - `demo`: the self-contained demonstration behind `mesh-amb demo`.

mod check;
mod cli;
mod config;
mod demo;

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::error::ErrorKind;
use clap::CommandFactory as _;
use tokio::signal::unix::Signal;
use tracing_subscriber::EnvFilter;

use mesh_amb::net::sockopt;
use mesh_amb::settings::Config;
use mesh_amb::{Node, Shutdown};

use crate::cli::{Cli, Command, LogFormat};
use crate::config::ProcessEnv;

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
        Some(Command::Demo) => {
            // Before any thread exists: a user namespace needs that.
            let isolation = match demo::isolate_network() {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("error: cannot set up the demo's private network namespace: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            // The demo prints its own story; logs show only what went wrong.
            init_logs(LogFormat::Text, "warn");
            report(runtime().and_then(|rt| rt.block_on(demo::run(isolation))))
        }
        Some(Command::Keygen { file }) => keygen(&file),
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
            } = match config::resolve(cli.run, &matches, &ProcessEnv) {
                Ok(r) => r,
                Err(e) => return usage_error(&e.to_string()),
            };
            if config.consumes.is_empty() && config.provides.is_empty() {
                return usage_error(
                    "nothing to do: give --consume or --provide (see --help), or try 'mesh-amb demo'",
                );
            }
            if cli.check {
                println!("configuration ok ({source}); it would run:");
                print!("{}", check::summary(&config));
                println!("nothing was bound or advertised (--check)");
                return ExitCode::SUCCESS;
            }
            init_logs(format, "info");
            let security = &config.security;
            let secrets = security.cluster_key.is_some()
                || security.pki.is_some()
                || !security.credentials.is_empty();
            if secrets {
                if let Err(e) = mesh_amb::secret::protect_process_memory() {
                    tracing::warn!(error = %e, "cannot keep secrets out of core dumps");
                }
            }
            let result = runtime().and_then(|rt| rt.block_on(serve(config)));
            if let (LogFormat::Json, Err(e)) = (format, &result) {
                // Keep a JSON log parseable to the last line.
                tracing::error!(error = %format!("{e:#}"), "exiting");
                return ExitCode::from(EXIT_RUNTIME);
            }
            report(result)
        }
    }
}

/// `mesh-amb keygen FILE`: a new key, never over an existing file.
fn keygen(file: &std::path::Path) -> ExitCode {
    let key = mesh_amb::security::ClusterKey::generate();
    match mesh_amb::secret::write_new_secret_file(file, key.to_file_text().as_bytes()) {
        Ok(()) => {
            println!(
                "wrote a new cluster key to {} (fingerprint {}); copy this file to every node \
                 of the cluster and start each with --cluster-key {0}",
                file.display(),
                key.fingerprint()
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => usage_error(&format!(
            "{} exists; keygen never replaces a key (remove it first if you mean to)",
            file.display()
        )),
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", file.display());
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

async fn serve(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before anything is bound or advertised, so an early SIGTERM
    // still shuts down cleanly (with goodbyes) instead of killing the process.
    let int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    // Before the listeners are sized from it: a service manager's soft
    // limit (often 1024) fits only a few hundred connections.
    if let Err(e) = sockopt::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the file descriptor limit");
    }
    let listeners = Node::bind(&config)?;
    let node = Node::start(config, listeners)?;
    tokio::spawn(on_signals(int, term, node.shutdown().clone()));
    node.join().await
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

fn init_logs(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    let msg = msg.strip_prefix("error: ").unwrap_or(msg);
    // One line, whatever the offending value contained.
    let msg = msg.replace('\n', "\\n");
    eprintln!("error: {msg}");
    ExitCode::from(EXIT_USAGE)
}
