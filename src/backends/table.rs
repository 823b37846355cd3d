//! The live backend table of one consumed service.
//!
//! Membership changes arrive as [`Update`]s from one writer at a time (static
//! config at start, then discovery) and are published as an immutable
//! [`Snapshot`]; connection handlers load the current snapshot without taking
//! a lock. Health is different: it changes on the hot path (every failed
//! connect), so it lives in atomics shared by every snapshot that contains
//! the backend, and survives membership updates that keep the backend.
//!
//! A discovered backend starts on *probation*: anyone on the link can
//! advertise one, so it has not earned clients until it has answered once
//! (a probation probe or a client's connect). Balancers put proven backends
//! first, and a never-proven backend's failures are remembered for
//! [`UNPROVEN_EJECT_TIME`], not `--eject-time`. Static backends were typed
//! by the user: trusted from the start.

use std::fmt;
use std::net::{SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::spec::Host;

/// Cap on the ejection back-off, so a backend that comes back after a long
/// outage is retried within half a minute.
pub const MAX_EJECT_TIME: Duration = Duration::from_secs(30);
/// First ejection of a discovered backend that has never answered. Its
/// record is most likely stale or a stranger's, so one failure keeps it
/// out for half a minute rather than one second, and a flood of such
/// records costs a connect (by the probation probe) per instance per half
/// minute, not per second. A real provider is not held back by it: a
/// restart comes with a new record, on probation afresh and probed at once.
pub const UNPROVEN_EJECT_TIME: Duration = Duration::from_secs(30);
/// Cap of that back-off: a record that never answered costs one connect
/// per five minutes.
pub const MAX_UNPROVEN_EJECT_TIME: Duration = Duration::from_secs(300);

/// Silent closes in a row (no reply between them) that eject a backend
/// ([`Table::report_silent_close`]): a forwarder whose far end is down
/// closes every client's connection; one client's request that the server
/// drops unanswered must not eject it.
pub const SILENT_CLOSES_TO_EJECT: u32 = 3;
/// How long a silent close counts: longer than the back-off's cap, so a
/// backend that closes every connection stays ejected while it does; one
/// that has not done so for this long is taken at its connects again.
pub const SILENT_FOR: Duration = Duration::from_secs(60);
/// How long a backend of several addresses is dialed first at the one its
/// last connection went to, after which the target's order is tried again
/// (a first address that was only slow once is not passed over for good).
pub const PREFER_DIALED_FOR: Duration = Duration::from_secs(60);

/// Where to dial a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Resolved addresses, tried in order (discovery gives several, e.g. an
    /// IPv4 and a link-local IPv6 one).
    Addrs(Vec<SocketAddr>),
    /// A host name, resolved when dialed through a cache that is refreshed
    /// every `DNS_TTL` (30 s, see `net::dial::resolve`), so DNS changes take
    /// effect.
    Name(String, u16),
}

impl Target {
    pub fn from_host(host: &Host, port: u16) -> Target {
        match host {
            Host::Ip(ip) => Target::Addrs(vec![SocketAddr::new(*ip, port)]),
            Host::Scoped(ip, zone) => {
                // An interface gone since the start dials with no scope,
                // which the kernel refuses: the backend is down, not moved.
                let scope = crate::spec::zone_index(zone).unwrap_or(0);
                Target::Addrs(vec![SocketAddrV6::new(*ip, port, 0, scope).into()])
            }
            Host::Name(name) => Target::Name(name.clone(), port),
        }
    }
}

impl Target {
    /// Whether `new` shares nothing with `self`: the backend moved.
    fn moved_to(&self, new: &Target) -> bool {
        match (self, new) {
            (Target::Addrs(old), Target::Addrs(new)) => !old.iter().any(|a| new.contains(a)),
            (old, new) => old != new,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addrs(addrs) => {
                for (i, a) in addrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str("|")?;
                    }
                    write!(f, "{a}")?;
                }
                Ok(())
            }
            Target::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Add a backend or replace its attributes; repeating it is harmless.
    Upsert(BackendSpec),
    /// Drop a backend; removing an unknown key is harmless.
    Remove(String),
}

/// What a source knows about a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Stable identity across updates (e.g. `static:10.0.0.5:6379` or a
    /// DNS-SD instance name); health follows the key.
    pub key: String,
    /// Where to connect.
    pub target: Target,
    /// Relative share of new connections, >= 1.
    pub weight: u32,
    /// A draining backend finishes its connections but gets new ones only
    /// when nothing else is left.
    pub draining: bool,
    /// Reached through another ambassador's TLS terminator: dialed with
    /// mutual TLS.
    pub tls: bool,
    /// Who told us about it, for operators.
    pub origin: Origin,
}

/// Where a backend came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Typed by the user (`--consume NAME:PORT=HOST:PORT`).
    Static,
    /// Advertised by another ambassador (its record names its node).
    Mesh,
    /// Advertised by something else on the link: an Avahi service file, a
    /// Bonjour host (only `svc=` in its record).
    ThirdParty,
}

impl Origin {
    /// Its name, as the status API spells it (the page and `mesh-amb
    /// status` show the same).
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Static => "static",
            Origin::Mesh => "mesh",
            Origin::ThirdParty => "third_party",
        }
    }
}

/// Per-backend health and counters, shared across snapshots.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections currently proxied to this backend, dials in flight
    /// included (see [`ActiveGuard`]).
    pub active: AtomicU64,
    /// Connections proxied since the backend appeared.
    pub total: AtomicU64,
    /// Failed connections since the backend appeared: connects, TLS
    /// handshakes, logins, and connections it closed at once unanswered.
    pub failures: AtomicU64,
    /// Client-to-backend bytes, counted as they move.
    pub bytes_out: AtomicU64,
    /// Backend-to-client bytes, counted as they move.
    pub bytes_in: AtomicU64,
    /// The last login to this backend failed (`--credentials`): set by the
    /// failure that logs it, so that a burst of clients is one log line;
    /// cleared by the next login that succeeds.
    pub login_failing: AtomicBool,
    /// Connect failures in a row; drives the ejection back-off.
    consecutive_failures: AtomicU32,
    /// When it last closed a connection at once without a reply, in ms
    /// since the table's epoch; 0 = not since its last reply
    /// ([`Table::report_silent_close`]).
    silent_since_ms: AtomicU64,
    /// Such closes in a row: ejected for them from
    /// [`SILENT_CLOSES_TO_EJECT`] on, when only a reply ends the ejection
    /// (it takes every connect).
    silent_in_a_row: AtomicU32,
    /// End of the current ejection, in ms since the table's epoch; 0 = none.
    ejected_until_ms: AtomicU64,
    /// Answered a connect or a probe at least once since it appeared.
    answered: AtomicBool,
    /// Wall-clock time of the last change operators care about (joined,
    /// ejected, restored, moved, draining), in ms since the Unix epoch.
    changed_at_ms: AtomicU64,
    /// Why the last ejection started (the failure that started it).
    ejected_for: Mutex<Option<String>>,
    /// The address its last connection went to, of a target with several,
    /// when that was not the first, and since when: dialed first for
    /// [`PREFER_DIALED_FOR`] ([`crate::net::dial::dial_from`]).
    dialed: Mutex<Option<(SocketAddr, Instant)>>,
}

impl Stats {
    /// The address to dial first, if not the target's first: the one its
    /// last connection went to, for [`PREFER_DIALED_FOR`].
    pub fn dial_first(&self) -> Option<SocketAddr> {
        let dialed = *self.dialed.lock().unwrap_or_else(|e| e.into_inner());
        dialed
            .filter(|(_, since)| since.elapsed() < PREFER_DIALED_FOR)
            .map(|(addr, _)| addr)
    }

    /// Notes that a connection went to `addr`, `first` being the target's
    /// first address. The time is kept while the same address is noted
    /// again, so the preference ends.
    pub fn note_dialed(&self, addr: SocketAddr, first: SocketAddr) {
        let mut dialed = self.dialed.lock().unwrap_or_else(|e| e.into_inner());
        *dialed = match *dialed {
            _ if addr == first => None,
            Some((noted, since)) if noted == addr => Some((noted, since)),
            _ => Some((addr, Instant::now())),
        };
    }

    fn clear_ejection(&self) {
        self.silent_since_ms.store(0, Ordering::Relaxed);
        self.silent_in_a_row.store(0, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejected_until_ms.store(0, Ordering::Relaxed);
    }

    fn changed_now(&self) {
        self.changed_at_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// When the backend last changed state, in ms since the Unix epoch.
    pub fn changed_at_ms(&self) -> u64 {
        self.changed_at_ms.load(Ordering::Relaxed)
    }

    /// The failure that started the current (or last) ejection.
    pub fn ejected_for(&self) -> Option<String> {
        self.ejected_for
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connect failures in a row (0 once a connect succeeds).
    pub fn failing_in_a_row(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// As after `n` failed connects, its ejection over.
    #[cfg(test)]
    pub fn set_failing_in_a_row(&self, n: u32) {
        self.consecutive_failures.store(n, Ordering::Relaxed);
    }
}

/// Now, in ms since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One backend as of one snapshot.
#[derive(Debug)]
pub struct Backend {
    pub spec: BackendSpec,
    pub stats: Arc<Stats>,
}

/// One unit of a backend's `active` count, held from the start of a dial to
/// the end of the connection. Counting dials in flight lets the load-aware
/// policies spread a burst over backends that are slow to answer, instead
/// of sending all of it to the one that looked idle when it began.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Backend>);

impl ActiveGuard {
    pub fn new(backend: Arc<Backend>) -> ActiveGuard {
        backend.stats.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(backend)
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An immutable view of a service's backends.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub backends: Vec<Arc<Backend>>,
}

/// Health of a backend at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Failed recently; not offered first until the ejection ends.
    Ejected {
        remaining: Duration,
    },
}

/// The table of one consumed service.
pub struct Table {
    current: ArcSwap<Snapshot>,
    /// Serializes writers so concurrent updates cannot lose each other.
    writer: Mutex<()>,
    /// Reference point for the atomics holding instants.
    epoch: Instant,
    /// First ejection period; doubles per consecutive failure.
    eject_time: Duration,
    /// New backends must answer once before they count as proven
    /// (discovered backends); otherwise all are trusted (static ones).
    probation: bool,
    /// Ejections started, over every backend the table ever held.
    ejections: AtomicU64,
    /// Wakes the clients waiting for the backends to change
    /// ([`Table::changed_since`]).
    changed: Notify,
}

impl Table {
    /// A table of trusted backends (configured by the user).
    pub fn new(eject_time: Duration) -> Table {
        Table {
            current: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
            epoch: Instant::now(),
            eject_time,
            probation: false,
            ejections: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    /// A table whose new backends are on probation until they answer
    /// (discovered from the link).
    pub fn with_probation(eject_time: Duration) -> Table {
        Table {
            probation: true,
            ..Table::new(eject_time)
        }
    }

    /// Whether the backend may take clients ahead of others: trusted, or
    /// answered once.
    pub fn is_proven(&self, stats: &Stats) -> bool {
        !self.probation || stats.answered.load(Ordering::Relaxed)
    }

    /// Ejections started so far, of backends present or gone.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// The current backends; cheap and lock-free.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Applies a membership change. Returns whether the table changed, so
    /// the caller logs only real changes (discovery repeats itself a lot).
    pub fn apply(&self, update: Update) -> bool {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load();
        let mut backends: Vec<Arc<Backend>> = old.backends.clone();
        match update {
            Update::Upsert(spec) => match backends.iter().position(|b| b.spec.key == spec.key) {
                Some(i) if backends[i].spec == spec => return false,
                Some(i) => {
                    let stats = backends[i].stats.clone();
                    if backends[i].spec.draining != spec.draining {
                        stats.changed_now();
                    }
                    if backends[i].spec.target.moved_to(&spec.target) {
                        stats.changed_now();
                        // New addresses deserve a fresh chance: the failures
                        // were those of the old ones. An address added beside
                        // the failing ones (mDNS resolves IPv4 and IPv6 in
                        // separate events) is no such news. Nor have they
                        // answered yet: back on probation, so a name that was
                        // proven cannot vouch for wherever it points next.
                        stats.clear_ejection();
                        stats.answered.store(false, Ordering::Relaxed);
                    }
                    backends[i] = Arc::new(Backend { spec, stats });
                }
                None => {
                    let stats = Arc::new(Stats::default());
                    stats.changed_now();
                    backends.push(Arc::new(Backend { spec, stats }));
                }
            },
            Update::Remove(key) => {
                let before = backends.len();
                backends.retain(|b| b.spec.key != key);
                if backends.len() == before {
                    return false;
                }
            }
        }
        self.current.store(Arc::new(Snapshot { backends }));
        self.changed.notify_waiters();
        true
    }

    /// Returns once the backends are no longer those of `seen` (at once if
    /// they changed already). Health changes do not count: only a backend
    /// added, changed or removed.
    pub async fn changed_since(&self, seen: &Arc<Snapshot>) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the look, so a change in between wakes it.
            changed.as_mut().enable();
            if !Arc::ptr_eq(&self.current.load(), seen) {
                return;
            }
            changed.await;
        }
    }

    /// Milliseconds since the epoch, never 0 (0 means "not ejected").
    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `at` in milliseconds since the epoch, never 0.
    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    pub fn health(&self, stats: &Stats) -> Health {
        let until = stats.ejected_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        if until > now {
            Health::Ejected {
                remaining: Duration::from_millis(until - now),
            }
        } else {
            Health::Healthy
        }
    }

    /// Records a failed connect (`why` it failed) and ejects the backend for
    /// a back-off period that doubles with each failure in a row. Returns
    /// the ejection period when this failure started a new ejection (for a
    /// log line); failures racing in during an ejection only count.
    ///
    /// Concurrent failures (a burst of clients all dialing a backend that
    /// just died) race to start the ejection: a compare-and-swap on its end
    /// picks one winner, which alone advances the back-off, so one outage
    /// moves it one step and no loser can overwrite the winner's period.
    pub fn report_failure(&self, stats: &Stats, why: &dyn fmt::Display) -> Option<Duration> {
        stats.failures.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let until = stats.ejected_until_ms.load(Ordering::Acquire);
        if until > now {
            return None;
        }
        let n = stats.consecutive_failures.load(Ordering::Acquire);
        let (first, cap) = if self.is_proven(stats) {
            (self.eject_time, MAX_EJECT_TIME)
        } else {
            (UNPROVEN_EJECT_TIME, MAX_UNPROVEN_EJECT_TIME)
        };
        let first = first.max(self.eject_time);
        let period = first.saturating_mul(1u32 << n.min(16)).min(cap.max(first));
        stats
            .ejected_until_ms
            .compare_exchange(
                until,
                now + period.as_millis() as u64,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .ok()?;
        stats.consecutive_failures.fetch_add(1, Ordering::Release);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        *stats.ejected_for.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
        stats.changed_now();
        Some(period)
    }

    /// Records a connection that the backend took, then closed at once
    /// without a byte of reply (a forwarder whose far end is down, a
    /// service that crashes on each request; p2c even favoured it, its
    /// connections being the shortest). [`SILENT_CLOSES_TO_EJECT`] of them
    /// in a row, each within [`SILENT_FOR`] of the one before, are a
    /// failure, as [`Table::report_failure`]; fewer only count (one can be
    /// a client's doing: a request the server drops unanswered, memcached's
    /// `noreply` and `quit`). While it is so ejected, a connect that
    /// succeeds ends neither the ejection nor the run of failures, which so
    /// doubles; a reply does ([`Table::report_reply`]).
    pub fn report_silent_close(&self, stats: &Stats, why: &dyn fmt::Display) -> Option<Duration> {
        let now = self.now_ms();
        let last = stats.silent_since_ms.swap(now, Ordering::Relaxed);
        let in_a_row = if last != 0 && now - last < SILENT_FOR.as_millis() as u64 {
            stats.silent_in_a_row.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            stats.silent_in_a_row.store(1, Ordering::Relaxed);
            1
        };
        if in_a_row < SILENT_CLOSES_TO_EJECT {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.report_failure(stats, why)
    }

    /// Whether the backend is ejected for its silent closes (enough of
    /// them in a row, the last within [`SILENT_FOR`]).
    fn closes_silently(&self, stats: &Stats) -> bool {
        let since = stats.silent_since_ms.load(Ordering::Relaxed);
        since != 0
            && self.now_ms() - since < SILENT_FOR.as_millis() as u64
            && stats.silent_in_a_row.load(Ordering::Relaxed) >= SILENT_CLOSES_TO_EJECT
    }

    /// Records a reply from the backend on a connection it took at `began`:
    /// its silent closes are no longer in a row, and true when that ends
    /// its ejection for them (it is back, worth a log line). Only a
    /// connection taken after the last silent close counts: one taken
    /// before, whose far end failed meanwhile, replied then, not now.
    pub fn report_reply(&self, stats: &Stats, began: Instant) -> bool {
        let since = stats.silent_since_ms.load(Ordering::Relaxed);
        if since == 0
            || self.ms_at(began) < since
            || stats
                .silent_since_ms
                .compare_exchange(since, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        if stats.silent_in_a_row.swap(0, Ordering::Relaxed) < SILENT_CLOSES_TO_EJECT {
            return false;
        }
        stats.clear_ejection();
        stats.changed_now();
        true
    }

    /// Records a successful connect. Returns true when this ends a run of
    /// failures (the backend is back, worth a log line); not for a backend
    /// ejected for its silent closes, which every connect reaches.
    pub fn report_success(&self, stats: &Stats) -> bool {
        stats.answered.store(true, Ordering::Relaxed);
        if self.closes_silently(stats) {
            return false;
        }
        let failing = stats.consecutive_failures.load(Ordering::Relaxed) != 0;
        // An ejection whose failure count is not in yet (a success that
        // landed between `report_failure`'s compare-and-swap and its count)
        // ends too: the backend just answered.
        if failing || stats.ejected_until_ms.load(Ordering::Relaxed) != 0 {
            stats.clear_ejection();
            stats.changed_now();
        }
        failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &str, port: u16) -> BackendSpec {
        BackendSpec {
            key: key.into(),
            target: Target::Addrs(vec![SocketAddr::from(([127, 0, 0, 1], port))]),
            weight: 1,
            draining: false,
            tls: false,
            origin: Origin::Static,
        }
    }

    #[tokio::test]
    async fn a_client_waiting_for_the_backends_wakes_at_a_change_and_not_before() {
        let t = Arc::new(Table::with_probation(Duration::from_secs(1)));
        let empty = t.snapshot();
        let waiting = tokio::spawn({
            let (t, empty) = (t.clone(), empty.clone());
            async move { t.changed_since(&empty).await }
        });
        // A removal of what is not there changes nothing, and wakes nobody.
        assert!(!t.apply(Update::Remove("a".into())));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "woke with no change");
        assert!(t.apply(Update::Upsert(spec("a", 1))));
        let soon = Duration::from_secs(10);
        tokio::time::timeout(soon, waiting)
            .await
            .expect("not woken by the first backend")
            .unwrap();
        // A change already made is not waited for.
        tokio::time::timeout(soon, t.changed_since(&empty))
            .await
            .expect("waited for a change already made");
        // An ejection is no change of the backends.
        let one = t.snapshot();
        t.report_failure(&one.backends[0].stats, &"refused");
        let waiting = tokio::spawn({
            let (t, one) = (t.clone(), one.clone());
            async move { t.changed_since(&one).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "woke at an ejection");
        assert!(t.apply(Update::Remove("a".into())));
        tokio::time::timeout(soon, waiting)
            .await
            .expect("not woken by the removal")
            .unwrap();
    }

    #[test]
    fn upserts_are_idempotent_and_keep_health() {
        let t = Table::new(Duration::from_secs(1));
        assert!(t.apply(Update::Upsert(spec("a", 1))));
        assert!(!t.apply(Update::Upsert(spec("a", 1))), "repeat is a no-op");
        let stats = t.snapshot().backends[0].stats.clone();
        stats.total.store(7, Ordering::Relaxed);

        let mut moved = spec("a", 2);
        moved.draining = true;
        assert!(t.apply(Update::Upsert(moved.clone())));
        let snap = t.snapshot();
        assert_eq!(snap.backends.len(), 1);
        assert_eq!(snap.backends[0].spec, moved);
        assert_eq!(snap.backends[0].stats.total.load(Ordering::Relaxed), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_ends_an_ejection_whose_count_is_not_in_yet() {
        let t = Table::new(Duration::from_secs(1));
        let s = Stats::default();
        // As `report_failure` leaves it between its CAS and its count.
        s.ejected_until_ms
            .store(t.now_ms() + 1000, Ordering::Relaxed);
        assert!(matches!(t.health(&s), Health::Ejected { .. }));
        assert!(!t.report_success(&s), "no run of failures to report");
        assert_eq!(t.health(&s), Health::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn an_added_address_keeps_the_ejection_a_move_ends_it() {
        let t = Table::new(Duration::from_secs(1));
        t.apply(Update::Upsert(spec("a", 1)));
        let stats = t.snapshot().backends[0].stats.clone();
        assert!(t.report_failure(&stats, &"refused").is_some());

        let mut more = spec("a", 1);
        let Target::Addrs(addrs) = &mut more.target else {
            unreachable!()
        };
        addrs.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 1)));
        assert!(t.apply(Update::Upsert(more)));
        assert!(
            matches!(t.health(&stats), Health::Ejected { .. }),
            "still ejected"
        );

        assert!(t.apply(Update::Upsert(spec("a", 2))));
        assert_eq!(t.health(&stats), Health::Healthy, "moved: a fresh chance");
    }

    #[tokio::test(start_paused = true)]
    async fn discovered_backends_are_on_probation_until_they_answer() {
        let trusted = Table::new(Duration::from_secs(1));
        let t = Table::with_probation(Duration::from_secs(1));
        let s = Stats::default();
        assert!(trusted.is_proven(&s), "static backends are trusted");
        assert!(!t.is_proven(&s));
        assert_eq!(
            t.report_failure(&s, &"refused"),
            Some(UNPROVEN_EJECT_TIME),
            "a never-proven failure is remembered long"
        );
        tokio::time::advance(UNPROVEN_EJECT_TIME).await;
        assert_eq!(
            t.report_failure(&s, &"refused"),
            Some(UNPROVEN_EJECT_TIME * 2)
        );
        for _ in 0..10 {
            tokio::time::advance(MAX_UNPROVEN_EJECT_TIME).await;
            t.report_failure(&s, &"refused");
        }
        assert!(
            matches!(t.health(&s), Health::Ejected { remaining } if remaining <= MAX_UNPROVEN_EJECT_TIME)
        );

        assert!(t.report_success(&s));
        assert!(t.is_proven(&s));
        assert_eq!(t.health(&s), Health::Healthy);
        assert_eq!(
            t.report_failure(&s, &"refused"),
            Some(Duration::from_secs(1)),
            "proven: the ordinary back-off"
        );
    }

    #[test]
    fn an_origin_reads_the_same_on_the_page_and_in_the_api() {
        for o in [Origin::Static, Origin::Mesh, Origin::ThirdParty] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_that_closes_silently_stays_ejected_until_it_replies() {
        let t = Table::new(Duration::from_secs(1));
        let s = Stats::default();
        let why = &"closed the connection at once without a reply";
        // One or two can be a client's doing: counted, not ejected.
        for _ in 1..SILENT_CLOSES_TO_EJECT {
            assert_eq!(t.report_silent_close(&s, why), None);
            assert_eq!(t.health(&s), Health::Healthy);
        }
        assert_eq!(
            t.report_silent_close(&s, why),
            Some(Duration::from_secs(1)),
            "in a row: ejected"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.health(&s), Health::Healthy, "tried again after it");
        assert!(!t.report_success(&s), "a connect is no news from it");
        assert_eq!(
            t.report_silent_close(&s, why),
            Some(Duration::from_secs(2)),
            "the run of failures goes on"
        );
        assert!(!t.report_success(&s));
        assert!(matches!(t.health(&s), Health::Ejected { .. }));
        let taken_before = Instant::now() - Duration::from_millis(10);
        assert!(
            !t.report_reply(&s, taken_before),
            "a reply on a connection taken before its last silent close"
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(t.report_reply(&s, Instant::now()), "a reply ends it");
        assert_eq!(t.health(&s), Health::Healthy);
        assert!(
            !t.report_reply(&s, Instant::now()),
            "only the first reply is news"
        );
        assert_eq!(
            t.report_failure(&s, &"refused"),
            Some(Duration::from_secs(1)),
            "a fresh run"
        );
        assert!(t.report_success(&s), "a connect ends a refusal's ejection");

        // Silent closes far apart are not in a row; a reply between two
        // breaks the row too.
        let s = Stats::default();
        for _ in 0..SILENT_CLOSES_TO_EJECT {
            assert_eq!(t.report_silent_close(&s, why), None);
            tokio::time::advance(SILENT_FOR).await;
        }
        assert_eq!(t.report_silent_close(&s, why), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!t.report_reply(&s, Instant::now()), "no ejection to end");
        assert_eq!(t.report_silent_close(&s, why), None);
        assert_eq!(t.report_silent_close(&s, why), None);
        assert_eq!(
            s.failures.load(Ordering::Relaxed),
            u64::from(SILENT_CLOSES_TO_EJECT) + 3,
            "each counted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_address_dialed_is_preferred_for_a_while_unless_it_is_the_first() {
        let s = Stats::default();
        let (a, b) = (
            SocketAddr::from(([10, 0, 0, 1], 1)),
            SocketAddr::from(([10, 0, 0, 2], 1)),
        );
        assert_eq!(s.dial_first(), None);
        s.note_dialed(b, a);
        assert_eq!(s.dial_first(), Some(b));
        tokio::time::advance(PREFER_DIALED_FOR / 2).await;
        s.note_dialed(b, a);
        tokio::time::advance(PREFER_DIALED_FOR / 2).await;
        assert_eq!(s.dial_first(), None, "the preference ends");
        s.note_dialed(b, a);
        s.note_dialed(a, a);
        assert_eq!(s.dial_first(), None, "the first worked: no preference");
    }
    #[test]
    fn a_proven_name_that_moves_is_back_on_probation() {
        let t = Table::with_probation(Duration::from_secs(1));
        t.apply(Update::Upsert(spec("a", 1)));
        let stats = t.snapshot().backends[0].stats.clone();
        t.report_success(&stats);
        assert!(t.is_proven(&stats));
        let mut more = spec("a", 1);
        let Target::Addrs(addrs) = &mut more.target else {
            unreachable!()
        };
        addrs.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 1)));
        t.apply(Update::Upsert(more));
        assert!(t.is_proven(&stats), "an added address is no move");
        t.apply(Update::Upsert(spec("a", 2)));
        assert!(!t.is_proven(&stats), "somewhere new has not answered yet");
    }

    #[test]
    fn removals_are_idempotent() {
        let t = Table::new(Duration::from_secs(1));
        t.apply(Update::Upsert(spec("a", 1)));
        t.apply(Update::Upsert(spec("b", 2)));
        let before = t.snapshot();
        assert!(t.apply(Update::Remove("a".into())));
        assert!(!t.apply(Update::Remove("a".into())));
        assert!(!t.apply(Update::Remove("zzz".into())));
        assert_eq!(t.snapshot().backends.len(), 1);
        assert_eq!(before.backends.len(), 2, "old snapshots are immutable");
    }

    #[test]
    fn concurrent_failures_start_one_ejection_of_the_first_step() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 500;
        let t = Table::new(Duration::from_secs(1));
        let stats: Vec<Stats> = (0..ROUNDS).map(|_| Stats::default()).collect();
        let barrier = std::sync::Barrier::new(THREADS);
        let results: Vec<Vec<Option<Duration>>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        stats
                            .iter()
                            .map(|s| {
                                barrier.wait();
                                t.report_failure(s, &"refused")
                            })
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for (round, s) in stats.iter().enumerate() {
            let started: Vec<Duration> = results.iter().filter_map(|r| r[round]).collect();
            assert_eq!(
                started,
                [Duration::from_secs(1)],
                "round {round}: one ejection, of the first back-off step"
            );
            assert_eq!(s.failures.load(Ordering::Relaxed), THREADS as u64);
            assert_eq!(s.consecutive_failures.load(Ordering::Relaxed), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_backs_off_and_success_restores() {
        let t = Table::new(Duration::from_secs(1));
        let s = Stats::default();
        assert_eq!(t.health(&s), Health::Healthy);

        assert_eq!(
            t.report_failure(&s, &"refused"),
            Some(Duration::from_secs(1))
        );
        assert!(matches!(t.health(&s), Health::Ejected { .. }));
        assert_eq!(t.report_failure(&s, &"refused"), None, "already ejected");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(t.health(&s), Health::Healthy);

        assert_eq!(
            t.report_failure(&s, &"refused"),
            Some(Duration::from_secs(2))
        );
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert_eq!(
            t.report_failure(&s, &"refused"),
            Some(Duration::from_secs(4))
        );
        for _ in 0..10 {
            tokio::time::advance(MAX_EJECT_TIME).await;
            t.report_failure(&s, &"refused");
        }
        match t.health(&s) {
            Health::Ejected { remaining } => assert!(remaining <= MAX_EJECT_TIME),
            h => panic!("{h:?}"),
        }
        assert_eq!(s.failures.load(Ordering::Relaxed), 14);

        assert!(t.report_success(&s));
        assert_eq!(t.health(&s), Health::Healthy);
        assert!(!t.report_success(&s), "only the first success is news");
        assert_eq!(
            t.report_failure(&s, &"refused"),
            Some(Duration::from_secs(1)),
            "back-off reset"
        );
    }
}
