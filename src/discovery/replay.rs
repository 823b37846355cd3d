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
//! A replay also shows the instances whose records have left the cache
//! but for their PTR record ([`Leftovers`]), which mdns-sd queries for
//! again and again; enough of them and the browse clears the cache.

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
/// After a clearing of the cache the replay is empty, and every live
/// instance comes back from the answers to the browse's queries instead:
/// a responder sends a record by multicast at most once a second
/// (mdns-sd's rate limit), so one that has just answered another node's
/// query (every node that saw a flood clears after it) answers only the
/// second query, a second after the first. So such a browse takes stock
/// after its second query.
const FRESH_WHOLE_AT_SEARCH: u32 = 3;
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
    /// The one that marks the replay whole.
    whole_at_search: u32,
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
    /// ended, or events were dropped), `fresh` whether it starts on a
    /// cleared cache. A sweep still due when a browse restarts is the new
    /// browse's.
    pub fn start(&mut self, sweep: bool, fresh: bool) {
        self.seen = Some(HashSet::new());
        self.sweep |= sweep;
        self.searches = 0;
        self.whole_at_search = if fresh {
            FRESH_WHOLE_AT_SEARCH
        } else {
            REPLAY_WHOLE_AT_SEARCH
        };
        self.whole_at = None;
    }

    /// The browse's `SearchStarted` event, at `now`.
    pub fn search_started(&mut self, now: Instant) {
        self.searches += 1;
        if self.searches == self.whole_at_search && self.seen.is_some() {
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

/// Stale PTR records in a replay before the cache is cleared: each one
/// costs a query per family at every query of the browse (1, 2, 4 ... s
/// after each restart), so a few dozen queries apiece over their life,
/// where clearing the cache costs one query and an answer from each live
/// node on the link.
pub const STALE_TO_CLEAR: usize = 16;
/// Instances a replay may list unresolved before the count stops: enough
/// to tell a flood, a bounded memory however large the cache.
const STALE_MEMORY: usize = 4096;

/// Counts what a replay lists but cannot resolve: instances whose PTR
/// record mdns-sd still holds (4,500 s, 75 minutes, for mdns-sd's own and
/// for most responders') after the rest of their records left the cache
/// (their 120 s lapsed, or a verification of ours expired them). mdns-sd
/// 0.21.7 tries to resolve each again at every restart, and once it no
/// longer counts one as resolved it sends an SRV and TXT question for
/// it, or an address question for its host, with each query of the
/// browse until the PTR lapses. A flood from one host gets there at once
/// (verifying one of its instances expires the address of the host they
/// share): measured on the lab, a stranger's one-off flood of 2,000
/// instances made a consumer send 104,000-111,000 datagrams in the next
/// 135 s. Nothing in mdns-sd's API removes a single record;
/// ending the browse (`stop_browse`) drops every record of the type.
///
/// In a replay mdns-sd lists each cached instance (`ServiceFound`) and
/// resolves it from the cache (`ServiceResolved`) when its records are
/// whole. Answers that arrive meanwhile list and resolve instances too, a
/// packet's worth of listings before their resolutions, so what counts is
/// what the replay listed and had not resolved by its end.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// `SearchStarted` events so far: the replay lies between the first
    /// and the second ([`REPLAY_WHOLE_AT_SEARCH`]).
    searches: u32,
    /// Listed in the replay and not resolved (at most [`STALE_MEMORY`]).
    unresolved: HashSet<String>,
}

impl Leftovers {
    /// The browse's `SearchStarted` event; at the end of the replay, how
    /// many instances it left unresolved, if that is [`STALE_TO_CLEAR`]
    /// or more.
    pub fn search_started(&mut self) -> Option<usize> {
        self.searches += 1;
        if self.searches != REPLAY_WHOLE_AT_SEARCH {
            return None;
        }
        let stale = std::mem::take(&mut self.unresolved).len();
        (stale >= STALE_TO_CLEAR).then_some(stale)
    }

    /// The browse listed `fullname`.
    pub fn found(&mut self, fullname: &str) {
        let replaying = self.searches > 0 && self.searches < REPLAY_WHOLE_AT_SEARCH;
        if replaying && self.unresolved.len() < STALE_MEMORY {
            self.unresolved.insert(fullname.to_owned());
        }
    }

    /// The browse resolved `fullname`.
    pub fn resolved(&mut self, fullname: &str) {
        self.unresolved.remove(fullname);
    }
}

/// Most instances the cache may list for the browse to be restarted
/// rather than cleared. Past a few hundred, what the cache lists is a
/// flood's: a restart would replay it all into the browse (two events an
/// instance, from mdns-sd's thread in one loop), and keep its records,
/// whose PTR records outlive the rest by 75 minutes and are asked about
/// with every query mdns-sd sends. Upstream mdns-sd's browse channel of
/// 1,000 also ended the browse at such a replay: measured with mdns-sd
/// 0.21.7 on this 2-core machine, idle, restarts with 600 cached
/// instances ended 14 of 20 times (11 of 20 with a thread of its own
/// reading), with 1,000 18 of 20, with 400 none; an ended browse restarted
/// replayed the same cache and ended again, and the lab's 8-host flood
/// runs where a restart fell in the flood carried 12,000 to 14,000 queries.
/// The vendored mdns-sd's channel takes a replay of about 8,000
/// (vendor/mdns-sd/PATCHED.md), but a flood's cache is still cleared
/// rather than replayed: past this many, a restart is a clearing instead
/// (`Cause::Crowded`), which keeps the browse, and its pacing, until then.
pub const REPLAY_MOST: usize = 400;

/// The distinct instances a browse has listed (`ServiceFound`), counted
/// up to one more than [`REPLAY_MOST`]: whether a restart would replay
/// more than that. Nothing is taken off. mdns-sd reports an instance
/// removed once it no longer resolves (its SRV record lapsed after 2
/// minutes, or the address it shares with a flood's other instances),
/// while its PTR record, and so its place in a replay, stays up to 75
/// minutes; and a stranger's goodbye for a name never listed reports one
/// removed too. Counting one too many only makes a restart a clearing.
#[derive(Debug, Default)]
pub struct Listed {
    names: HashSet<String>,
}

impl Listed {
    /// The browse listed `fullname`; whether it has now listed more than
    /// [`REPLAY_MOST`].
    pub fn found(&mut self, fullname: &str) -> bool {
        if self.names.len() <= REPLAY_MOST {
            self.names.insert(fullname.to_owned());
        }
        self.names.len() > REPLAY_MOST
    }
}

/// Most time between two clearings of the cache: each costs the link a
/// query and an answer from every live node, so a stranger who floods
/// again and again gets one a node this seldom.
pub const CLEAR_EVERY: Duration = Duration::from_secs(120);
/// Least time between two clearings: one made while mdns-sd is still
/// taking in a flood (thousands of records, for seconds) misses what it
/// takes in afterwards, or the stranger floods again, so the next replay
/// may list them still; the wait doubles from this up to [`CLEAR_EVERY`].
pub const CLEAR_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// Clearings in a row that the daemon may refuse before the next one
/// waits its turn: each miss costs a restart of the browse.
const MISSES_AT_ONCE: u32 = 3;

/// Why the cache is to be cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A replay ended with this many instances it could not resolve
    /// ([`Leftovers`]); only then is the browse known to be there.
    Stale(usize),
    /// This many failing instances were refused a verification (see
    /// `verifying`).
    Flood(usize),
    /// This many new instances this node refuses came at once (see
    /// `refusals`).
    Refused(usize),
    /// The browse was to restart with more instances in the cache than a
    /// replay carries ([`REPLAY_MOST`]).
    Crowded,
    /// This node is back from a suspend, a stop or a step of the wall
    /// clock, which ran its cache's records out (see `away`).
    Away,
}

/// When the browse is to clear the cache next: at once the first time,
/// then after a wait that doubles from [`CLEAR_AGAIN_AFTER`] to
/// [`CLEAR_EVERY`] and halves for every [`CLEAR_EVERY`] that passes
/// without one, so a stranger who floods whenever a clearing is allowed
/// gets one about every [`CLEAR_EVERY`], not a series from the start. A
/// clearing the daemon refused (its command queue full) cleared nothing,
/// and is made again at once (the browse restarts meanwhile), a few times
/// in a row. A reload's clearing comes at once ([`Clearing::urge`]): only
/// this node asks for it. A clearing wanted again before it is made (a
/// browse restart made as a clearing, another cause) comes at the sooner
/// time and says the first cause: the one that found what is wrong, where
/// the later one (most often a cache crowded by the same flood) follows
/// from it.
#[derive(Debug, Default)]
pub struct Clearing {
    /// When the last clearing that took was made.
    last: Option<Instant>,
    /// The least wait after it; zero for at once.
    wait: Duration,
    /// Clearings in a row that the daemon refused.
    misses: u32,
    /// When the next is due, and why.
    due: Option<(Instant, Cause)>,
    /// Why the clearing being made was wanted.
    making: Option<Cause>,
}

impl Clearing {
    /// A clearing is wanted at `now`, for `cause`.
    pub fn want(&mut self, now: Instant, cause: Cause) {
        let at = match self.last {
            Some(t) if self.misses == 0 => now.max(t + self.wait_at(now)),
            _ => now,
        };
        self.bring_forward(at, cause);
    }

    /// The next clearing is due at `at` or sooner, for the first cause
    /// wanted.
    fn bring_forward(&mut self, at: Instant, cause: Cause) {
        self.due = Some(match self.due {
            Some((t, first)) => (t.min(at), first),
            None => (at, cause),
        });
    }

    /// The wait after the last clearing, as it stands at `now`: halved
    /// for every [`CLEAR_EVERY`] since, and none once below
    /// [`CLEAR_AGAIN_AFTER`].
    fn wait_at(&self, now: Instant) -> Duration {
        let Some(t) = self.last else {
            return Duration::ZERO;
        };
        let quiet = now.saturating_duration_since(t).as_nanos() / CLEAR_EVERY.as_nanos();
        let wait = self.wait / 2u32.saturating_pow(quiet.min(31) as u32);
        if wait < CLEAR_AGAIN_AFTER {
            Duration::ZERO
        } else {
            wait
        }
    }

    /// A clearing is wanted at once, however soon after the last: a
    /// reload's new services wait for the next browse, and a crowded cache
    /// ([`REPLAY_MOST`]) makes that browse a clearing; a node back from
    /// away has lost what its cache held. Only this node's own doings ask,
    /// so a stranger cannot hurry clearings.
    pub fn urge(&mut self, now: Instant, cause: Cause) {
        self.bring_forward(now, cause);
    }

    /// When the next clearing is due.
    pub fn due(&self) -> Option<Instant> {
        self.due.map(|(at, _)| at)
    }

    /// The clearing due is being made; why (the first cause wanted).
    pub fn take(&mut self) -> Option<Cause> {
        let (_, cause) = self.due.take()?;
        self.making = Some(cause);
        Some(cause)
    }

    /// The clearing made at `now` cleared the cache (`took`), or the
    /// daemon refused it.
    pub fn made(&mut self, now: Instant, took: bool) {
        let cause = self.making.take();
        if !took && self.misses < MISSES_AT_ONCE {
            self.misses += 1;
            if let Some(cause) = cause {
                self.want(now, cause);
            }
            return;
        }
        self.misses = 0;
        let wait = self.wait_at(now);
        self.wait = if wait.is_zero() {
            CLEAR_AGAIN_AFTER
        } else {
            (wait * 2).min(CLEAR_EVERY)
        };
        self.last = Some(now);
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
        r.start(true, false);
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
        r.start(false, false);
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
        r.start(true, false);
        r.search_started(t);
        r.resolved("old");
        // Restarted before its replay was whole: the new browse sweeps,
        // on what it replays itself.
        r.start(false, false);
        assert_eq!(r.due(), None);
        r.search_started(t);
        r.resolved("a");
        r.search_started(t);
        assert_eq!(r.due(), Some(t + SWEEP_AFTER_REPLAY));
        assert_eq!(r.take(), swept(&["a"]));
        // Once swept, the next restart does not sweep again.
        r.start(false, false);
        r.search_started(t);
        r.search_started(t);
        assert!(!r.take().sweep);
    }

    #[test]
    fn a_replay_counts_the_instances_it_cannot_resolve() {
        let mut l = Leftovers::default();
        assert_eq!(l.search_started(), None);
        l.found("live");
        l.resolved("live");
        for i in 0..STALE_TO_CLEAR {
            l.found(&format!("stale-{i}"));
        }
        // An answer's instances, listed before they are resolved.
        l.found("answer-1");
        l.found("answer-2");
        l.resolved("answer-2");
        l.resolved("answer-1");
        assert_eq!(l.search_started(), Some(STALE_TO_CLEAR));
        // After the replay, what the link sends is news, not leftovers.
        l.found("news");
        assert_eq!(l.search_started(), None);
    }

    #[test]
    fn a_few_leftovers_are_not_worth_a_clearing() {
        let mut l = Leftovers::default();
        l.search_started();
        for i in 0..STALE_TO_CLEAR - 1 {
            l.found(&format!("stale-{i}"));
        }
        for i in 0..4 * STALE_TO_CLEAR {
            let name = format!("live-{i}");
            l.found(&name);
            l.resolved(&name);
        }
        assert_eq!(l.search_started(), None);
    }

    #[test]
    fn a_flood_of_leftovers_is_counted_within_bounds() {
        let mut l = Leftovers::default();
        l.search_started();
        for i in 0..2 * STALE_MEMORY {
            l.found(&format!("stale-{i}"));
        }
        assert_eq!(l.search_started(), Some(STALE_MEMORY));
    }

    /// Makes the clearing due, at its time.
    fn make(c: &mut Clearing, took: bool) -> Instant {
        let at = c.due().expect("a clearing due");
        c.take();
        c.made(at, took);
        at
    }

    #[test]
    fn clearings_come_at_once_then_less_and_less_often() {
        let t = Instant::now();
        let mut c = Clearing::default();
        assert_eq!(c.due(), None);
        c.want(t, Cause::Stale(20));
        assert_eq!(c.due(), Some(t));
        assert_eq!(c.take(), Some(Cause::Stale(20)));
        c.made(t, true);
        assert_eq!(c.due(), None);
        // The next replay still lists them: a flood came in after it.
        c.want(t + Duration::from_secs(1), Cause::Stale(30));
        let again = t + CLEAR_AGAIN_AFTER;
        assert_eq!(c.due(), Some(again));
        // Asked again meanwhile, it is still due at that time, for the
        // first cause.
        c.want(t + Duration::from_secs(2), Cause::Flood(40));
        assert_eq!(c.due(), Some(again));
        assert_eq!(c.take(), Some(Cause::Stale(30)));
        c.want(t + Duration::from_secs(2), Cause::Stale(40));
        assert_eq!(make(&mut c, true), again);
        // Each one soon after the last waits twice as long, up to the most.
        let mut last = again;
        for wait in [2, 4, 8, 16, 24, 24].map(|n| CLEAR_AGAIN_AFTER * n) {
            c.want(last, Cause::Stale(1));
            let at = make(&mut c, true);
            assert_eq!(at - last, wait.min(CLEAR_EVERY));
            last = at;
        }
        // One after the longest wait held comes at once, but the next
        // waits as long again: a stranger who floods whenever allowed
        // gets one every CLEAR_EVERY.
        let quiet = last + CLEAR_EVERY;
        c.want(quiet, Cause::Refused(1));
        assert_eq!(make(&mut c, true), quiet);
        c.want(quiet, Cause::Refused(1));
        assert_eq!(c.due(), Some(quiet + CLEAR_EVERY));
        let last = make(&mut c, true);
        // After a long quiet the doubling starts afresh.
        let long = last + CLEAR_EVERY * 10;
        c.want(long, Cause::Stale(1));
        assert_eq!(make(&mut c, true), long);
        c.want(long, Cause::Stale(1));
        assert_eq!(c.due(), Some(long + CLEAR_AGAIN_AFTER));
    }

    /// A clearing made at `t`.
    fn made_at(t: Instant) -> Clearing {
        let mut c = Clearing::default();
        c.want(t, Cause::Stale(20));
        make(&mut c, true);
        c
    }

    #[test]
    fn a_clearing_that_found_no_browse_is_made_again_a_few_times_at_once() {
        let t = Instant::now();
        let mut c = made_at(t);
        let soon = t + Duration::from_secs(1);
        c.want(soon, Cause::Stale(20));
        let at = make(&mut c, false);
        assert_eq!(at, t + CLEAR_AGAIN_AFTER);
        for _ in 1..MISSES_AT_ONCE {
            // Made again at once, unasked, for the same cause.
            assert_eq!(c.due(), Some(at));
            assert_eq!(c.take(), Some(Cause::Stale(20)));
            c.made(at, false);
        }
        // The last miss counts as made: the next waits its turn.
        assert_eq!(make(&mut c, false), at);
        assert_eq!(c.due(), None);
        c.want(at, Cause::Stale(20));
        assert_eq!(c.due(), Some(at + CLEAR_AGAIN_AFTER * 2));
    }

    #[test]
    fn an_urged_clearing_is_due_at_once_however_soon_after_the_last() {
        let t = Instant::now();
        let mut c = made_at(t);
        let soon = t + Duration::from_secs(1);
        c.want(soon, Cause::Stale(20));
        assert_eq!(c.due(), Some(t + CLEAR_AGAIN_AFTER), "paced");
        c.urge(soon, Cause::Crowded);
        assert_eq!(c.due(), Some(soon));
        assert_eq!(c.take(), Some(Cause::Stale(20)), "the first cause");
        c.made(soon, true);
        c.urge(soon, Cause::Crowded);
        assert_eq!(c.take(), Some(Cause::Crowded));
    }

    /// A flood found out wants a clearing 2-10 s later; the node's one
    /// restart to fall out of step, made as a clearing in a cache the
    /// flood crowded, comes first: the clearing comes then, and says the
    /// flood.
    #[test]
    fn a_clearing_brought_forward_says_why_it_was_first_wanted() {
        let t = Instant::now();
        let mut c = Clearing::default();
        c.want(t + Duration::from_secs(8), Cause::Flood(39));
        c.want(t + Duration::from_secs(1), Cause::Crowded);
        assert_eq!(c.due(), Some(t + Duration::from_secs(1)));
        assert_eq!(c.take(), Some(Cause::Flood(39)));
        c.made(t + Duration::from_secs(1), true);
        assert_eq!(c.due(), None);
    }

    #[test]
    fn a_browse_is_crowded_past_what_a_replay_carries_whatever_left() {
        let mut l = Listed::default();
        for i in 0..REPLAY_MOST {
            assert!(!l.found(&format!("i{i}")));
            assert!(!l.found("i0"), "a name listed again counts once");
        }
        assert!(l.found("one more"));
        assert!(l.found("i0"));
    }

    #[test]
    fn a_browse_on_a_cleared_cache_takes_stock_after_its_second_query() {
        let t = Instant::now();
        let mut r = Replay::default();
        r.start(true, true);
        r.search_started(t);
        // Its first query: a responder that answered another node a
        // moment ago stays silent to it.
        r.search_started(t);
        assert_eq!(r.due(), None);
        let second = t + Duration::from_secs(1);
        r.search_started(second);
        r.resolved("late");
        assert_eq!(r.due(), Some(second + SWEEP_AFTER_REPLAY));
        assert_eq!(r.take(), swept(&["late"]));
        // The next browse, on a cache replayed as usual, does not wait so.
        r.start(false, false);
        r.search_started(t);
        r.search_started(t);
        assert_eq!(r.due(), Some(t + SWEEP_AFTER_REPLAY));
    }
}
