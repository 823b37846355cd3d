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
//! So verifications are budgeted: [`BURST`] at once, then one per
//! [`REFILL`]. A failing instance beyond the budget asks for a clearing
//! of the cache instead (see `replay::Clearing`, which paces them): it
//! drops every record of the type at once, the fresh browse relearns the
//! live instances from their answers, and what it does not find is swept
//! once its responder does not answer for it (see `reconfirm`: a unicast
//! question to one host, not a multicast to all).

use std::time::Duration;

use tokio::time::Instant;

/// Verifications sent at once: a few stale records (a crashed host's
/// services) are verified one by one, as before.
pub const BURST: u32 = 16;
/// One more verification is allowed this often: failing instances coming
/// at this pace are verified, however many over time.
pub const REFILL: Duration = Duration::from_secs(1);

/// The browse's budget of verifications (a token bucket).
#[derive(Debug)]
pub struct Verifications {
    /// Verifications allowed now.
    left: u32,
    /// When the last token was added (or the bucket was full).
    filled_at: Instant,
    /// Failing instances refused a verification since the last clearing.
    refused: usize,
}

impl Verifications {
    /// A full budget at `now`.
    pub fn new(now: Instant) -> Self {
        Verifications {
            left: BURST,
            filled_at: now,
            refused: 0,
        }
    }

    /// Whether a failing instance may be verified at `now`; if not, it is
    /// counted as part of a flood (see [`Verifications::refused`]).
    pub fn admit(&mut self, now: Instant) -> bool {
        let earned = (now.saturating_duration_since(self.filled_at).as_nanos() / REFILL.as_nanos())
            .min(u128::from(BURST)) as u32;
        if earned > 0 {
            self.left = (self.left + earned).min(BURST);
            self.filled_at = if self.left == BURST {
                now
            } else {
                self.filled_at + REFILL * earned
            };
        }
        if self.left == 0 {
            self.refused += 1;
            return false;
        }
        self.left -= 1;
        true
    }

    /// The failing instances refused a verification since the last
    /// clearing.
    pub fn refused(&self) -> usize {
        self.refused
    }

    /// The cache was cleared: what was refused went with it.
    pub fn cleared(&mut self) {
        self.refused = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_are_verified_and_a_flood_is_refused() {
        let t = Instant::now();
        let mut v = Verifications::new(t);
        for _ in 0..BURST {
            assert!(v.admit(t));
        }
        assert!(!v.admit(t), "the burst is spent");
        assert!(!v.admit(t + REFILL / 2));
        assert_eq!(v.refused(), 2);
        v.cleared();
        assert_eq!(v.refused(), 0);
    }

    #[test]
    fn the_budget_refills_at_its_pace_up_to_the_burst() {
        let t = Instant::now();
        let mut v = Verifications::new(t);
        for _ in 0..BURST {
            assert!(v.admit(t));
        }
        // Half a refill period carries over to the next.
        let later = t + REFILL * 3 + REFILL / 2;
        for _ in 0..3 {
            assert!(v.admit(later));
        }
        assert!(!v.admit(later));
        assert!(v.admit(t + REFILL * 4));
        assert!(!v.admit(t + REFILL * 4));

        // One at each refill, for ever: never refused.
        let mut at = t + REFILL * 4;
        for _ in 0..100 {
            at += REFILL;
            assert!(v.admit(at));
        }
        // A long quiet refills the burst and no more.
        let quiet = at + REFILL * 1000;
        for _ in 0..BURST {
            assert!(v.admit(quiet));
        }
        assert!(!v.admit(quiet));
        assert_eq!(v.refused(), 3);
    }
}
