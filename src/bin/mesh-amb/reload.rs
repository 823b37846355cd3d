//! SIGHUP: the settings are read again from the same command line (so the
//! config file, the environment's lists and the credentials files anew) and
//! applied to the running node. One line says what changed, one warns of
//! what waits for a restart, or one error says why nothing changed.

use std::net::SocketAddr;

use clap::ArgMatches;
use tokio::signal::unix::Signal;
use tracing::{error, info, warn};

use mesh_amb::node::Reloader;

use crate::cli::{LogFormat, RunArgs};
use crate::config::{self, ProcessEnv};

/// What the node was started from.
pub struct Source {
    /// The parsed command line, to layer over the file again.
    pub args: RunArgs,
    /// Where each of its values came from.
    pub matches: ArgMatches,
    /// The log format in use (set once, at start).
    pub log_format: LogFormat,
    /// The admin endpoint's address (bound once, at start).
    pub admin: Option<SocketAddr>,
}

/// Reloads `reloader`'s node at each SIGHUP, one reload at a time.
pub async fn on_hangup(mut hup: Signal, reloader: Reloader, source: Source) {
    while hup.recv().await.is_some() {
        reload(&reloader, &source).await;
    }
}

async fn reload(reloader: &Reloader, source: &Source) {
    // Off the runtime's workers: the files are read again, and a pipe among
    // them may take its writers' time (up to `files::PIPE_DEADLINE`).
    let (args, matches) = (source.args.clone(), source.matches.clone());
    let resolving =
        tokio::task::spawn_blocking(move || config::resolve(args, &matches, &ProcessEnv));
    let resolved = match resolving.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return rejected(&e.to_string()),
        Err(e) => return rejected(&format!("reading the settings failed: {e}")),
    };
    let new = resolved.config;
    if new.consumes.is_empty() && new.provides.is_empty() {
        return rejected("nothing to do: no --consume and no --provide");
    }
    crate::protect_secrets(&new);
    match reloader.reload(new).await {
        Ok(summary) => {
            info!("reloaded: {summary}");
            let mut kept = summary.needs_restart;
            if resolved.log_format != source.log_format {
                kept.push("log_format");
            }
            if resolved.admin != source.admin {
                kept.push("admin");
            }
            if !kept.is_empty() {
                warn!("needs a restart, running values kept: {}", kept.join(", "));
            }
        }
        Err(e) => rejected(&format!("{e:#}")),
    }
}

fn rejected(why: &str) {
    // One line, whatever the offending value held.
    let why = why.replace('\n', "\\n");
    error!("reload rejected, the previous configuration keeps running: {why}");
}
