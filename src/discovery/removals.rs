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

/// When one removal is due, and what it waits for.
#[derive(Debug, Clone, Copy)]
struct Removal {
    at: Instant,
    link: Link,
}

/// What a removal's wait has to do with this host's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Nothing: an ordinary removal.
    Up,
    /// Held while the link is down, since then.
    Down { since: Instant },
    /// The link came back: the instance has until `at` to resolve again
    /// (held since `since`, counted towards [`HOLD_MOST`] if the link
    /// goes again meanwhile).
    Back { since: Instant },
}

/// The removals waiting for their time, by instance.
#[derive(Debug, Default)]
pub struct Removals {
    waiting: HashMap<String, Removal>,
    /// Whether the link came back for a held removal since
    /// [`Removals::link_came_back`] was last asked.
    back: bool,
}

impl Removals {
    /// A removal of `name` reported at `now`, due after `grace`, or held
    /// when `unlinked` (this host's link towards the instance is down).
    /// Reported again: held on while unlinked; otherwise due after `grace`
    /// at the latest (a goodbye that comes while a held instance has yet
    /// to resolve again waits no longer than any other). Whether it is
    /// newly held.
    pub fn report(&mut self, name: String, now: Instant, grace: Duration, unlinked: bool) -> bool {
        match self.waiting.entry(name) {
            Entry::Vacant(slot) => {
                let removal = match unlinked {
                    true => Removal {
                        at: now + RECHECK,
                        link: Link::Down { since: now },
                    },
                    false => Removal {
                        at: now + grace,
                        link: Link::Up,
                    },
                };
                slot.insert(removal);
                unlinked
            }
            Entry::Occupied(mut slot) => {
                let r = slot.get_mut();
                if !unlinked {
                    r.at = r.at.min(now + grace);
                    r.link = Link::Up;
                }
                false
            }
        }
    }

    /// `name`'s removal, if an ordinary one, waits until `at` at least:
    /// the link was asked about the instance, and its answer is on the
    /// way.
    pub fn wait_until(&mut self, name: &str, at: Instant) {
        if let Some(r) = self.waiting.get_mut(name).filter(|r| r.link == Link::Up) {
            r.at = r.at.max(at);
        }
    }

    /// Every ordinary removal waits until `at` at least: the cache is
    /// being learnt afresh, and the answers are on the way.
    pub fn wait_all_until(&mut self, at: Instant) {
        for r in self.waiting.values_mut().filter(|r| r.link == Link::Up) {
            r.at = r.at.max(at);
        }
    }

    /// `name` resolved again: its removal, if any, is off. Whether there
    /// was one.
    pub fn resolved(&mut self, name: &str) -> bool {
        self.waiting.remove(name).is_some()
    }

    /// Whether a removal of `name` waits.
    pub fn waits(&self, name: &str) -> bool {
        self.waiting.contains_key(name)
    }

    /// When the next removal is due.
    pub fn next(&self) -> Option<Instant> {
        self.waiting.values().map(|r| r.at).min()
    }

    /// Whether `name`'s removal waits for the link (held, or given time
    /// to resolve again once it is back).
    pub fn is_held(&self, name: &str) -> bool {
        self.waiting.get(name).is_some_and(|r| r.link != Link::Up)
    }

    /// The removals due at `now`, to apply. A held one due is looked at
    /// again: held on while `unlinked(name)`, for at most [`HOLD_MOST`] in
    /// all; given [`LINK_BACK_GRACE`] to resolve again once the link is
    /// back, and held again if the link has gone again by then (a flapping
    /// link: mdns-sd, having dropped it, would not report it again).
    pub fn due(&mut self, now: Instant, mut unlinked: impl FnMut(&str) -> bool) -> Vec<String> {
        let mut due = Vec::new();
        let back = &mut self.back;
        self.waiting.retain(|name, r| {
            if r.at > now {
                return true;
            }
            let since = match r.link {
                Link::Up => {
                    due.push(name.clone());
                    return false;
                }
                Link::Down { since } | Link::Back { since } => since,
            };
            let down = unlinked(name);
            if down && now.duration_since(since) >= HOLD_MOST {
                info!(instance = %name, held = ?HOLD_MOST,
                    "this host's link towards an instance mDNS dropped stayed down; it is let go");
            }
            match (down, r.link) {
                (true, _) if now.duration_since(since) < HOLD_MOST => {
                    *r = Removal {
                        at: now + RECHECK,
                        link: Link::Down { since },
                    };
                    true
                }
                (false, Link::Down { .. }) => {
                    debug!(instance = %name, "the link towards an instance kept is back; waiting for it to resolve again");
                    *back = true;
                    *r = Removal {
                        at: now + LINK_BACK_GRACE,
                        link: Link::Back { since },
                    };
                    true
                }
                _ => {
                    due.push(name.clone());
                    false
                }
            }
        });
        due
    }

    /// Whether a removal waits for its instance to resolve again over the
    /// link come back.
    pub fn awaits_link_back(&self) -> bool {
        self.waiting
            .values()
            .any(|r| matches!(r.link, Link::Back { .. }))
    }

    /// Whether the link towards a held removal came back since this was
    /// last asked: a node that only provides then asks the link
    /// (`mdns::browse`), as mdns-sd does for a browse that queries.
    pub fn link_came_back(&mut self) -> bool {
        std::mem::take(&mut self.back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    /// Steps `r` from one due time to the next, the link down at `t` when
    /// `down(t)`, until a removal is applied: when that was.
    fn applied_at(r: &mut Removals, t0: Instant, down: impl Fn(Duration) -> bool) -> Duration {
        let mut t = t0;
        while r.due(t, |_| down(t - t0)).is_empty() {
            t = r.next().expect("a removal waits");
        }
        t - t0
    }

    /// A removal of "a" held at `t0`, and the link back at its first
    /// recheck: when that was.
    fn held_then_back(r: &mut Removals, t0: Instant) -> Instant {
        assert!(r.report("a".into(), t0, GRACE, true));
        let t = r.next().expect("held");
        assert!(!r.link_came_back());
        assert!(r.due(t, |_| false).is_empty());
        assert!(r.link_came_back(), "said once");
        assert!(!r.link_came_back());
        assert!(r.awaits_link_back());
        t
    }

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
    fn a_removal_asked_about_waits_for_the_answer_but_a_held_one_is_left() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        r.report("a".into(), t0, GRACE, false);
        r.wait_until("a", t0 + 3 * GRACE);
        r.wait_until("a", t0 + 2 * GRACE);
        assert!(r.due(t0 + 2 * GRACE, |_| false).is_empty());
        assert_eq!(r.due(t0 + 3 * GRACE, |_| false), ["a"]);
        r.report("b".into(), t0, GRACE, true);
        r.wait_until("b", t0 + HOLD_MOST * 2);
        r.wait_until("c", t0);
        assert_eq!(r.next(), Some(t0 + RECHECK), "held: looked at as before");
    }

    #[test]
    fn a_removal_without_a_link_is_held_until_the_link_is_back_then_given_time() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        assert!(r.report("a".into(), t0, GRACE, true));
        // Reported again while the link is down: held on.
        assert!(!r.report("a".into(), t0, GRACE, true));
        assert!(r.is_held("a"));
        let back = Duration::from_secs(30);
        let applied = applied_at(&mut r, t0, |t| t < back);
        assert!(applied >= back + LINK_BACK_GRACE, "{applied:?}");
        assert!(applied <= back + RECHECK + LINK_BACK_GRACE, "{applied:?}");
    }

    #[test]
    fn a_held_removal_resolved_again_is_off() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        held_then_back(&mut r, t0);
        assert!(r.is_held("a"), "it waits for the instance to resolve again");
        assert!(r.resolved("a"));
        assert_eq!(r.next(), None);
    }

    #[test]
    fn a_removal_reported_again_with_the_link_up_waits_no_longer_than_any() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        let t = held_then_back(&mut r, t0);
        assert_eq!(r.next(), Some(t + LINK_BACK_GRACE));
        // Its goodbye, say, while it has yet to resolve again.
        r.report("a".into(), t, GRACE, false);
        assert!(!r.is_held("a"));
        assert_eq!(r.due(t + GRACE, |_| true), ["a"]);
    }

    #[test]
    fn a_link_that_goes_again_before_the_instance_resolved_holds_it_again() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        r.report("a".into(), t0, GRACE, true);
        let (back, again) = (Duration::from_secs(10), Duration::from_secs(20));
        let up = |t: Duration| (back..again).contains(&t);
        let applied = applied_at(&mut r, t0, |t| !up(t));
        assert!(applied >= HOLD_MOST, "{applied:?}");
        assert!(applied <= HOLD_MOST + RECHECK, "{applied:?}");
    }

    #[test]
    fn a_link_that_stays_down_lets_the_removal_through_after_the_records_ttl() {
        let t0 = Instant::now();
        let mut r = Removals::default();
        r.report("a".into(), t0, GRACE, true);
        let applied = applied_at(&mut r, t0, |_| true);
        assert!(applied >= HOLD_MOST, "{applied:?}");
        assert!(applied <= HOLD_MOST + RECHECK, "{applied:?}");
    }
}
