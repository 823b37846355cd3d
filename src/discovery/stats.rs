//! What discovery ignored, dropped and probed, in one place: counters owned
//! by the node (see `NodeHandle::discovery_stats`), and a log that names
//! each ignored instance once, however often the link repeats it.
//!
//! Counters count events (mDNS repeats itself, so one instance may count
//! many times); the log counts instances, up to [`LOG_MEMORY`] of them.
//! When that memory is full the log pauses, and after [`LOG_WINDOW`] it
//! says how many events it held back and starts afresh: a flood costs a
//! bounded number of lines, and does not silence the log for good (a later
//! real problem, a member with a wrong key, is logged again).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use tracing::warn;

/// Distinct (instance, reason) pairs logged before the log falls silent and
/// only the counters go on: a stranger announcing 10,000 bad instances
/// costs a bounded set of names (~100 KB) and a bounded number of lines.
pub const LOG_MEMORY: usize = 1024;
/// How long a full log memory stays silent before it starts afresh.
pub const LOG_WINDOW: Duration = Duration::from_secs(600);

/// Discovery counters of one node.
#[derive(Debug, Default)]
pub struct DiscoveryStats {
    /// Browse events received from the link (resolved, removed, searches),
    /// dropped ones included.
    pub events: AtomicU64,
    /// Resolve events whose instance label is unusable: a dot, a control
    /// character, invalid UTF-8 (decoded lossily), empty or over 63 bytes.
    pub bad_name: AtomicU64,
    /// Resolve events advertising port 0.
    pub bad_port: AtomicU64,
    /// Resolve events with a TXT record over `wire::MAX_TXT_BYTES`.
    pub bad_txt: AtomicU64,
    /// Resolve events with no `svc` key, or one that is not a valid name.
    pub bad_service: AtomicU64,
    /// Instances this node cannot or will not dial: TLS-only without our
    /// key, or plain while we require TLS.
    pub tls_mismatch: AtomicU64,
    /// New instances turned away because their service's table was full.
    pub over_service_cap: AtomicU64,
    /// New instances turned away because all tables together were full.
    pub over_total_cap: AtomicU64,
    /// Browse events dropped because they came faster than they could be
    /// applied (a flood); a re-browse brings back what they said.
    pub events_dropped: AtomicU64,
    /// Instances whose every address is a listener of this node: dialing
    /// them would loop (a stranger's record pointing a service back into
    /// its ambassador).
    pub own_listener: AtomicU64,
    /// Never-answering instances dropped from a full table to make room.
    pub evicted: AtomicU64,
    /// Probation probes a new instance answered (it may take clients).
    pub probes_passed: AtomicU64,
    /// Probation probes that failed (the instance stays on probation).
    pub probes_failed: AtomicU64,
    /// With a cluster key: resolve events without a seal (plain
    /// Avahi/Bonjour services, keyless nodes).
    pub unsigned: AtomicU64,
    /// With a cluster key: a malformed seal, another cluster's key, or a
    /// record changed after signing.
    pub bad_signature: AtomicU64,
    /// With a cluster key: signed outside the validity window.
    pub stale_signature: AtomicU64,
    /// With a cluster key: older than a record accepted for the instance.
    pub replayed: AtomicU64,
    /// With a cluster key: validly signed, but none of the resolved
    /// addresses is signed (a copy sent by another host).
    pub foreign_address: AtomicU64,
    /// What was logged already, up to [`LOG_MEMORY`] pairs.
    logged: Mutex<LogMemory>,
}

/// The (instance, reason) pairs logged, and since when it is full.
#[derive(Debug, Default)]
struct LogMemory {
    pairs: HashSet<(String, &'static str)>,
    full: Option<(Instant, u64)>,
}

impl DiscoveryStats {
    /// Counts one event in `counter` and logs `instance` with `why` unless
    /// this pair was logged before. The name is logged escaped (`?`): it
    /// came from the link and may hold newlines or escape sequences.
    pub fn ignore(&self, counter: &AtomicU64, instance: &str, why: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut memory = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((since, held)) = &mut memory.full {
            if since.elapsed() < LOG_WINDOW {
                *held += 1;
                return;
            }
            warn!(
                "{held} more ignored mDNS records were counted, not logged, in the last {}",
                humantime::format_duration(LOG_WINDOW)
            );
            *memory = LogMemory::default();
        }
        if memory.pairs.insert((instance.to_owned(), why)) {
            warn!(instance = ?instance, "ignoring an mDNS instance: {why}");
            if memory.pairs.len() == LOG_MEMORY {
                warn!(
                    "{LOG_MEMORY} instances ignored and logged; for {} more are only \
                     counted, not logged",
                    humantime::format_duration(LOG_WINDOW)
                );
                memory.full = Some((Instant::now(), 0));
            }
        }
    }

    /// Resolve events ignored for any reason (flawed, unusable, over a
    /// cap); probes are not counted.
    pub fn ignored(&self) -> u64 {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            &self.bad_name,
            &self.bad_port,
            &self.bad_txt,
            &self.bad_service,
            &self.tls_mismatch,
            &self.own_listener,
            &self.over_service_cap,
            &self.over_total_cap,
            &self.unsigned,
            &self.bad_signature,
            &self.stale_signature,
            &self.replayed,
            &self.foreign_address,
        ]
        .into_iter()
        .map(v)
        .sum()
    }

    /// Every counter with its name, for a log line or an admin page.
    pub fn counters(&self) -> [(&'static str, u64); 17] {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("bad_name", v(&self.bad_name)),
            ("bad_port", v(&self.bad_port)),
            ("bad_txt", v(&self.bad_txt)),
            ("bad_service", v(&self.bad_service)),
            ("tls_mismatch", v(&self.tls_mismatch)),
            ("own_listener", v(&self.own_listener)),
            ("over_service_cap", v(&self.over_service_cap)),
            ("over_total_cap", v(&self.over_total_cap)),
            ("events_dropped", v(&self.events_dropped)),
            ("evicted", v(&self.evicted)),
            ("probes_passed", v(&self.probes_passed)),
            ("probes_failed", v(&self.probes_failed)),
            ("unsigned", v(&self.unsigned)),
            ("bad_signature", v(&self.bad_signature)),
            ("stale_signature", v(&self.stale_signature)),
            ("replayed", v(&self.replayed)),
            ("foreign_address", v(&self.foreign_address)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_is_logged_once_and_the_memory_is_bounded() {
        let s = DiscoveryStats::default();
        for _ in 0..100 {
            s.ignore(&s.bad_port, "a._amb._tcp.local.", "port 0");
        }
        assert_eq!(
            s.bad_port.load(Ordering::Relaxed),
            100,
            "every event counts"
        );
        let logged = |s: &DiscoveryStats| s.logged.lock().unwrap().pairs.len();
        assert_eq!(logged(&s), 1, "one line for the instance");
        s.ignore(&s.bad_txt, "a._amb._tcp.local.", "TXT too big");
        assert_eq!(logged(&s), 2, "a new reason is news");

        for i in 0..10 * LOG_MEMORY {
            s.ignore(&s.bad_name, &format!("x{i}"), "bad label");
        }
        assert_eq!(logged(&s), LOG_MEMORY);
        assert_eq!(s.bad_name.load(Ordering::Relaxed), 10 * LOG_MEMORY as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_log_memory_starts_afresh_after_its_window() {
        let s = DiscoveryStats::default();
        for i in 0..LOG_MEMORY {
            s.ignore(&s.bad_name, &format!("x{i}"), "bad label");
        }
        s.ignore(&s.bad_signature, "member", "bad signature");
        assert!(
            !s.logged
                .lock()
                .unwrap()
                .pairs
                .iter()
                .any(|(i, _)| i == "member"),
            "full: counted, not logged"
        );
        tokio::time::advance(LOG_WINDOW).await;
        s.ignore(&s.bad_signature, "member", "bad signature");
        let memory = s.logged.lock().unwrap();
        assert!(
            memory.pairs.iter().any(|(i, _)| i == "member"),
            "logged again"
        );
        assert_eq!(memory.pairs.len(), 1);
    }
}
