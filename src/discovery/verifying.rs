//! How many instances the browse verifies one by one before it takes them
//! for a flood and clears the cache instead.
//!
//! A third-party instance whose probe failed is verified (RFC 6762 §10.4,
//! mdns-sd's `verify`): a multicast query for its records, sent again a
//! second later, which every host on the link receives, and an expiry of
//! its records when nobody answers. That is the right tool for a few stale
//! records. For a stranger's flood it is not: every consumer verifies
//! every fake, so a one-off burst of 1,000 instances made a consumer send
//! about 18,700 datagrams in the next minute (measured by the hostile
//! one-off flood test), and each of 64 consumers on a link would do the
//! same. mdns-sd's command queue (100 slots) overflows as well.
//!
//! So failing instances are gathered for [`GATHER`] before anything is
//! sent. [`FLOOD`] or more in one gathering are a flood: none is
//! verified, and the cache is cleared instead (see `replay::Clearing`,
//! which paces clearings). Verifying even one would cost more than the
//! clearing: a flood from one machine shares its host name, and the
//! expiry of that host's address (a verification's result) makes mdns-sd
//! ask about every one of its instances four times. The clearing drops
//! every record of the type at once, the fresh browse relearns the live
//! instances from their answers, and what it does not find is swept once
//! its responder does not answer for it (see `reconfirm`: a unicast
//! question to one host, not a multicast to all). Fewer are verified,
//! [`BURST`] at once, then one per [`REFILL`]; the rest are let be, and
//! reported again at their next failed probe (30 s later, then less and
//! less often).
//!
//! A clearing does nothing against a stranger who keeps announcing: its
//! instances come back and fail again. One that does (an instance of a
//! flood that was cleared fails again) stops the clearings for [`HOLD`];
//! meanwhile the budget alone bounds what the flood costs, two queries a
//! second.

use std::time::Duration;

use tokio::time::Instant;

use super::bucket::Bucket;
use super::names::Names;

/// How long failing instances are gathered before any is verified: a
/// flood's probes fail within a second of its arrival.
pub const GATHER: Duration = Duration::from_secs(1);
/// Failing instances in one gathering that make a flood.
pub const FLOOD: usize = 16;
/// Verifications sent at once: a few stale records (a crashed host's
/// services) are verified one by one.
pub const BURST: u32 = 16;
/// One more verification is allowed this often: failing instances coming
/// at this pace are verified, however many over time.
pub const REFILL: Duration = Duration::from_secs(1);
/// How long a flood that outlived a clearing stops further ones.
pub const HOLD: Duration = Duration::from_secs(3600);

/// What to do about the failing instances gathered.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Verify these (the rest are let be).
    Verify(Vec<String>),
    /// Clear the cache: a flood of this many.
    Clear(usize),
}

/// The failing instances being gathered, the budget of verifications (a
/// token bucket), and the floods cleared.
#[derive(Debug)]
pub struct Verifications {
    budget: Bucket,
    /// The failing instances gathered, and when the gathering ends.
    gathered: Names,
    gathered_until: Option<Instant>,
    /// Instances of floods since the last clearing.
    flooded: Names,
    /// Instances of floods before the last clearing.
    cleared: Names,
    /// Until when no clearing is asked for.
    hold_until: Option<Instant>,
}

impl Verifications {
    /// A full budget at `now`.
    pub fn new(now: Instant) -> Self {
        Verifications {
            budget: Bucket::full(BURST, REFILL, now),
            gathered: Names::default(),
            gathered_until: None,
            flooded: Names::default(),
            cleared: Names::default(),
            hold_until: None,
        }
    }

    /// `instance` failed at `now`; whether that starts a hold (it was a
    /// flood's, cleared, and fails again).
    pub fn failed(&mut self, now: Instant, instance: &str) -> bool {
        let mut holds = false;
        if self.cleared.contains(instance) {
            // Back after a clearing: announced again, by a live stranger.
            holds = self.hold_until.is_none_or(|t| now >= t);
            self.hold_until = Some(now + HOLD);
        }
        self.gathered.insert(instance);
        self.gathered_until.get_or_insert(now + GATHER);
        holds
    }

    /// When the gathering ends.
    pub fn due(&self) -> Option<Instant> {
        self.gathered_until
    }

    /// The gathering ended at `now`: what to do.
    pub fn take(&mut self, now: Instant) -> Action {
        self.gathered_until = None;
        let gathered = std::mem::take(&mut self.gathered).into_vec();
        let held = self.hold_until.is_some_and(|t| now < t);
        if gathered.len() >= FLOOD && !held {
            for name in &gathered {
                self.flooded.insert(name);
            }
            return Action::Clear(gathered.len());
        }
        let budget = &mut self.budget;
        Action::Verify(gathered.into_iter().filter(|_| budget.take(now)).collect())
    }

    /// The cache was cleared: the floods' instances went with it, unless
    /// they come back; what was gathered is judged afresh.
    pub fn cleared(&mut self) {
        for name in std::mem::take(&mut self.flooded).into_vec() {
            self.cleared.insert(&name);
        }
        self.gathered = Names::default();
        self.gathered_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gathers `names` failing at `t`, and takes the gathering.
    fn gather(v: &mut Verifications, t: Instant, names: &[String]) -> Action {
        for n in names {
            v.failed(t, n);
        }
        assert_eq!(v.due(), Some(t + GATHER));
        v.take(t + GATHER)
    }

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    }

    #[test]
    fn a_few_are_verified_and_a_flood_is_cleared_unverified() {
        let t = Instant::now();
        let mut v = Verifications::new(t);
        assert_eq!(v.due(), None);
        let few = names("few", FLOOD - 1);
        assert_eq!(gather(&mut v, t, &few), Action::Verify(few.clone()));
        assert_eq!(v.due(), None);
        // The same one failing twice counts once.
        let mut flood = names("fake", FLOOD - 1);
        flood.push("fake-0".into());
        assert_eq!(
            gather(&mut v, t, &flood),
            Action::Verify(vec!["fake-0".into()])
        );
        let flood = names("fake", 3 * FLOOD);
        assert_eq!(gather(&mut v, t, &flood), Action::Clear(3 * FLOOD));
        v.cleared();
        // A new flood after the clearing is one again.
        assert_eq!(
            gather(&mut v, t, &names("new", FLOOD)),
            Action::Clear(FLOOD)
        );
    }

    #[test]
    fn a_flood_that_outlives_a_clearing_stops_them_for_a_while() {
        let t = Instant::now();
        let mut v = Verifications::new(t);
        assert_eq!(
            gather(&mut v, t, &names("fake", FLOOD)),
            Action::Clear(FLOOD)
        );
        v.cleared();
        // One of them fails again: the stranger announces them still. Only
        // the budget's worth is verified.
        let later = t + GATHER * 30;
        assert!(!v.failed(later, "new"));
        assert!(v.failed(later, "fake-3"), "a hold starts");
        assert!(!v.failed(later, "fake-4"), "once");
        let again = names("more", 2 * FLOOD);
        let Action::Verify(verified) = gather(&mut v, later, &again) else {
            panic!("cleared again");
        };
        assert_eq!(verified.len(), BURST as usize);
        // After the hold, a new flood is cleared again.
        let after = later + HOLD;
        assert_eq!(
            gather(&mut v, after, &names("late", FLOOD)),
            Action::Clear(FLOOD)
        );
    }
}
