//! Active health checks: whether a TCP service accepts connections, with
//! rise/fall hysteresis so one lost SYN does not flap an advertisement.
//!
//! Providers check their local service and advertise it only while it is up
//! (as Airbnb's Nerve does). Consumers may also check discovered backends;
//! their passive checks (connect failures) live in the table.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backends::table::{Backend, Target};
use crate::backends::Service;
use crate::net::dial::{dial, Concurrent, DialError};
use crate::net::pipeline::secure;
use crate::security::Tls;

/// Up/down with hysteresis: `rise` successes in a row to come up, `fall`
/// failures in a row to go down.
#[derive(Debug, Clone)]
pub struct Checker {
    rise: u32,
    fall: u32,
    up: bool,
    /// Results in a row that disagree with `up`.
    streak: u32,
    /// No result yet: the first success counts as `rise`, so a provider
    /// whose service is already running advertises it without delay.
    fresh: bool,
}

impl Checker {
    pub fn new(rise: u32, fall: u32) -> Checker {
        Checker {
            rise: rise.max(1),
            fall: fall.max(1),
            up: false,
            streak: 0,
            fresh: true,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Feeds one check result.
    pub fn observe(&mut self, ok: bool) {
        let fresh = std::mem::replace(&mut self.fresh, false);
        if ok == self.up {
            self.streak = 0;
            return;
        }
        self.streak += 1;
        let needed = if ok { self.rise } else { self.fall };
        if self.streak >= needed || (fresh && ok) {
            self.up = ok;
            self.streak = 0;
        }
    }
}

/// How long a check holds the connection it made, to see whether the
/// service closes it at once without a byte (a forwarder whose far end is
/// down, a service that crashes on each connection: socat's takes a few
/// ms). A server waits for its client to speak, or greets it: the check
/// passes then.
pub const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// Why a check found a service down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// No connection: refused, or no answer within the timeout.
    NoConnection,
    /// It took the connection and closed it at once without a byte.
    ClosedAtOnce,
}

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Down::NoConnection => "no connection",
            Down::ClosedAtOnce => "it closes each connection at once, unanswered",
        })
    }
}

/// Whether the target accepts a TCP connection within `timeout`, dialed
/// exactly as client connections are, so checks and clients agree, and
/// keeps it open for `grace` (at most `timeout`; see [`CLOSE_GRACE`]). An
/// error means the check could not be made (this process is out of
/// descriptors, ports or memory, or this host has no working link towards
/// the target): it says nothing about the target, so callers skip it
/// rather than count it as down.
pub async fn probe(
    target: &Target,
    timeout: Duration,
    grace: Duration,
) -> std::io::Result<Result<(), Down>> {
    let stream = match dial(target, timeout).await {
        Ok(stream) => stream,
        Err(DialError::Backend(_)) => return Ok(Err(Down::NoConnection)),
        Err(DialError::Local(e) | DialError::Unlinked(e)) => return Err(e),
    };
    if grace.is_zero() {
        return Ok(Ok(()));
    }
    let mut byte = [0; 1];
    match tokio::time::timeout(grace.min(timeout), stream.peek(&mut byte)).await {
        // End of stream or a reset, before a byte.
        Ok(Ok(0) | Err(_)) => Ok(Err(Down::ClosedAtOnce)),
        Ok(Ok(_)) | Err(_) => Ok(Ok(())),
    }
}

/// Whether a backend answers as it would for a client: the TCP connect
/// and, behind a TLS terminator, the handshake, so a port that accepts but
/// speaks no TLS is not taken for a working backend.
pub async fn reach(
    backend: &Backend,
    timeout: Duration,
    tls: Option<&Tls>,
) -> Result<(), DialError> {
    let stream = dial(&backend.spec.target, timeout).await?;
    secure(stream, backend, tls).await.map(drop)
}

/// Consumer-side active checks: every `every`, try a TCP connect to each
/// discovered backend. A failure ejects it and asks discovery to verify it,
/// so a crashed provider leaves the table even when no client is connecting.
pub async fn check_backends(
    svc: Arc<Service>,
    every: Duration,
    timeout: Duration,
    tls: Option<Arc<Tls>>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Probed concurrently by this task: no probe task to join, so no
        // join error can end a round early.
        let snap = svc.table.snapshot();
        let mut probes = Concurrent::new();
        for b in &snap.backends {
            let tls = tls.as_deref();
            probes.push(async move { (reach(b, timeout, tls).await, b) });
        }
        loop {
            // A shutdown does not wait for a round's slow probes.
            let (result, b) = tokio::select! {
                _ = stop.cancelled() => return,
                next = probes.next() => match next {
                    Some(done) => done,
                    None => break,
                },
            };
            let error = match result {
                Ok(_) => {
                    tracing::debug!(service = %svc.name, backend = %b.spec.target, "backend check ok");
                    if svc.table.report_success(&b.stats) {
                        info!(service = %svc.name, backend = %b.spec.target, "backend restored (check)");
                    }
                    continue;
                }
                // Out of descriptors or ports, or our own link down: says
                // nothing about the backend (the data plane's own dials say
                // the same, once per client).
                Err(DialError::Local(e) | DialError::Unlinked(e)) => {
                    tracing::debug!(service = %svc.name, backend = %b.spec.target, error = %e,
                        "backend check skipped");
                    continue;
                }
                Err(DialError::Backend(e)) => e,
            };
            tracing::debug!(service = %svc.name, backend = %b.spec.target, %error, "backend check failed");
            if let Some(period) = svc
                .table
                .report_failure(&b.stats, &format_args!("check: {error}"))
            {
                warn!(service = %svc.name, backend = %b.spec.target, eject_for = ?period, %error,
                    "backend failed its check: ejected");
            }
            svc.suspect(&b.spec.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::{Source, Suspects};

    #[test]
    fn rise_and_fall() {
        // (results fed, state after each)
        let cases: &[(u32, u32, &[bool], &[bool])] = &[
            (2, 2, &[true], &[true]), // a running service is up at once
            (2, 2, &[false, true, true], &[false, false, true]),
            (
                2,
                3,
                &[true, false, false, true, false, false, false],
                &[true, true, true, true, true, true, false],
            ),
            (
                3,
                1,
                &[true, false, true, true, true],
                &[true, false, false, false, true],
            ),
        ];
        for (rise, fall, results, states) in cases {
            let mut c = Checker::new(*rise, *fall);
            let got: Vec<bool> = results
                .iter()
                .map(|ok| {
                    c.observe(*ok);
                    c.is_up()
                })
                .collect();
            assert_eq!(&got, states, "rise {rise} fall {fall} {results:?}");
        }
    }

    #[tokio::test]
    async fn backend_checks_report_each_probe_as_it_finishes_and_stop_mid_round() {
        use crate::backends::balance::{Balancer, Policy};
        use crate::backends::table::{BackendSpec, Health, Origin, Table, Update};
        use std::net::SocketAddr;
        use tokio::net::TcpListener;

        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        // A listener with a full accept queue: its probe hangs.
        let silent = mesh_amb_lab::SilentListener::new();
        let silent_addr = silent.addr();

        let table = Arc::new(Table::new(Duration::from_secs(60)));
        let backends: [(&str, SocketAddr); 3] = [
            ("silent", silent_addr),
            ("refused", refused),
            ("up", up.local_addr().unwrap()),
        ];
        for (key, addr) in backends {
            table.apply(Update::Upsert(BackendSpec {
                key: key.into(),
                target: Target::Addrs(vec![addr]),
                weight: 1,
                draining: false,
                tls: false,
                origin: Origin::Static,
            }));
        }
        let snap = table.snapshot();
        // "up" failed a while ago: its check restores it.
        table.report_failure(&snap.backends[2].stats, &"refused");
        let (tx, mut suspects) = Suspects::channel(Duration::from_secs(4));
        let svc = Arc::new(Service {
            name: "redis".into(),
            table: table.clone(),
            balancer: Balancer::new(Policy::P2c),
            source: Source::Discovered(tx),
            listener: None,
            credentials: None,
            counters: Default::default(),
        });
        let stop = CancellationToken::new();
        let checks = tokio::spawn(check_backends(
            svc,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            None,
            stop.clone(),
        ));
        // Answers come while the silent backend's probe still hangs.
        let suspect = tokio::time::timeout(Duration::from_secs(15), suspects.recv())
            .await
            .expect("the refused backend is reported without waiting for the silent one");
        assert_eq!(suspect.as_deref(), Some("refused"));
        assert!(matches!(
            table.health(&snap.backends[1].stats),
            Health::Ejected { .. }
        ));
        let end = tokio::time::Instant::now() + Duration::from_secs(15);
        while table.health(&snap.backends[2].stats) != Health::Healthy {
            assert!(tokio::time::Instant::now() < end, "up was never restored");
            tokio::task::yield_now().await;
        }
        assert_eq!(table.health(&snap.backends[0].stats), Health::Healthy);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), checks)
            .await
            .expect("stopping does not wait for the silent probe")
            .unwrap();
    }

    #[tokio::test]
    async fn probe_sees_a_listener_and_its_absence() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let target = Target::Addrs(vec![addr]);
        // Nothing accepts it, nothing is said: a server waiting for its
        // client passes.
        assert_eq!(
            probe(&target, Duration::from_secs(5), CLOSE_GRACE)
                .await
                .unwrap(),
            Ok(())
        );
        drop(l);
        assert_eq!(
            probe(&target, Duration::from_secs(5), CLOSE_GRACE)
                .await
                .unwrap(),
            Err(Down::NoConnection)
        );
    }

    #[tokio::test]
    async fn probe_fails_a_service_that_closes_each_connection_at_once() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::Addrs(vec![l.local_addr().unwrap()]);
        let greets = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let serving = tokio::spawn({
            let greets = greets.clone();
            async move {
                loop {
                    let (mut c, _) = l.accept().await.unwrap();
                    if greets.load(std::sync::atomic::Ordering::Relaxed) {
                        // A greeting, then the close (a banner service).
                        let _ = tokio::io::AsyncWriteExt::write_all(&mut c, b"hi\r\n").await;
                    }
                }
            }
        });
        assert_eq!(
            probe(&target, Duration::from_secs(5), CLOSE_GRACE)
                .await
                .unwrap(),
            Err(Down::ClosedAtOnce)
        );
        greets.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            probe(&target, Duration::from_secs(5), CLOSE_GRACE)
                .await
                .unwrap(),
            Ok(())
        );
        serving.abort();
    }
}
