//! A consumed service's own counters: what its clients saw, whichever
//! backends served them. Backends come and go with discovery and take their
//! [`Stats`](super::table::Stats) with them; these stay for the service's
//! life, so a Prometheus rate never jumps backwards when a backend leaves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the connect latency buckets, in seconds: from a
/// loopback dial (tens of µs) to a TLS handshake across a slow link, and the
/// connect timeouts' range. The last bucket, `+Inf`, is implicit.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counters of one consumed service, updated lock-free on the data path.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Client connections accepted.
    pub clients: AtomicU64,
    /// Client connections closed without a backend (none known, none
    /// answered, credentials refused, the client left first).
    pub turned_away: AtomicU64,
    /// Clients held for a backend (none known, or every one tried failed:
    /// [`crate::net::pipeline::connect`]), now; it also caps them.
    pub waiting: AtomicU64,
    /// Client-to-backend bytes, counted as they move.
    pub bytes_out: AtomicU64,
    /// Backend-to-client bytes, counted as they move.
    pub bytes_in: AtomicU64,
    /// Time from a client's accept to its backend being ready (dial, TLS,
    /// login, the failed candidates before it, and a wait for a backend).
    pub connect_latency: Histogram,
}

/// A fixed-bucket histogram of durations ([`LATENCY_BUCKETS`]): one atomic
/// add per bucket it falls in, no lock, nothing allocated.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts, one per bucket and one for `+Inf`.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// What a [`Histogram`] held at one instant.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`,
    /// cumulative as Prometheus has them; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (le, count) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            running += count.load(Ordering::Relaxed);
            buckets.push((*le, running));
        }
        let count = running + self.counts[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // on the first bound
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10)); // beyond the last: +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[3], (0.005, 2));
        assert_eq!(s.buckets.last(), Some(&(2.5, 2)));
        assert!((s.sum - 10.0035).abs() < 1e-9, "{}", s.sum);
    }
}
