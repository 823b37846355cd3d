//! One consumed service: its table, its balancer, and where its backends
//! come from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backends::balance::Balancer;
use crate::backends::counters::ServiceCounters;
use crate::backends::table::Table;
use crate::credentials::Credentials;

/// One consumed service.
pub struct Service {
    /// Name as in `--consume NAME:PORT`.
    pub name: String,
    /// Live backends.
    pub table: Arc<Table>,
    /// Policy applied to each snapshot.
    pub balancer: Balancer,
    /// Whether the backends were configured or are discovered.
    pub source: Source,
    /// The address its listener is bound to (the consume's `--bind` and
    /// port): a discovered record that names it, or another listener of
    /// the node, is refused, since dialing it would loop.
    pub listener: Option<SocketAddr>,
    /// The login made to every backend connection before the client's
    /// bytes flow (`--credentials`), if any.
    pub credentials: Option<Arc<Credentials>>,
    /// What its clients saw, whichever backends served them; shared with
    /// the service a reload replaces it by.
    pub counters: Arc<ServiceCounters>,
}

/// Where a service's backends come from.
pub enum Source {
    /// Listed in the configuration; nothing to verify.
    Static,
    /// Fed by discovery, which re-verifies the records of failing backends.
    Discovered(Arc<Suspects>),
}

impl Service {
    /// Asks discovery to re-verify a failing backend, if it is discovered.
    pub fn suspect(&self, key: &str) {
        if let Source::Discovered(suspects) = &self.source {
            suspects.report(key);
        }
    }

    /// Whether discovery feeds this service's table.
    pub fn is_discovered(&self) -> bool {
        matches!(self.source, Source::Discovered(_))
    }
}

/// Most suspects queued for discovery at once. Verifications are cheap but
/// each one is a multicast query: a burst of failures beyond this is
/// dropped, and the next failure of the same backend asks again.
pub const SUSPECTS_CAPACITY: usize = 64;

/// The data plane's side of the channel to discovery: backends whose
/// connects failed, each reported at most once per `period`, so a burst of
/// failed connects neither floods the LAN nor grows a queue while the
/// browse task is busy elsewhere.
pub struct Suspects {
    tx: mpsc::Sender<String>,
    /// When each key was last queued.
    recent: Mutex<HashMap<String, Instant>>,
    /// Minimum time between two reports of one key.
    period: Duration,
}

impl Suspects {
    /// A sender, and the receiver discovery drains.
    pub fn channel(period: Duration) -> (Arc<Suspects>, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(SUSPECTS_CAPACITY);
        let s = Suspects {
            tx,
            recent: Mutex::new(HashMap::new()),
            period,
        };
        (Arc::new(s), rx)
    }

    /// Queues `key` for verification unless it was queued within the
    /// period or the queue is full. Never blocks.
    pub fn report(&self, key: &str) {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.get(key).is_some_and(|t| now - *t < self.period) {
            return;
        }
        if self.tx.try_send(key.to_owned()).is_ok() {
            recent.retain(|_, t| now - *t < self.period);
            recent.insert(key.to_owned(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reports_are_bounded_and_deduplicated_at_the_sender() {
        let period = Duration::from_secs(4);
        let (s, mut rx) = Suspects::channel(period);
        for _ in 0..1000 {
            s.report("a");
        }
        assert_eq!(rx.try_recv().as_deref(), Ok("a"));
        assert!(rx.try_recv().is_err(), "one report per period");

        // Many distinct keys while nobody drains: the queue stays bounded
        // and reporting never blocks.
        for i in 0..10 * SUSPECTS_CAPACITY {
            s.report(&format!("k{i}"));
        }
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, SUSPECTS_CAPACITY);

        // A key dropped because the queue was full is reported next time.
        s.report(&format!("k{}", 10 * SUSPECTS_CAPACITY - 1));
        assert!(rx.try_recv().is_ok());

        tokio::time::advance(period).await;
        s.report("a");
        assert_eq!(rx.try_recv().as_deref(), Ok("a"), "again after the period");
    }
}
