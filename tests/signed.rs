//! Signed advertisements across separate network stacks: real `mesh-amb`,
//! `redis-server` and `avahi-daemon` processes in a namespace lab
//! (lab/src/lib.rs), each node holding a key file from `mesh-amb keygen`.
//! The rogue host publishes with `avahi-publish` (or the lab's raw
//! [`Rogue`] advertiser) from its own address and counts the connections
//! it receives. No multicast leaves the lab.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

mod common;

use mesh_amb::discovery::mdns::unix_now;
use mesh_amb::discovery::wire::{self, State};
use mesh_amb::security::advert::{AdvertKey, Fields, MAX_SKEW, VALIDITY};
use mesh_amb::security::ClusterKey;

use mesh_amb_lab::{
    announcement_packets, wait_for, wait_until, AvahiGuard, FakeInstance, Host, Lab, Proc, Rogue,
};

use common::mesh::*;

/// Client requests made while rogues are advertised: with the weight the
/// rogues claim (1000 against the provider's 1), any rogue the consumer
/// accepted would take nearly all of them.
const REQUESTS: usize = 40;
/// Port of the real Redis in the provider's namespace (its own stack).
const REDIS_PORT: u16 = 12345;
/// The provider's TLS terminator (the SRV port), fixed so that a rogue can
/// listen on the same port at its own address.
const TLS_PORT: u16 = 12346;
/// Consumer port in the consumer's namespace.
const CONSUME_PORT: u16 = 6379;
/// What the consumer log says, once per refused instance.
const IGNORING: &str = "ignoring an mDNS instance";

fn load(path: &Path) -> ClusterKey {
    ClusterKey::load(path).unwrap()
}

/// `GET whoami` through the consumer port of `client`.
fn whoami(client: &Host, port: u16) -> Option<String> {
    client.enter(|| request(local(port), &["GET", "whoami"]))
}

/// The full name of instance `label`, as log lines show it.
fn instance(label: &str) -> String {
    format!("{label}._amb._tcp.local.")
}

/// A TCP listener in a host that counts the connections it accepts (and
/// holds): a provider's local service, or the
/// rogue's.
struct Counter {
    addr: SocketAddr,
    host: Host,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Counter {
    fn new(host: &Host) -> Counter {
        Counter::on(host, 0)
    }

    /// On `port` of every address of `host` (0: one the kernel picks).
    fn on(host: &Host, port: u16) -> Counter {
        let listener = host.enter(|| TcpListener::bind(("0.0.0.0", port)).unwrap());
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (accepted, stop) = (accepted.clone(), stop.clone());
            move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if conn.is_ok() {
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    hold(conn);
                }
            }
        });
        Counter {
            addr,
            host: host.clone(),
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept up, from inside the namespace.
        let port = self.port();
        let _ = self.host.enter(|| TcpStream::connect(local(port)));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The TXT strings of a rogue advert of `svc=redis` under `label` on
/// `port`, with weight 1000 and `tls=1` (as the cluster's own, so that only
/// the seal tells them apart), sealed with `key` at `signed_at` over
/// `addrs`.
fn sealed_txt(
    key: &ClusterKey,
    label: &str,
    port: u16,
    addrs: &[IpAddr],
    signed_at: u64,
) -> Vec<String> {
    let mut txt = wire::txt("redis", "rogue", 1000, State::Up, true);
    let fields = Fields {
        label,
        service: "redis",
        node: "rogue",
        port,
        weight: 1000,
        state: "up",
        tls: true,
    };
    txt.extend(AdvertKey::new(key).sign(&fields, signed_at, addrs));
    txt.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn publish(host: &Host, label: &str, port: u16, txt: &[String]) -> Proc {
    let txt: Vec<&str> = txt.iter().map(String::as_str).collect();
    host.avahi_publish(label, "_amb._tcp", port, &txt)
}

/// A provider of `redis` with `key` on h1 (its terminator on [`TLS_PORT`]),
/// a consumer with `key` on h2, routed; and avahi-daemon on h3 for the
/// rogue.
struct Mesh {
    lab: Lab,
    key: PathBuf,
    _redis: Proc,
    _provider: Proc,
    consumer: Proc,
    _avahi: AvahiGuard,
}

/// The keyed provider `h1` of Redis on `h1`, through its terminator on
/// [`TLS_PORT`].
fn keyed_provider(h1: &Host, key: &str) -> Proc {
    amb(
        h1,
        &[
            "--provide",
            &format!("redis:{REDIS_PORT}@{TLS_PORT}"),
            "--node-id",
            "h1",
            "--cluster-key",
            key,
        ],
    )
}

fn mesh() -> Mesh {
    let lab = Lab::new(3);
    let key = keygen(lab.dir(), "cluster.key");
    let avahi = lab.host("h3").start_avahi();
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let redis = redis(h1, REDIS_PORT);
    let k = key.to_str().unwrap();
    let provider = keyed_provider(h1, k);
    let consumer = amb(h2, &["--consume", "redis:6379", "--cluster-key", k]);
    wait_routed_to(h2, CONSUME_PORT, "h1");
    Mesh {
        lab,
        key,
        _redis: redis,
        _provider: provider,
        consumer,
        _avahi: avahi,
    }
}

impl Mesh {
    /// Waits until the consumer has refused every one of `labels` (one
    /// log line each, with `reason`).
    fn wait_refused(&self, labels: &[(&str, &str)]) {
        for (label, reason) in labels {
            let inst = instance(label);
            let seen = wait_until(DEADLINE, || {
                log_lines(&self.consumer, &[IGNORING, &inst, reason]) == 1
            });
            assert!(
                seen,
                "the consumer did not refuse {label} ({reason}):\n{}",
                self.consumer.output_tail(40)
            );
        }
    }

    /// Every one of [`REQUESTS`] client requests through the consumer is
    /// served by the real provider.
    fn all_served_by_h1(&self) {
        let h2 = self.lab.host("h2");
        for i in 0..REQUESTS {
            assert_eq!(
                whoami(h2, CONSUME_PORT).as_deref(),
                Some("h1"),
                "request {i}:\n{}",
                self.consumer.output_tail(40)
            );
        }
    }
}

#[test]
fn a_signed_provider_serves_a_consumer_with_the_key() {
    let lab = Lab::new(2);
    let key = keygen(lab.dir(), "cluster.key");
    let k = key.to_str().unwrap();
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let _redis = redis(h1, REDIS_PORT);
    let provider = amb(
        h1,
        &[
            "--provide",
            "redis:12345",
            "--node-id",
            "h1",
            "--cluster-key",
            k,
        ],
    );
    let keyed = amb(h2, &["--consume", "redis:6379", "--cluster-key", k]);
    wait_routed_to(h2, CONSUME_PORT, "h1");
    let h1_ip = h1.ip.to_string();
    assert!(
        log_lines(&provider, &["consumers may dial", &h1_ip]) >= 1,
        "the provider names the addresses it signs:\n{}",
        provider.output_tail(20)
    );
    assert!(
        log_lines(&keyed, &["only signed ones are used"]) == 1,
        "{}",
        keyed.output_tail(20)
    );
    assert_eq!(log_lines(&keyed, &[IGNORING]), 0, "{}", keyed.stderr());
    // The provider listens too, and hears its own record, at first at
    // times with its loopback addresses alone: not a stranger's copy.
    assert_eq!(
        log_lines(&provider, &[IGNORING]),
        0,
        "{}",
        provider.stderr()
    );
}

#[test]
fn a_consumer_with_another_clusters_key_ignores_the_provider_and_says_so_once() {
    let lab = Lab::new(2);
    let ours = keygen(lab.dir(), "ours.key");
    let theirs = keygen(lab.dir(), "theirs.key");
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let _redis = redis(h1, REDIS_PORT);
    let provider_args = [
        "--provide",
        "redis:12345",
        "--node-id",
        "h1",
        "--cluster-key",
        theirs.to_str().unwrap(),
    ];
    let _provider = amb(h1, &provider_args);
    let stranger = amb(
        h2,
        &[
            "--consume",
            "redis:6379",
            "--cluster-key",
            ours.to_str().unwrap(),
        ],
    );
    // The provider's records do reach h2: a consumer of its cluster uses it.
    let _member = amb(
        h2,
        &[
            "--consume",
            "redis:6380",
            "--cluster-key",
            theirs.to_str().unwrap(),
        ],
    );
    wait_routed_to(h2, 6380, "h1");
    let inst = instance("redis@h1");
    let refused = wait_until(DEADLINE, || {
        log_lines(&stranger, &[IGNORING, &inst, "bad signature"]) == 1
    });
    assert!(refused, "{}", stranger.output_tail(40));
    assert_ne!(whoami(h2, CONSUME_PORT).as_deref(), Some("h1"));

    // More records of the same instance: h1 gains an address, and its
    // provider signs and announces a new record at its next check.
    let resolved = |p: &Proc| log_lines(p, &["mdns: resolved", &inst]);
    let before = resolved(&stranger);
    h1.run_ok("ip", ["addr", "add", "10.77.0.201/24", "dev", "eth0"]);
    let more = wait_until(DEADLINE, || resolved(&stranger) > before);
    assert!(more, "{}", stranger.output_tail(40));
    assert_eq!(
        log_lines(&stranger, &[IGNORING, &inst]),
        1,
        "one line per instance, not per record:\n{}",
        stranger.stderr()
    );
    assert_ne!(whoami(h2, CONSUME_PORT).as_deref(), Some("h1"));
}

#[test]
fn a_rogue_host_gets_no_connection_unsigned_badly_signed_or_replaying() {
    let m = mesh();
    let (h1, h3) = (m.lab.host("h1"), m.lab.host("h3"));
    let rogue = Counter::new(h3);
    let port = rogue.port();
    let key = load(&m.key);
    let now = unix_now();

    // The real provider's record, copied word for word.
    let copied = wait_for(DEADLINE, || {
        h3.avahi_browse_resolved("_amb._tcp")
            .into_iter()
            .find(|r| r.name == "redis@h1" && r.protocol == "IPv4")
    })
    .expect("avahi-browse on h3 lists redis@h1");
    assert!(copied.txt_value("sig").is_some(), "{:?}", copied.txt);
    let _rogues = [
        publish(
            h3,
            "rogue-plain",
            port,
            &["svc=redis".into(), "weight=1000".into(), "tls=1".into()],
        ),
        publish(
            h3,
            "rogue-otherkey",
            port,
            &sealed_txt(
                &ClusterKey::generate(),
                "rogue-otherkey",
                port,
                &[h3.ip.into()],
                now,
            ),
        ),
        publish(h3, "rogue-replay", port, &copied.txt),
        // Sealed with the cluster key itself, over the real provider's
        // address: only the address check stands in the way.
        publish(
            h3,
            "rogue-stolen",
            port,
            &sealed_txt(&key, "rogue-stolen", port, &[h1.ip.into()], now),
        ),
    ];
    m.wait_refused(&[
        ("rogue-plain", "unsigned"),
        ("rogue-otherkey", "bad signature"),
        ("rogue-replay", "bad signature"),
        ("rogue-stolen", "none of its resolved addresses is signed"),
    ]);
    m.all_served_by_h1();
    assert_eq!(rogue.accepted(), 0, "{}", m.consumer.output_tail(40));
}

/// The replay: a stranger announces the real provider's own
/// instance, `redis@h1`, with its current TXT copied byte for byte (a valid
/// seal) and the same SRV port, from its own address, where it listens on
/// that port. Only the seal's addresses tell the copy apart: the consumer
/// dials none of the resolved ones that are not signed.
#[test]
fn a_stranger_replaying_the_real_instance_from_its_own_address_gets_nothing() {
    let m = mesh();
    let h3 = m.lab.host("h3");
    let rogue = Counter::on(h3, TLS_PORT);
    let copied = wait_for(DEADLINE, || {
        h3.avahi_browse_resolved("_amb._tcp")
            .into_iter()
            .find(|r| r.name == "redis@h1" && r.protocol == "IPv4")
    })
    .expect("avahi-browse on h3 lists redis@h1");
    assert_eq!(copied.port, TLS_PORT, "{copied:?}");
    assert!(copied.txt_value("sig").is_some(), "{:?}", copied.txt);
    let replay = FakeInstance {
        label: b"redis@h1".to_vec(),
        host: "stranger.local.".into(),
        port: TLS_PORT,
        txt: copied.txt.iter().map(|t| t.clone().into_bytes()).collect(),
        addrs: vec![h3.ip.into()],
    };
    let stranger = Rogue::start(h3, vec![replay]);
    let inst = instance("redis@h1");
    let h3_ip = h3.ip.to_string();
    // The consumer has resolved the copy with the stranger's address, and
    // the stranger has announced it twice.
    let resolved = wait_until(DEADLINE, || {
        stranger.rounds() >= 2 && log_lines(&m.consumer, &["resolved", &inst, &h3_ip]) >= 1
    });
    assert!(resolved, "{}", m.consumer.output_tail(40));
    let h2 = m.lab.host("h2");
    let served: Vec<Option<String>> = (0..REQUESTS).map(|_| whoami(h2, CONSUME_PORT)).collect();
    assert_eq!(rogue.accepted(), 0, "{}", m.consumer.output_tail(40));
    assert!(
        served.iter().all(|s| s.as_deref() == Some("h1")),
        "{served:?}\n{}",
        m.consumer.output_tail(40)
    );
    // Refused for its addresses alone: the copied seal itself checked.
    m.wait_refused(&[("redis@h1", "none of its resolved addresses is signed")]);
}

/// A stranger that announces `redis@h1` (unsigned) before the keyed
/// provider with `--node-id h1` starts does not get its name: mdns-sd's
/// conflict probe renamed ours (`redis@h1 (2)`), whose seal then no
/// longer matched, and every keyed consumer ignored the provider for the
/// life of its process (found by exploratory testing).
#[test]
fn a_stranger_who_takes_a_keyed_providers_name_first_does_not_hide_it() {
    let lab = Lab::new(3);
    let key = keygen(lab.dir(), "cluster.key");
    let k = key.to_str().unwrap();
    let (h1, h2, h3) = (lab.host("h1"), lab.host("h2"), lab.host("h3"));
    // Said again every 100 ms, so that it is heard within the 750 ms of
    // the provider's conflict probe.
    let squat = FakeInstance::service("redis@h1", "redis", TLS_PORT, h3.ip.into());
    let packets = announcement_packets(&[squat]);
    let sock = h3.enter(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let squatting = std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            for p in &packets {
                let _ = sock.send_to(p, "224.0.0.251:5353");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    let consumer = amb(h2, &["--consume", "redis:6379", "--cluster-key", k]);
    let inst = instance("redis@h1");
    let seen = wait_until(DEADLINE, || {
        log_lines(&consumer, &[IGNORING, &inst, "unsigned"]) >= 1
    });
    assert!(seen, "{}", consumer.output_tail(40));
    let _redis = redis(h1, REDIS_PORT);
    let provider = keyed_provider(h1, k);
    wait_routed_to(h2, CONSUME_PORT, "h1");
    assert!(
        !provider.stderr().contains("renamed ours"),
        "{}",
        provider.output_tail(20)
    );
    stop.store(true, Ordering::Relaxed);
    squatting.join().unwrap();
}

#[test]
fn an_expired_seal_is_refused_and_a_fresh_one_is_not() {
    let m = mesh();
    let h3 = m.lab.host("h3");
    let rogue = Counter::new(h3);
    let port = rogue.port();
    let key = load(&m.key);
    // Signed with the cluster key over the rogue's own address: only the
    // time is wrong.
    let old = unix_now() - (VALIDITY + MAX_SKEW).as_secs() - 60;
    let expired = sealed_txt(&key, "rogue-old", port, &[h3.ip.into()], old);
    let _old = publish(h3, "rogue-old", port, &expired);
    m.wait_refused(&[("rogue-old", "signature expired")]);
    m.all_served_by_h1();
    assert_eq!(rogue.accepted(), 0, "{}", m.consumer.output_tail(40));

    // The same record signed now is used: what kept the rogue out was the
    // time alone (and the test can fail).
    let fresh = sealed_txt(&key, "rogue-new", port, &[h3.ip.into()], unix_now());
    let _new = publish(h3, "rogue-new", port, &fresh);
    let h2 = m.lab.host("h2");
    let reached = wait_until(DEADLINE, || {
        let _ = whoami(h2, CONSUME_PORT);
        rogue.accepted() > 0
    });
    assert!(reached, "{}", m.consumer.output_tail(40));
}
