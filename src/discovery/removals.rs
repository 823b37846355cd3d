//! Removals reported by mdns-sd, applied at their time unless the instance
//! resolves again first, and held while this host has no working link
//! towards the instance.
//!
//! mdns-sd leaves an interface that is not running (down, or without
//! carrier: a cable pulled, Wi-Fi dropped, `ifdown`, a network service
//! restarted) and drops every record it learnt over it: each instance
//! reached that way is reported removed, though its node is still there
//! and its records had up to two minutes to live. A consumer whose link
//! went down for 3 s had every backend leave its table 2-5 s in, found
//! them again 4 s after the link came back, and closed the clients that
//! came meanwhile: 7 s without service. mDNSResponder keeps a flapping
//! interface's records and reconfirms them; here such a removal waits
//! while the link is down (at most [`HOLD_MOST`], as long as the records
//! would have lasted), then [`LINK_BACK_GRACE`] for the instance to
//! resolve again over the link come back (mdns-sd joins the interface
//! again at its next check, every 5 s, and asks the link at once).
//! Meanwhile the backend stays in the table: clients held for a backend
//! reach it the moment the link is back.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

/// The longest a removal is held while the link is down: the TTL of the
/// records mdns-sd dropped, so a backend stays no longer than they would
/// have without the interface's loss.
pub const HOLD_MOST: Duration = Duration::from_secs(120);
/// How often a held removal looks at the link again.
const RECHECK: Duration = Duration::from_secs(1);
/// How long a held instance has to resolve again once the link is back:
/// mdns-sd's interface check (5 s), a new IPv6 link-local address's
/// duplicate detection (1-2 s), its query and the answer, with room for a
/// loaded machine. One that left while the link was down is removed then.
pub const LINK_BACK_GRACE: Duration = Duration::from_secs(15);

/// When one removal is due, and since when it has been held for the link.
#[derive(Debug, Clone, Copy)]
struct Removal {
    at: Instant,
    held_since: Option<Instant>,
}

/// The removals waiting for their time, by instance.
#[derive(Debug, Default)]
pub struct Removals(HashMap<String, Removal>);

impl Removals {
    /// A removal of `name` reported at `now`, due after `grace`, or held
    /// when `unlinked` (this host has no working link towards the
    /// instance); the first report of an instance stands. Whether it is
    /// newly held.
    pub fn report(&mut self, name: String, now: Instant, grace: Duration, unlinked: bool) -> bool {
        let Entry::Vacant(slot) = self.0.entry(name) else {
            return false;
        };
        let removal = match unlinked {
            true => Removal {
                at: now + RECHECK,
                held_since: Some(now),
            },
            false => Removal {
                at: now + grace,
                held_since: None,
            },
        };
        slot.insert(removal);
        unlinked
    }

    /// `name` resolved again: its removal, if any, is off. Whether there
    /// was one.
    pub fn resolved(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }

    /// When the next removal is due.
    pub fn next(&self) -> Option<Instant> {
        self.0.values().map(|r| r.at).min()
    }

    /// Whether `name`'s removal is held for the link.
    pub fn is_held(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|r| r.held_since.is_some())
    }

    /// The removals due at `now`, to apply. A held one due is looked at
    /// again: held on while `unlinked(name)`, for at most [`HOLD_MOST`];
    /// given [`LINK_BACK_GRACE`] to resolve again once the link is back.
    pub fn due(&mut self, now: Instant, mut unlinked: impl FnMut(&str) -> bool) -> Vec<String> {
        let mut due = Vec::new();
        self.0.retain(|name, r| {
            if r.at > now {
                return true;
            }
            let Some(since) = r.held_since else {
                due.push(name.clone());
                return false;
            };
            if now.duration_since(since) >= HOLD_MOST {
                info!(instance = %name, held = ?HOLD_MOST,
                    "this host's link towards a backend mDNS dropped stayed down; it is let go");
                due.push(name.clone());
                return false;
            }
            if unlinked(name) {
                r.at = now + RECHECK;
            } else {
                debug!(instance = %name, "the link towards a backend kept is back; waiting for it to resolve again");
                *r = Removal {
                    at: now + LINK_BACK_GRACE,
                    held_since: None,
                };
            }
            true
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    #[test]
    fn a_removal_is_due_after_its_grace_unless_resolved_again() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        assert!(!r.report("a".into(), t0, GRACE, false));
        assert!(!r.report("b".into(), t0, GRACE, false));
        assert_eq!(r.next(), Some(t0 + GRACE));
        assert!(r.due(t0, |_| false).is_empty());
        assert!(r.resolved("b"));
        assert!(!r.resolved("b"));
        assert_eq!(r.due(t0 + GRACE, |_| false), ["a"]);
        assert_eq!(r.next(), None);
    }

    #[test]
    fn a_removal_without_a_link_is_held_until_the_link_is_back_then_given_time() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        assert!(r.report("a".into(), t0, GRACE, true));
        // Reported again meanwhile: the first report stands.
        assert!(!r.report("a".into(), t0, GRACE, false));
        assert!(r.is_held("a"));
        let mut t;
        for _ in 0..30 {
            t = r.next().unwrap();
            assert!(r.due(t, |_| true).is_empty(), "held while unlinked");
        }
        t = r.next().unwrap();
        assert!(r.due(t, |_| false).is_empty(), "the link is back");
        assert!(!r.is_held("a"));
        assert_eq!(r.next(), Some(t + LINK_BACK_GRACE));
        assert_eq!(r.due(t + LINK_BACK_GRACE, |_| true), ["a"]);
    }

    #[test]
    fn a_held_removal_resolved_again_is_off() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        r.report("a".into(), t0, GRACE, true);
        assert!(r.resolved("a"));
        assert_eq!(r.next(), None);
    }

    #[test]
    fn a_link_that_stays_down_lets_the_removal_through_after_the_records_ttl() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        r.report("a".into(), t0, GRACE, true);
        let mut t = t0;
        while t < t0 + HOLD_MOST {
            assert!(r.due(t, |_| true).is_empty());
            t = r.next().unwrap();
        }
        assert_eq!(r.due(t, |_| true), ["a"]);
    }
}
