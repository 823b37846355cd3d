//! When a restarted browse may take stock: mdns-sd replays its cache into
//! a new browse, and an instance that neither the replay nor the answers
//! to the browse's first query bring back has gone from the cache (its
//! removal event lost, in a flood or with the old browse). A discovered
//! backend so gone is swept (when the restart asks for it, and once its
//! responder does not answer for it: see `reconfirm`), and an
//! instance of our own missing from the replay is announced again (a
//! goodbye said for it just before the restart: see
//! `Mdns::defend_unreplayed`). Neither may come before the replay is
//! whole, or it acts on live instances the replay had not reached yet.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

/// mdns-sd replays its cache into a new browse between the browse's first
/// `SearchStarted` event and its second, which comes with the first query
/// (10-50 ms later, from the same thread, through the same channel). So
/// the second marks the replay whole, however long a busy machine takes
/// to deliver it: a sweep at a fixed 2 s after the restart once removed a
/// live provider that a replay of 10,000 flood records had not reached.
const REPLAY_WHOLE_AT_SEARCH: u32 = 2;
/// How long after the replay the browse waits to take stock: an instance
/// whose cached records no longer resolve (an address record that lapsed)
/// is not replayed, and comes back with the answers to that first query.
const SWEEP_AFTER_REPLAY: Duration = Duration::from_secs(2);

/// One browse's replay, followed until it is whole.
#[derive(Debug, Default)]
pub struct Replay {
    /// Instances resolved since the browse started, until taken.
    seen: Option<HashSet<String>>,
    /// Whether the browse is to sweep.
    sweep: bool,
    /// `SearchStarted` events of this browse so far.
    searches: u32,
    /// When the replay is whole and settled.
    whole_at: Option<Instant>,
}

/// What a whole replay brought back ([`Replay::take`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Whole {
    /// Every instance the browse resolved.
    pub seen: HashSet<String>,
    /// Whether to sweep what it lacks from the tables.
    pub sweep: bool,
}

impl Replay {
    /// A browse starts; `sweep` says whether it is to sweep (the old one
    /// ended, or events were dropped). A sweep still due when a browse
    /// restarts is the new browse's.
    pub fn start(&mut self, sweep: bool) {
        self.seen = Some(HashSet::new());
        self.sweep |= sweep;
        self.searches = 0;
        self.whole_at = None;
    }

    /// The browse's `SearchStarted` event, at `now`.
    pub fn search_started(&mut self, now: Instant) {
        self.searches += 1;
        if self.searches == REPLAY_WHOLE_AT_SEARCH && self.seen.is_some() {
            self.whole_at = Some(now + SWEEP_AFTER_REPLAY);
        }
    }

    /// The browse resolved `fullname`.
    pub fn resolved(&mut self, fullname: &str) {
        if let Some(seen) = &mut self.seen {
            seen.insert(fullname.to_owned());
        }
    }

    /// When the replay is whole, until it is taken.
    pub fn due(&self) -> Option<Instant> {
        self.whole_at
    }

    /// What the browse brought back, and whether to sweep the rest; once
    /// per browse.
    pub fn take(&mut self) -> Whole {
        self.whole_at = None;
        Whole {
            seen: self.seen.take().unwrap_or_default(),
            sweep: std::mem::take(&mut self.sweep),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn swept(names: &[&str]) -> Whole {
        Whole {
            seen: set(names),
            sweep: true,
        }
    }

    #[test]
    fn the_sweep_waits_for_the_replay_however_long_it_takes() {
        let t = Instant::now();
        let mut r = Replay::default();
        r.start(true);
        r.search_started(t);
        // A replay of a flood's records, delivered slowly by a busy
        // machine: no sweep is due while it lasts.
        r.resolved("a");
        assert_eq!(r.due(), None, "a sweep due before the replay was whole");
        let whole = t + Duration::from_secs(30);
        r.search_started(whole);
        assert_eq!(r.due(), Some(whole + SWEEP_AFTER_REPLAY));
        // The answers to the first query count as well.
        r.resolved("b");
        assert_eq!(r.take(), swept(&["a", "b"]));
        assert_eq!(r.due(), None);
    }

    #[test]
    fn a_browse_restarted_for_another_reason_takes_stock_without_sweeping() {
        let t = Instant::now();
        let mut r = Replay::default();
        r.start(false);
        r.resolved("a");
        r.search_started(t);
        assert_eq!(r.due(), None);
        r.search_started(t);
        assert_eq!(r.due(), Some(t + SWEEP_AFTER_REPLAY));
        let whole = r.take();
        assert_eq!((whole.seen, whole.sweep), (set(&["a"]), false));
        // Once per browse.
        r.search_started(t);
        assert_eq!(r.due(), None);
    }

    #[test]
    fn a_sweep_still_due_is_the_next_browses() {
        let t = Instant::now();
        let mut r = Replay::default();
        r.start(true);
        r.search_started(t);
        r.resolved("old");
        // Restarted before its replay was whole: the new browse sweeps,
        // on what it replays itself.
        r.start(false);
        assert_eq!(r.due(), None);
        r.search_started(t);
        r.resolved("a");
        r.search_started(t);
        assert_eq!(r.due(), Some(t + SWEEP_AFTER_REPLAY));
        assert_eq!(r.take(), swept(&["a"]));
        // Once swept, the next restart does not sweep again.
        r.start(false);
        r.search_started(t);
        r.search_started(t);
        assert!(!r.take().sweep);
    }
}
