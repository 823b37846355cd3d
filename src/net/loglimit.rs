//! Warnings that a burst could repeat thousands of times a second (clients
//! turned away while every backend is down, handshakes a scanner fails):
//! at most one line a second, which says how many it held back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// At most one warning per [`LogLimit::EVERY`], counting what it held back.
pub struct LogLimit {
    /// The limit's first use: what `last_ms` counts from.
    start: OnceLock<Instant>,
    /// When the last line was let through, in ms since `start` (0 = never).
    last_ms: AtomicU64,
    /// Lines held back since.
    held: AtomicU64,
}

impl LogLimit {
    pub const EVERY: Duration = Duration::from_secs(1);

    pub const fn new() -> LogLimit {
        LogLimit {
            start: OnceLock::new(),
            last_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` when this line may be logged.
    pub fn admit(&self) -> Option<u64> {
        let now = self.start.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= Self::EVERY.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_line_a_second_with_a_count() {
        let limit = LogLimit::new();
        assert_eq!(limit.admit(), Some(0), "the first line goes out");
        for _ in 0..500 {
            assert_eq!(limit.admit(), None, "a burst is held back");
        }
        tokio::time::advance(LogLimit::EVERY).await;
        assert_eq!(limit.admit(), Some(500), "then one line counts the rest");
        assert_eq!(limit.admit(), None);
    }
}
