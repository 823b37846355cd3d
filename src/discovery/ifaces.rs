//! The host's interfaces, as last read, and mdns-sd's interface check,
//! driven from here.
//!
//! `getifaddrs` opens a netlink socket, so a process out of descriptors
//! (EMFILE under a flood of clients) cannot read its interfaces. A failed
//! read is no news about the interfaces: every reader here keeps the last
//! list read instead ([`current`]). mdns-sd cannot tell the two apart: its
//! own check, every 5 s, turns the error into "no interfaces", leaves
//! every interface, and reports every instance it had cached on them
//! removed, so a consumer out of descriptors for a moment would drop its
//! healthy backends until the next check. So the node turns that check
//! off and runs its own ([`drive_mdns_check`]): it reads the interfaces at
//! the same pace and lets mdns-sd check only after a read that succeeded
//! saw them change.

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use if_addrs::Interface;
use mdns_sd::ServiceDaemon;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::net::loglimit::LogLimit;

/// How often the interfaces are read: mdns-sd's own default.
const CHECK_EVERY: Duration =
    Duration::from_secs(mdns_sd::IP_CHECK_INTERVAL_IN_SECS_DEFAULT as u64);

/// mdns-sd's check interval while it catches up with a change, in seconds
/// (its shortest): it checks once a second until the interfaces have held
/// still for [`SETTLED_AFTER`] reads, then stops again. A daemon busy for
/// seconds (a flood of packets) still checks at least once meanwhile.
const CATCH_UP_INTERVAL_SECS: u32 = 1;
const SETTLED_AFTER: u32 = 2;

/// The last list read.
static LAST: Mutex<Option<Vec<Interface>>> = Mutex::new(None);

/// Failed reads: where one fails, every caller's does (one line a second).
static READ_ERRORS: LogLimit = LogLimit::new();

/// Reads the interfaces, remembering them for [`current`].
pub fn read() -> io::Result<Vec<Interface>> {
    let read = if_addrs::get_if_addrs()?;
    *LAST.lock().unwrap_or_else(|e| e.into_inner()) = Some(read.clone());
    Ok(read)
}

/// The interfaces now, or as last read when they cannot be read (empty if
/// they never could be).
pub fn current() -> Vec<Interface> {
    match read() {
        Ok(read) => read,
        Err(e) => {
            match READ_ERRORS.admit() {
                Some(0) => {
                    warn!(error = %e, "cannot read the host's interfaces; using the last list read")
                }
                Some(more) => warn!(error = %e,
                    "cannot read the host's interfaces; using the last list read ({more} more since the last such line)"),
                None => debug!(error = %e, "cannot read the host's interfaces"),
            }
            LAST.lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default()
        }
    }
}

/// Turns `daemon`'s own interface check off (see the module's comment), and
/// until `stop` lets it check whenever the interfaces change.
pub async fn drive_mdns_check(daemon: ServiceDaemon, stop: CancellationToken) {
    let set = |secs: u32| {
        let set = daemon.set_ip_check_interval(secs);
        if let Err(e) = &set {
            debug!(error = %e, "mDNS daemon gone: interface check no longer driven");
        }
        set.is_ok()
    };
    if !set(0) {
        return;
    }
    // What the daemon read at its start, a moment ago; unknown if this
    // read fails, and then the first that succeeds counts as a change.
    let mut seen: Option<HashSet<Interface>> = read().ok().map(HashSet::from_iter);
    // Reads without a change since the last change, while mdns-sd checks.
    let mut catching_up: Option<u32> = None;
    let mut checking = false;
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let want = match read() {
            Ok(read) => {
                let now: HashSet<Interface> = read.into_iter().collect();
                if seen.as_ref() != Some(&now) {
                    debug!("the host's interfaces changed: mDNS checks them");
                    seen = Some(now);
                    catching_up = Some(0);
                } else if let Some(still) = catching_up.as_mut() {
                    *still += 1;
                    if *still >= SETTLED_AFTER {
                        catching_up = None;
                    }
                }
                catching_up.is_some()
            }
            // mdns-sd would read the same failure: no check meanwhile.
            Err(_) => false,
        };
        if want != checking {
            let secs = if want { CATCH_UP_INTERVAL_SECS } else { 0 };
            if !set(secs) {
                return;
            }
            checking = want;
        }
    }
}
