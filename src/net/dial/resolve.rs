//! Name resolution for static backends given by host name, cached.
//!
//! The system resolver (getaddrinfo) blocks, so tokio runs it on the
//! blocking pool; a timeout drops the future but not the lookup. Resolving
//! per connection therefore piles blocking threads up during a DNS outage,
//! one per client. Here each name has at most one lookup in flight, its
//! answer is kept for [`DNS_TTL`] and then refreshed in the background
//! while the old one keeps serving, and a failed refresh keeps the last
//! good answer: a DNS outage does not take down backends that are up.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, warn};

/// How long an answer is used before it is refreshed. getaddrinfo does not
/// tell the record's TTL; half a minute lets a backend that moved (a DNS
/// change) be followed within that time, as `Target::Name` promises, while
/// a burst of connections costs one lookup, not one each.
pub const DNS_TTL: Duration = Duration::from_secs(30);
/// After a failed refresh, the next one is tried this much later (or after
/// the TTL, if shorter): during a DNS outage a name costs one lookup and at
/// most one log line per period, not one per connection.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The outcome of one lookup, as the resolver needs it.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a host name and port into addresses; injectable so tests can
/// stand in for DNS.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, host: &str, port: u16) -> LookupFuture;
}

/// getaddrinfo, on tokio's blocking pool.
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str, port: u16) -> LookupFuture {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// A caching resolver; clones share the cache.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    lookup: Box<dyn Lookup>,
    /// Age at which an answer is refreshed.
    ttl: Duration,
    /// Per (host, port). Names come from the configuration, so this does
    /// not grow without bound.
    names: Mutex<HashMap<(String, u16), Entry>>,
}

/// A lookup's outcome as shared with everyone waiting for it.
type Outcome = Result<Arc<[SocketAddr]>, Arc<io::Error>>;

#[derive(Default)]
struct Entry {
    /// Last good answer and when it is due for a refresh.
    good: Option<(Arc<[SocketAddr]>, Instant)>,
    /// The refreshes since the last good answer failed (one warning per
    /// outage).
    failing: bool,
    /// The lookup in flight, if any; it publishes its outcome here.
    in_flight: Option<watch::Receiver<Option<Outcome>>>,
}

impl Entry {
    /// A lookup is running: its task has neither finished nor been dropped
    /// (with the runtime that ran it, say).
    fn running(&self) -> Option<&watch::Receiver<Option<Outcome>>> {
        self.in_flight
            .as_ref()
            .filter(|rx| rx.has_changed().is_ok() && rx.borrow().is_none())
    }
}

static SYSTEM: LazyLock<Resolver> =
    LazyLock::new(|| Resolver::new(Box::new(SystemLookup), DNS_TTL));

impl Resolver {
    pub fn new(lookup: Box<dyn Lookup>, ttl: Duration) -> Resolver {
        Resolver {
            inner: Arc::new(Inner {
                lookup,
                ttl,
                names: Mutex::default(),
            }),
        }
    }

    /// The process-wide resolver over the system's, which dials use.
    pub fn system() -> &'static Resolver {
        &SYSTEM
    }

    /// The addresses of `host`, from the cache when it has an answer (a
    /// stale one starts a refresh in the background), otherwise from the
    /// lookup in flight or a new one, waiting until `deadline` at most.
    /// Must run inside a tokio runtime.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> io::Result<Arc<[SocketAddr]>> {
        let mut rx = {
            let mut names = self.inner.names.lock().unwrap_or_else(|e| e.into_inner());
            let key = (host.to_owned(), port);
            let entry = names.entry(key.clone()).or_default();
            if let Some((addrs, due)) = &entry.good {
                let addrs = addrs.clone();
                if Instant::now() >= *due && entry.running().is_none() {
                    entry.in_flight = Some(self.start(key));
                }
                return Ok(addrs);
            }
            match entry.running() {
                Some(rx) => rx.clone(),
                None => {
                    let rx = self.start(key);
                    entry.in_flight = Some(rx.clone());
                    rx
                }
            }
        };
        let outcome = match timeout_at(deadline, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().expect("waited for it"),
            Ok(Err(_)) => return Err(io::Error::other("name lookup abandoned")),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "name lookup timed out",
                ))
            }
        };
        outcome.map_err(|e| copy_error(&e))
    }

    /// Starts a lookup of `key` in a task of its own, so that it completes
    /// (and its answer is kept) even when every dial waiting for it gives
    /// up. The caller records the receiver as the lookup in flight.
    fn start(&self, key: (String, u16)) -> watch::Receiver<Option<Outcome>> {
        let (tx, rx) = watch::channel(None);
        let inner = self.inner.clone();
        let lookup = inner.lookup.lookup(&key.0, key.1);
        tokio::spawn(async move {
            let outcome: Outcome = match lookup.await {
                Ok(addrs) if !addrs.is_empty() => Ok(addrs.into()),
                Ok(_) => Err(Arc::new(io::Error::new(
                    io::ErrorKind::NotFound,
                    "name has no address",
                ))),
                Err(e) => Err(Arc::new(e)),
            };
            let mut names = inner.names.lock().unwrap_or_else(|e| e.into_inner());
            let entry = names.entry(key.clone()).or_default();
            match &outcome {
                Ok(addrs) => {
                    debug!(host = %key.0, addresses = ?addrs, "name resolved");
                    entry.good = Some((addrs.clone(), Instant::now() + inner.ttl));
                    entry.failing = false;
                }
                Err(e) => {
                    if let Some((_, due)) = &mut entry.good {
                        *due = Instant::now() + inner.ttl.min(RETRY_AFTER_FAILURE);
                        if !std::mem::replace(&mut entry.failing, true) {
                            warn!(host = %key.0, error = %e,
                                "name lookup failed; keeping the last answer");
                        }
                    }
                }
            }
            entry.in_flight = None;
            // Under the lock, so nobody sees `in_flight` set to a finished one.
            let _ = tx.send(Some(outcome));
        });
        rx
    }
}

/// An owned copy of a shared error, keeping the OS error code so that
/// local errors (EMFILE from getaddrinfo) are still recognised as such.
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::backends::table::Target;
    use crate::net::dial::{dial_with, DialError};

    enum Mode {
        Hang,
        Answer(Vec<SocketAddr>),
        Fail,
    }

    /// A DNS stand-in that counts lookups and answers as told.
    struct Fake {
        calls: AtomicUsize,
        mode: Mutex<Mode>,
    }

    impl Fake {
        fn new(mode: Mode) -> Arc<Fake> {
            Arc::new(Fake {
                calls: AtomicUsize::new(0),
                mode: Mutex::new(mode),
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Lookup for Arc<Fake> {
        fn lookup(&self, _host: &str, _port: u16) -> LookupFuture {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match &*self.mode.lock().unwrap() {
                Mode::Hang => Box::pin(std::future::pending()),
                Mode::Answer(a) => Box::pin(std::future::ready(Ok(a.clone()))),
                Mode::Fail => Box::pin(std::future::ready(Err(io::Error::other("DNS down")))),
            }
        }
    }

    #[tokio::test]
    async fn many_dials_of_a_hanging_name_start_one_lookup() {
        let dns = Fake::new(Mode::Hang);
        let r = Resolver::new(Box::new(dns.clone()), DNS_TTL);
        let target = Target::Name("db.example".into(), 6379);
        let dials: Vec<_> = (0..100)
            .map(|_| {
                let (r, target) = (r.clone(), target.clone());
                tokio::spawn(
                    async move { dial_with(&r, &target, Duration::from_millis(200)).await },
                )
            })
            .collect();
        for d in dials {
            match d.await.unwrap() {
                Err(DialError::Backend(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(dns.calls(), 1, "one lookup in flight per name");
    }

    #[tokio::test]
    async fn the_last_good_answer_outlives_a_failed_refresh() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let dns = Fake::new(Mode::Answer(vec![addr]));
        // Every use finds the answer stale and refreshes it.
        let r = Resolver::new(Box::new(dns.clone()), Duration::ZERO);
        let target = Target::Name("db.example".into(), addr.port());
        let timeout = Duration::from_secs(5);

        let s = dial_with(&r, &target, timeout).await.expect("resolved");
        assert_eq!(s.peer_addr().unwrap(), addr);
        assert_eq!(dns.calls(), 1);

        *dns.mode.lock().unwrap() = Mode::Fail;
        let s = dial_with(&r, &target, timeout).await.expect("stale answer");
        assert_eq!(s.peer_addr().unwrap(), addr);
        let end = Instant::now() + Duration::from_secs(5);
        while dns.calls() < 2
            || r.inner.names.lock().unwrap()[&("db.example".into(), addr.port())]
                .running()
                .is_some()
        {
            assert!(Instant::now() < end, "the refresh never finished");
            tokio::task::yield_now().await;
        }

        let s = dial_with(&r, &target, timeout)
            .await
            .expect("the last good answer after a failed refresh");
        assert_eq!(s.peer_addr().unwrap(), addr);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_refresh_is_retried_once_per_period_not_per_dial() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let dns = Fake::new(Mode::Answer(vec![addr]));
        let r = Resolver::new(Box::new(dns.clone()), DNS_TTL);
        let far = || Instant::now() + Duration::from_secs(5);
        r.resolve("a", 1, far()).await.unwrap();
        assert_eq!(dns.calls(), 1);

        *dns.mode.lock().unwrap() = Mode::Fail;
        tokio::time::advance(DNS_TTL).await;
        r.resolve("a", 1, far()).await.expect("stale answer");
        // Let the refresh run (and fail).
        while r.inner.names.lock().unwrap()[&("a".into(), 1)]
            .running()
            .is_some()
        {
            tokio::task::yield_now().await;
        }
        assert_eq!(dns.calls(), 2);
        for _ in 0..100 {
            assert_eq!(&*r.resolve("a", 1, far()).await.unwrap(), [addr]);
        }
        assert_eq!(dns.calls(), 2, "no lookup per dial while DNS is down");
        tokio::time::advance(RETRY_AFTER_FAILURE).await;
        r.resolve("a", 1, far()).await.unwrap();
        assert_eq!(dns.calls(), 3, "retried after the period");
    }

    #[tokio::test]
    async fn a_fresh_answer_is_reused_and_errors_keep_their_os_code() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let dns = Fake::new(Mode::Answer(vec![addr]));
        let r = Resolver::new(Box::new(dns.clone()), DNS_TTL);
        let far = Instant::now() + Duration::from_secs(5);
        for _ in 0..10 {
            assert_eq!(&*r.resolve("a", 1, far).await.unwrap(), [addr]);
        }
        assert_eq!(dns.calls(), 1);

        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(copy_error(&emfile).raw_os_error(), Some(libc::EMFILE));
    }
}
