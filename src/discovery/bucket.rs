//! A token bucket: a burst at once, then one more each refill period,
//! for what a stranger's flood would otherwise make every node send.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    burst: u32,
    refill: Duration,
    /// Tokens left.
    left: u32,
    /// When the last token was added (or the bucket was full).
    filled_at: Instant,
}

impl Bucket {
    /// `burst` tokens at `now`, one more each `refill` up to `burst`.
    pub fn full(burst: u32, refill: Duration, now: Instant) -> Self {
        Bucket {
            burst,
            refill,
            left: burst,
            filled_at: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.fill(now);
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }

    /// Returns a token taken for something that was not done.
    pub fn give_back(&mut self) {
        self.left = (self.left + 1).min(self.burst);
    }

    /// Whether it is full again at `now`: one made afresh is the same.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.fill(now);
        self.left == self.burst
    }

    fn fill(&mut self, now: Instant) {
        let earned = (now.saturating_duration_since(self.filled_at).as_nanos()
            / self.refill.as_nanos())
        .min(u128::from(self.burst)) as u32;
        if earned > 0 {
            self.left = (self.left + earned).min(self.burst);
            // A fraction of a period carries over, unless the bucket is
            // full.
            self.filled_at = if self.left == self.burst {
                now
            } else {
                self.filled_at + self.refill * earned
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_refills_at_its_pace_up_to_the_burst() {
        const BURST: u32 = 16;
        const REFILL: Duration = Duration::from_secs(1);
        let t = Instant::now();
        let mut b = Bucket::full(BURST, REFILL, t);
        assert!(b.is_full(t));
        for _ in 0..BURST {
            assert!(b.take(t));
        }
        assert!(!b.take(t));
        assert!(!b.is_full(t));
        // Half a refill period carries over to the next.
        let later = t + REFILL * 3 + REFILL / 2;
        for _ in 0..3 {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
        assert!(b.take(t + REFILL * 4));
        assert!(!b.take(t + REFILL * 4));

        // One at each refill, for ever: never refused.
        let mut at = t + REFILL * 4;
        for _ in 0..100 {
            at += REFILL;
            assert!(b.take(at));
        }
        // A long quiet refills the burst and no more.
        let quiet = at + REFILL * 1000;
        assert!(b.is_full(quiet));
        for _ in 0..BURST {
            assert!(b.take(quiet));
        }
        assert!(!b.take(quiet));
    }
}
