//! A burst of new instances this node refuses (unsigned under the cluster
//! key, flawed, not a mesh service) is cleared from the mDNS cache at once.
//!
//! mdns-sd caches every instance of the browsed type, used or not. As an
//! instance's records near the end of their 2 minutes it asks the link
//! about each four times (at 80-95 % of the TTL), and once they have gone
//! it asks about the instance at every query of the browse while its PTR
//! record lasts, 75 minutes (see `replay::Leftovers`). A stranger's
//! one-off flood of 2,000 unsigned instances made a keyed consumer send
//! about 24,000 datagrams 100-120 s after it. A responder that keeps
//! announcing its instances renews them before any of that, and costs
//! nothing.
//!
//! So [`BURST`] new refused instances within [`WITHIN`] ask for a clearing
//! (see `replay::Clearing`), which drops them before mdns-sd asks about
//! any. Their names are remembered: one that comes back after a clearing
//! has a live responder (which would have answered the refresh queries
//! too) and does not count again, so a neighbouring cluster with another
//! key costs a node one clearing, not one every two minutes.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::names::{Names, MEMORY};

/// New refused instances that make a burst (as many leftovers make a
/// clearing: `replay::STALE_TO_CLEAR`).
pub const BURST: usize = 16;
/// The burst's window: a flood's packets come within a second.
pub const WITHIN: Duration = Duration::from_secs(10);

/// The instances this node refused, and when the new ones came.
#[derive(Debug, Default)]
pub struct Refusals {
    /// The refused names seen (the newest [`MEMORY`]: a stranger who
    /// keeps announcing more gets clearings at the pace of
    /// `replay::Clearing`).
    known: Names,
    /// When each new refused name came, within [`WITHIN`] (at most
    /// [`MEMORY`]).
    recent: VecDeque<Instant>,
    /// A burst not yet taken: how many new names it held.
    burst: Option<usize>,
}

impl Refusals {
    /// `fullname` was refused at `now`.
    pub fn refused(&mut self, now: Instant, fullname: &str) {
        if self.known.contains(fullname) {
            return;
        }
        self.known.insert(fullname);
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WITHIN)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= MEMORY {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() >= BURST {
            self.burst = Some(self.recent.len());
        }
    }

    /// A burst of new refused instances came: how many (once per burst,
    /// the latest count).
    pub fn burst(&mut self) -> Option<usize> {
        let n = self.burst.take()?;
        self.recent.clear();
        Some(n)
    }

    /// The cache was cleared: a burst not yet taken went with it.
    pub fn cleared(&mut self) {
        self.burst = None;
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_new_names_is_one_and_names_seen_before_count_no_more() {
        let t = Instant::now();
        let mut r = Refusals::default();
        for i in 0..BURST - 1 {
            r.refused(t, &format!("fake-{i}"));
        }
        assert_eq!(r.burst(), None);
        // The same names again (a responder announcing them anew) add
        // nothing.
        for i in 0..BURST - 1 {
            r.refused(t, &format!("fake-{i}"));
        }
        assert_eq!(r.burst(), None);
        for i in BURST - 1..BURST + 9 {
            r.refused(t, &format!("fake-{i}"));
        }
        assert_eq!(r.burst(), Some(BURST + 9));
        assert_eq!(r.burst(), None, "taken once");
        // After a clearing they come back: a live responder, no burst.
        for i in 0..BURST + 9 {
            r.refused(t + WITHIN, &format!("fake-{i}"));
        }
        assert_eq!(r.burst(), None);
    }

    #[test]
    fn new_names_spread_out_make_no_burst() {
        let t = Instant::now();
        let mut r = Refusals::default();
        for i in 0..10 * BURST {
            // Any BURST of them span more than WITHIN.
            let at = t + WITHIN / (BURST - 2) as u32 * i as u32;
            r.refused(at, &format!("stray-{i}"));
        }
        assert_eq!(r.burst(), None);
    }

    #[test]
    fn memory_is_bounded() {
        let t = Instant::now();
        let mut r = Refusals::default();
        for i in 0..3 * MEMORY {
            r.refused(t, &format!("fake-{i}"));
        }
        assert_eq!(r.known.len(), MEMORY);
        assert!(r.recent.len() <= MEMORY);
        assert!(r.burst().is_some());
        // The newest are still known, the oldest forgotten.
        r.refused(t, &format!("fake-{}", 3 * MEMORY - 1));
        assert_eq!(r.burst(), None);
        for i in 0..BURST {
            r.refused(t, &format!("fake-{i}"));
        }
        assert_eq!(r.burst(), Some(BURST));
    }

    #[test]
    fn a_clearing_takes_a_burst_not_yet_taken() {
        let t = Instant::now();
        let mut r = Refusals::default();
        for i in 0..BURST {
            r.refused(t, &format!("fake-{i}"));
        }
        r.cleared();
        assert_eq!(r.burst(), None);
        // The count starts afresh.
        r.refused(t, "one-more");
        assert_eq!(r.burst(), None);
    }
}
