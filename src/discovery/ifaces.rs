//! The host's interfaces, as last read.
//!
//! `getifaddrs` opens a netlink socket, so a process out of descriptors
//! (EMFILE under a flood of clients) cannot read its interfaces. A failed
//! read is no news about the interfaces: our readers keep the last list
//! read instead ([`current`]), where an empty list would have re-signed
//! our advertisements with no address. (mdns-sd's own interface check,
//! every 5 s, still takes the failure for "no interfaces": see the
//! ignored scenario in tests/faults.rs.)

use std::io;
use std::sync::Mutex;

use if_addrs::Interface;
use tracing::{debug, warn};

use crate::net::loglimit::LogLimit;

/// The last list read.
static LAST: Mutex<Option<Vec<Interface>>> = Mutex::new(None);

/// Failed reads: where one fails, every caller's does (one line a second).
static READ_ERRORS: LogLimit = LogLimit::new();

/// Reads the interfaces, remembering them for [`current`].
fn read() -> io::Result<Vec<Interface>> {
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
