//! `mesh-amb ls` across separate network stacks: real `mesh-amb`
//! providers (plain, signed, signed with another cluster's key) and
//! `avahi-publish` instances (a third-party service, a stranger without
//! `svc=`) in a namespace lab (lab/src/lib.rs), listed from another host.
//! No multicast leaves the lab: even the usage errors run inside a lab host.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use mesh_amb::discovery::listing::MAX_LISTED;
use mesh_amb_lab::{wait_for, wait_until, FakeInstance, Host, Lab, Rogue};

mod common;

use common::mesh::*;

/// Each `ls` browses this long: enough for answers from the lab's hosts
/// (tens of milliseconds) and mdns-sd's second query, short enough to
/// retry a few times within the test's deadline.
const LS_TIMEOUT: &str = "2s";

/// `mesh-amb ls ARGS` in `host`, to completion.
fn ls(host: &Host, args: &[&str]) -> Output {
    host.run(BIN, std::iter::once("ls").chain(args.iter().copied()))
}

/// `mesh-amb ls --json ARGS`: its rows by instance label. Panics unless it
/// succeeds with JSON, and JSON alone, on stdout.
fn ls_json(host: &Host, args: &[&str]) -> BTreeMap<String, Value> {
    let mut all = vec!["--json", "--timeout", LS_TIMEOUT];
    all.extend_from_slice(args);
    let out = ls(host, &all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ls {all:?}: {out:?}");
    let rows: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ls {all:?} printed no JSON array ({e}):\n{stdout}"));
    rows.into_iter()
        .map(|r| (r["instance"].as_str().expect("instance").to_owned(), r))
        .collect()
}

/// Lists with `args` until exactly the instances `want` answer, all
/// resolved and with the addresses `addrs` says (an instance still
/// announcing may be missing from one run, or resolved with one address
/// family only, as in one `avahi-browse -t`); panics with the last listing
/// otherwise.
fn ls_until(
    host: &Host,
    args: &[&str],
    want: &[&str],
    addrs: &[(&str, &Host)],
) -> BTreeMap<String, Value> {
    let mut last = BTreeMap::new();
    let found = wait_for(DEADLINE, || {
        last = ls_json(host, args);
        let names: Vec<&str> = last.keys().map(String::as_str).collect();
        let resolved = last.values().all(|r| r["state"] != "unresolved");
        let addressed = addrs.iter().all(|(name, host)| {
            last.get(*name).is_some_and(|r| {
                let ip = Value::from(host.ip.to_string());
                r["addresses"].as_array().is_some_and(|a| a.contains(&ip))
            })
        });
        (names == want && resolved && addressed).then(|| last.clone())
    });
    found.unwrap_or_else(|| {
        panic!(
            "ls {args:?} never listed exactly {want:?}; last:\n{}",
            serde_json::to_string_pretty(&last).unwrap()
        )
    })
}

/// A local service in a host on a port the kernel picks: what a provider
/// checks and offers. Accepts connections (each held until its peer closes) until dropped.
struct Service {
    port: u16,
    host: Host,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Service {
    fn new(host: &Host) -> Service {
        let listener = host.enter(|| TcpListener::bind("0.0.0.0:0").unwrap());
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                hold(conn);
            }
        });
        Service {
            port,
            host: host.clone(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept so the thread sees the flag.
        let port = self.port;
        let _ = self.host.enter(|| TcpStream::connect(local(port)));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port nobody uses in `host`'s own network stack, for a TLS terminator
/// whose port the test must know: the kernel picks it, and nothing else
/// runs in that stack to take it meanwhile.
fn free_port(host: &Host) -> u16 {
    host.enter(|| TcpListener::bind("0.0.0.0:0").unwrap())
        .local_addr()
        .unwrap()
        .port()
}

fn str_of<'a>(row: &'a Value, field: &str) -> &'a str {
    row[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} of {row}"))
}

#[test]
fn ls_lists_exactly_the_instances_on_the_link() {
    let lab = Lab::new(4);
    let (h1, h2, h3, h4) = (
        lab.host("h1"),
        lab.host("h2"),
        lab.host("h3"),
        lab.host("h4"),
    );
    let key = keygen(lab.dir(), "cluster.key");
    let other_key = keygen(lab.dir(), "other.key");
    let (key, other_key) = (key.to_str().unwrap(), other_key.to_str().unwrap());

    // mesh-amb: a plain provider, a signed one (TLS too, as every keyed
    // provider), and one signed with another cluster's key.
    let redis = Service::new(h1);
    let _plain = amb(
        h1,
        &[
            "--provide",
            &format!("redis:{}", redis.port),
            "--node-id",
            "h1",
        ],
    );
    let api = Service::new(h2);
    let (tls_port, other_tls_port) = (free_port(h2), free_port(h2));
    let _signed = amb(
        h2,
        &[
            "--provide",
            &format!("api:{}@{tls_port}", api.port),
            "--cluster-key",
            key,
            "--node-id",
            "h2",
        ],
    );
    let _foreign = amb(
        h2,
        &[
            "--provide",
            &format!("api:{}@{other_tls_port}", api.port),
            "--cluster-key",
            other_key,
            "--node-id",
            "h2b",
        ],
    );
    // Avahi: a third-party service (svc= only) and a stranger without svc=.
    let _avahi = h3.start_avahi();
    let _cache = h3.avahi_publish("cache on h3", "_amb._tcp", 8080, &["svc=cache"]);
    let _stranger = h3.avahi_publish("stranger", "_amb._tcp", 9, &["hello=1"]);

    let all = ["api@h2", "api@h2b", "cache on h3", "redis@h1", "stranger"];
    let addrs = [("redis@h1", h1), ("api@h2", h2), ("cache on h3", h3)];
    let rows = ls_until(h4, &["--cluster-key", key], &all, &addrs);
    let row = |name: &str| &rows[name];
    // (instance, service, port, state, tls, signed, source)
    let want: [(&str, Value, u16, &str, bool, &str, &str); 5] = [
        (
            "api@h2",
            "api".into(),
            tls_port,
            "up",
            true,
            "valid",
            "mesh-amb",
        ),
        (
            "api@h2b",
            "api".into(),
            other_tls_port,
            "up",
            true,
            "invalid",
            "mesh-amb",
        ),
        (
            "cache on h3",
            "cache".into(),
            8080,
            "up",
            false,
            "no",
            "other",
        ),
        (
            "redis@h1",
            "redis".into(),
            redis.port,
            "up",
            false,
            "no",
            "mesh-amb",
        ),
        ("stranger", Value::Null, 9, "invalid", false, "no", "other"),
    ];
    for (name, service, port, state, tls, signed, source) in want {
        let r = row(name);
        assert_eq!(r["service"], service, "{r}");
        assert_eq!(r["port"], port, "{r}");
        assert_eq!(r["state"], state, "{r}");
        assert_eq!(r["tls"], tls, "{r}");
        assert_eq!(r["signed"], signed, "{r}");
        assert_eq!(r["source"], source, "{r}");
        assert_eq!(r["weight"], 1, "{r}");
    }
    assert_eq!(row("api@h2b")["seal_problem"], "bad signature");
    assert_eq!(row("api@h2")["seal_problem"], Value::Null);
    assert_eq!(row("stranger")["problem"], "no valid svc");
    assert_eq!(row("redis@h1")["problem"], Value::Null);
    assert_eq!(row("redis@h1")["host"], "amb-h1.local.");
    assert_eq!(row("redis@h1")["node"], "h1");
    assert_eq!(
        str_of(row("cache on h3"), "host"),
        format!("{}.local.", h3.netns)
    );

    // Without the key, seals are only noticed.
    let rows = ls_until(h4, &[], &all, &[]);
    let signed: Vec<&str> = all.iter().map(|n| str_of(&rows[*n], "signed")).collect();
    assert_eq!(signed, ["yes", "yes", "no", "no", "no"]);

    // One service only.
    ls_until(h4, &["API"], &["api@h2", "api@h2b"], &[]);

    // The table: a header, and one aligned row per instance, the seals
    // checked.
    let text = wait_for(DEADLINE, || {
        let out = ls(h4, &["--timeout", LS_TIMEOUT, "--cluster-key", key]);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.lines().count() == all.len() + 1).then_some(text)
    })
    .expect("the table lists every instance");
    eprintln!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "SERVICE",
            "INSTANCE",
            "HOST",
            "ADDRESSES",
            "PORT",
            "STATE",
            "WEIGHT",
            "TLS",
            "SIGNED",
            "SOURCE"
        ]
    );
    let redis_row = lines
        .iter()
        .find(|l| l.contains("redis@h1"))
        .expect("a redis@h1 row");
    let at = |word: &str| lines[0].find(word).unwrap();
    assert!(redis_row.starts_with("redis "), "{text}");
    assert_eq!(&redis_row[at("INSTANCE")..][..8], "redis@h1", "{text}");
    assert_eq!(&redis_row[at("STATE")..][..3], "up ", "{text}");
    assert_eq!(&redis_row[at("SOURCE")..], "mesh-amb", "{text}");
    let foreign = lines.iter().find(|l| l.contains("api@h2b")).unwrap();
    assert_eq!(
        &foreign[at("SIGNED")..],
        "INVALID (bad signature)  mesh-amb"
    );
    let stranger = lines.last().unwrap();
    assert!(stranger.starts_with("-  "), "strangers come last:\n{text}");
    assert!(stranger.contains("invalid: no valid svc"), "{text}");
}

#[test]
fn ls_alone_prints_an_empty_array_or_a_hint() {
    let lab = Lab::new(1);
    let h1 = lab.host("h1");
    let out = ls(h1, &["--json", "--timeout", "1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    let out = ls(h1, &["--timeout", "1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "no _amb._tcp instances answered within 1s (is multicast allowed? UDP 5353)"
    );
}

#[test]
fn ls_refuses_bad_input_with_one_line() {
    // In a lab host all the same: were the input accepted, the browse would
    // stay inside the lab.
    let lab = Lab::new(1);
    let h1 = lab.host("h1");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--timeout", "soon"],
            "error: --timeout 'soon': not a duration",
        ),
        (
            &["--timeout", "0"],
            "error: --timeout '0': must be greater than zero",
        ),
        (&["--timeout", "-1"], "unexpected argument '-1'"),
        (
            &["--interface", "nosuchif0"],
            "error: --interface 'nosuchif0': no interface",
        ),
        (&["a.b"], "error: SERVICE 'a.b':"),
    ];
    for (args, want) in cases {
        let out = ls(h1, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(want),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// Most `ls` may take beyond its `--timeout`: building and printing the
/// listing, on a loaded machine (0.1-0.25 s in this flood here, since it
/// no longer waits for the mDNS daemon to stop: 1.2-1.8 s, and once more
/// than this, with the wait).
const LS_OVERRUN: Duration = Duration::from_secs(3);
/// Most memory `ls` may use in a flood: measured at 30-40 MiB with 12,000
/// fake instances, most of it mdns-sd's own cache; a listing that grew
/// without its cap would pass this.
const FLOOD_RSS_KIB: u64 = 128 * 1024;

/// Peak resident memory of `pid` so far (0 once it has exited).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn ls_stays_bounded_in_a_flood() {
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let fakes = FakeInstance::many("flood", MAX_LISTED + 2_000, "redis", 1, h1.ip.into());
    let rogue = Rogue::start(h1, fakes);
    assert!(wait_until(DEADLINE, || rogue.rounds() >= 1));

    let timeout = Duration::from_secs(5);
    let t0 = Instant::now();
    let mut cmd = h2.command(BIN);
    cmd.args(["ls", "--json", "--timeout", "5"]);
    let mut p = h2.spawn_cmd("mesh-amb-ls", cmd);
    let mut peak = 0;
    let exited = wait_until(timeout + LS_OVERRUN, || {
        peak = peak.max(peak_rss_kib(p.pid()));
        !p.is_running()
    });
    let took = t0.elapsed();
    assert!(exited, "ls still running after {took:?}");
    assert!(
        p.wait_exit(DEADLINE).is_some_and(|s| s.success()),
        "{}",
        p.output_tail(5)
    );
    let rows: Vec<Value> = serde_json::from_str(&p.stdout()).expect("a JSON array");
    eprintln!(
        "flood of {}: ls listed {} in {took:?}, peak RSS {peak} KiB",
        MAX_LISTED + 2_000,
        rows.len()
    );
    assert!(rows.len() <= MAX_LISTED);
    assert!(peak < FLOOD_RSS_KIB, "peak RSS {peak} KiB");
}
