//! The host's interfaces, as last read, and mdns-sd's interface check,
//! paused while the process is out of descriptors.
//!
//! `getifaddrs` opens a netlink socket, so a process out of descriptors
//! (EMFILE under a flood of clients) cannot read its interfaces. A failed
//! read is no news about the interfaces: our readers keep the last list
//! read instead ([`current`]), where an empty list would have re-signed
//! our advertisements with no address. mdns-sd cannot tell the two apart:
//! its own check, every 5 s, turns the error into "no interfaces", leaves
//! every interface and reports every instance it had cached removed, so a
//! consumer out of descriptors for a moment dropped its healthy backends
//! until the next check. So that check is turned off while the process
//! runs short ([`crate::net::shortage`]: an accept, a dial or a read of
//! ours failed with EMFILE), and on again once it has had descriptors for
//! [`CHECK_AGAIN_AFTER`]. Otherwise mdns-sd checks on its own: driving
//! every check from here (the check run only after a change) lost a
//! provider whose link went down and came back (see the README's "Under
//! faults").

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use if_addrs::Interface;
use mdns_sd::ServiceDaemon;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::net::loglimit::LogLimit;
use crate::net::shortage;

/// How long the process must have had descriptors before mdns-sd checks
/// its interfaces again: a flood's accepts retry within a second
/// (`net::accept`'s back-off), so a flood that goes on keeps the check off.
pub const CHECK_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// The last list read.
static LAST: Mutex<Option<Vec<Interface>>> = Mutex::new(None);

/// Failed reads: where one fails, every caller's does (one line a second).
static READ_ERRORS: LogLimit = LogLimit::new();

/// Reads the interfaces, remembering them for [`current`].
fn read() -> io::Result<Vec<Interface>> {
    let read = if_addrs::get_if_addrs().inspect_err(shortage::note)?;
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

/// Until `stop`: turns `daemon`'s interface check off as soon as the
/// process runs out of descriptors, and on again (at mdns-sd's default
/// interval, its first check that long after) once it has had them for
/// [`CHECK_AGAIN_AFTER`].
pub async fn pause_mdns_check_when_short(daemon: ServiceDaemon, stop: CancellationToken) {
    let mut shortages = shortage::subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = shortages.changed() => if changed.is_err() { return },
        }
        if daemon.set_ip_check_interval(0).is_err() {
            debug!("mDNS daemon gone: its interface check is no longer paused");
            return;
        }
        warn!(
            "out of file descriptors: mDNS interface check paused (it would read no \
             interface and drop every backend); on again {}s after the shortage",
            CHECK_AGAIN_AFTER.as_secs()
        );
        // Marked seen before the time is read: a shortage that comes
        // after the check is back on pauses it again.
        loop {
            shortages.borrow_and_update();
            let Some(wait) = shortage::since_last().and_then(|s| CHECK_AGAIN_AFTER.checked_sub(s))
            else {
                break;
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if daemon
            .set_ip_check_interval(mdns_sd::IP_CHECK_INTERVAL_IN_SECS_DEFAULT)
            .is_err()
        {
            return;
        }
        info!("file descriptors available again: mDNS interface check on again");
    }
}
