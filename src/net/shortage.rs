//! When this process last ran out of file descriptors (EMFILE, or ENFILE
//! system-wide), as seen by whatever failed to open one: an accept, a dial,
//! an interface read. Out of descriptors, some readings lie rather than
//! fail; [`crate::discovery::ifaces`] pauses mdns-sd's interface check,
//! which takes a failed read for "no interfaces", while this says so.

use std::io;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The moment of the last shortage reported, to each subscriber.
static LAST: LazyLock<watch::Sender<Option<Instant>>> = LazyLock::new(|| watch::Sender::new(None));

/// Notes `e` if it says the process (EMFILE) or the system (ENFILE) is
/// out of descriptors.
pub fn note(e: &io::Error) {
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        LAST.send_replace(Some(Instant::now()));
    }
}

/// Shortages as they are reported: the receiver changes with each.
pub fn subscribe() -> watch::Receiver<Option<Instant>> {
    LAST.subscribe()
}

/// How long ago the last shortage was reported, if ever.
pub fn since_last() -> Option<Duration> {
    LAST.borrow().map(|at| at.elapsed())
}
