//! Client load for the fault scenarios (tests/faults.rs): client threads
//! inside a lab host, each looping `SET`, `GET` (checked) and `GET whoami`
//! on a new connection through an ambassador, recording every request.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use mesh_amb_lab::{wait_until, Deadline, Host};

use super::mesh::command;

/// How long a client waits for one reply before it counts the request as
/// failed. Far above anything the ambassador should take, even on an
/// impaired link (its dial gives up on a backend after 1 s and tries
/// another), so that a slow request is measured as slow, not as lost.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between one client's requests: a steady load that leaves CPU for
/// the processes under test on a 2-core machine.
const PACE: Duration = Duration::from_millis(5);

/// What one request (one connection: SET, GET, GET whoami) saw.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it started.
    pub start: Instant,
    /// When it ended (answered or failed).
    pub end: Instant,
    /// The host that answered `GET whoami`, or why the request failed.
    pub outcome: Result<String, String>,
}

impl Sample {
    /// Whether it failed.
    pub fn failed(&self) -> bool {
        self.outcome.is_err()
    }

    /// The host that served it.
    pub fn who(&self) -> Option<&str> {
        self.outcome.as_deref().ok()
    }
}

/// `clients` threads in `host`, each requesting through `port` until
/// [`Load::finish`].
pub struct Load {
    /// Set by [`Load::finish`].
    stop: Arc<AtomicBool>,
    /// Every request so far, in completion order.
    samples: Arc<Mutex<Vec<Sample>>>,
    /// The client threads.
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(host: &Host, port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|c| {
                let (stop, samples) = (stop.clone(), samples.clone());
                host.thread(move || {
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let start = Instant::now();
                        let outcome = round_trip(addr, &format!("k{c}"), &format!("v{c}-{n}"));
                        samples.lock().unwrap().push(Sample {
                            start,
                            end: Instant::now(),
                            outcome,
                        });
                        std::thread::sleep(PACE);
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            threads,
        }
    }

    /// A copy of the requests so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Requests that ended so far.
    pub fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Waits until `n` requests that started after `t` have ended.
    pub fn wait_requests_after(&self, t: Instant, n: usize, deadline: Duration) {
        let count = || {
            self.samples
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.start > t)
                .count()
        };
        assert!(
            wait_until(deadline, || count() >= n),
            "the clients stalled: {} of {n} requests after the mark",
            count()
        );
    }

    /// Waits (within `deadline`) until a request that started after `t`
    /// was served by `who`; when it ended.
    pub fn wait_served_by_after(
        &self,
        who: &str,
        t: Instant,
        deadline: impl Into<Deadline>,
    ) -> Option<Instant> {
        mesh_amb_lab::wait_for(deadline, || {
            self.samples
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.start > t && s.who() == Some(who))
                .map(|s| s.end)
        })
    }

    /// Stops the clients; every request they made.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join().expect("client thread");
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

impl Drop for Load {
    /// A test that fails midway must not leave its clients running into
    /// the next test of the process.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection: `SET key value`, `GET key` (must give `value` back)
/// and `GET whoami` (the serving host's name).
fn round_trip(addr: SocketAddr, key: &str, value: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let set = command(&mut s, &["SET", key, value]).ok_or("SET: no reply")?;
    if set != "+OK" {
        return Err(format!("SET answered {set}"));
    }
    let got = command(&mut s, &["GET", key]).ok_or("GET: no reply")?;
    if got != value {
        return Err(format!("GET answered {got}, not {value}"));
    }
    let who = command(&mut s, &["GET", "whoami"]).ok_or("GET whoami: no reply")?;
    if who.starts_with('-') || who == "$-1" {
        return Err(format!("GET whoami answered {who}"));
    }
    Ok(who)
}

/// Failed requests among `samples`.
pub fn failures(samples: &[Sample]) -> usize {
    samples.iter().filter(|s| s.failed()).count()
}

/// The distinct reasons of the failed requests, with counts, and when the
/// first few started (UTC, as in the ambassadors' logs), for messages.
pub fn failure_reasons(samples: &[Sample]) -> String {
    let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut when = Vec::new();
    let (now, wall) = (Instant::now(), SystemTime::now());
    for s in samples {
        if let Err(e) = &s.outcome {
            *reasons.entry(e.as_str()).or_default() += 1;
            if when.len() < 5 {
                let start = wall - now.duration_since(s.start);
                let took = s.end - s.start;
                when.push(format!(
                    "{} ({took:.1?})",
                    humantime::format_rfc3339_millis(start)
                ));
            }
        }
    }
    if when.is_empty() {
        return "none".into();
    }
    format!("{reasons:?}, starting at {}", when.join(", "))
}
