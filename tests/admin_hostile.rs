//! The admin endpoint and `mesh-amb status` of a consumer that a hostile
//! link feeds: instance names carrying markup and terminal escapes, a flood
//! of fake instances, and twenty real providers of which one crashes. Real
//! `mesh-amb`, `redis-server` and Chromium processes run inside the lab's
//! network namespaces (the browser in the consumer's, as on the node's own
//! machine); the stranger is the lab's raw-packet [`Rogue`]. No multicast
//! leaves the lab.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mesh_amb_lab::{wait_until, FakeInstance, Host, Lab, Proc, Rogue};
use serde_json::Value;

use common::browser::{chromium_in, console_messages};
use common::mesh::*;
use common::prometheus::parse_prometheus;

/// Where the consumer listens, inside its own namespace.
const CONSUME_PORT: u16 = 6379;
/// The real Redis behind each provider, inside the provider's namespace.
const REDIS_PORT: u16 = 7000;
/// First port of the fake instances: nothing listens there.
const DEAD_PORTS: u16 = 20_000;
/// The service every test consumes.
const SERVICE: &str = "web";
/// Longest an admin answer may take while the link floods the node: it
/// answers from memory, so anything near this is a stall.
const ANSWER_BOUND: Duration = Duration::from_secs(5);
/// Bound on what one backend adds to an answer. A row holds its instance
/// name three times, escaped (a 63-byte label of quotes is ~380 bytes
/// escaped), beside fixed markup; measured with 1,024 fakes named
/// `flood-N`: ~0.6 KiB a backend on the page and in /metrics, ~0.5 KiB in
/// the JSON.
const BYTES_PER_BACKEND: usize = 4 * 1024;
/// What an answer holds besides its backends (headers, totals, counters).
const BYTES_FIXED: usize = 32 * 1024;

/// `mesh-amb ARGS` in `host`, logging at info: a flood at debug would
/// write a line per packet.
fn amb_info(host: &Host, args: &[&str]) -> Proc {
    amb_logging(host, args, "mesh_amb=info")
}

/// A consumer of [`SERVICE`] on `host` with its admin endpoint on a port
/// of its choosing; the process and the endpoint's address, read from its
/// start-up line.
fn consumer(host: &Host) -> (Proc, SocketAddr) {
    let consume = format!("{SERVICE}:{CONSUME_PORT}");
    let p = amb_info(
        host,
        &[
            "--consume",
            &consume,
            "--admin",
            "127.0.0.1:0",
            "--node-id",
            "consumer",
        ],
    );
    let addr = admin_addr(&p);
    (p, addr)
}

/// Redis and a provider of [`SERVICE`] in `host`, node id = host name.
fn provider(host: &Host) -> (Proc, Proc) {
    let redis = redis(host, REDIS_PORT);
    let provide = format!("{SERVICE}:{REDIS_PORT}");
    let amb = amb_info(host, &["--provide", &provide, "--node-id", &host.name]);
    (redis, amb)
}

/// The DNS-SD instance name of a provider (or fake) labelled `label`.
fn instance(label: &str) -> String {
    format!("{label}._amb._tcp.local.")
}

/// One answer of the admin endpoint.
struct Answer {
    code: u16,
    body: String,
    took: Duration,
}

/// GET `path` from the admin endpoint at `addr`, from inside `host`.
fn get(host: &Host, addr: SocketAddr, path: &str) -> Answer {
    host.enter(|| {
        let t0 = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to admin");
        s.set_read_timeout(Some(ANSWER_BOUND)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("GET {path}: no whole answer within {ANSWER_BOUND:?}: {e}"));
        let took = t0.elapsed();
        let text = String::from_utf8(raw).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a header");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "a plain body expected"
        );
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        Answer {
            code,
            body: body.to_owned(),
            took,
        }
    })
}

/// `/api/v1/status`, parsed.
fn status(host: &Host, addr: SocketAddr) -> Value {
    let a = get(host, addr, "/api/v1/status");
    assert_eq!(a.code, 200, "{}", a.body);
    serde_json::from_str(&a.body).expect("the status is JSON")
}

/// The backends of the consumed service in a status document.
fn backends(doc: &Value) -> &[Value] {
    doc["nodes"][0]["consumes"][0]["backends"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// The state of backend `key` in `doc`, if it is there.
fn state_of<'a>(doc: &'a Value, key: &str) -> Option<&'a str> {
    backends(doc)
        .iter()
        .find(|b| b["key"] == key)
        .and_then(|b| b["state"].as_str())
}

/// A discovery counter of the node in `doc`.
fn discovery_counter(doc: &Value, name: &str) -> u64 {
    doc["nodes"][0]["discovery"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or_else(|| panic!("no discovery counter {name}"))
}

/// The page as headless Chromium leaves it, loaded from inside `host`
/// (where the endpoint's loopback is); panics on any console message.
fn page_in_browser(host: &Host, addr: SocketAddr) -> String {
    let url = format!("http://{addr}/");
    // A virtual time budget lets the page's script refresh it twice before
    // the DOM is dumped: what is read is what the script swapped in.
    let (dom, log) = chromium_in(
        &["ip", "netns", "exec", &host.netns],
        &url,
        &["--virtual-time-budget=5000", "--dump-dom"],
    );
    let console = console_messages(&log);
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(dom.contains("id=\"status\""), "not the stats page:\n{dom}");
    dom
}

/// The elements of a serialised DOM (what `--dump-dom` prints), each with
/// its attribute names, read as a parser would: text holds `<` only as
/// `&lt;`, and attribute values are double-quoted with `"` as `&quot;`, so
/// whatever sits inside a value is skipped.
fn elements(dom: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        if rest.starts_with('/') || rest.starts_with('!') {
            rest = &rest[rest.find('>').map_or(rest.len(), |e| e + 1)..];
            continue;
        }
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = &rest[name_end..];
        let mut attrs = Vec::new();
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix('>') {
                rest = after;
                break;
            }
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '=' || c == '>' || c == '/')
                .unwrap_or(rest.len());
            attrs.push(rest[..end].to_ascii_lowercase());
            rest = &rest[end..];
            if let Some(value) = rest.strip_prefix("=\"") {
                rest = &value[value.find('"').map_or(value.len(), |e| e + 1)..];
            }
        }
        out.push((name, attrs));
    }
    out
}

/// The `<tr>` of backend `key` in a serialised DOM.
fn row<'a>(dom: &'a str, key: &str) -> Option<&'a str> {
    let start = dom.find(&format!("data-backend=\"{key}\""))?;
    let end = dom[start..].find("</tr>")? + start;
    Some(&dom[start..end])
}

/// Labels a stranger announces that would run or inject if the page or a
/// tool printed them raw. None has a dot or a control character, so
/// discovery takes them as instances of [`SERVICE`].
const MARKUP_LABELS: [&str; 3] = [
    "<img src=x onerror=alert(1)>",
    "\"><script>alert(2)</script>",
    "it's \"quoted\" & <b>bold</b>",
];
/// How each of [`MARKUP_LABELS`] reads in a serialised DOM as text: the
/// only form it may take there.
const MARKUP_AS_TEXT: [&str; 3] = [
    "&lt;img src=x onerror=alert(1)&gt;",
    "\"&gt;&lt;script&gt;alert(2)&lt;/script&gt;",
    "it's \"quoted\" &amp; &lt;b&gt;bold&lt;/b&gt;",
];
/// A label that a bidi-aware terminal or browser shows as `web@h1`, the
/// real provider's: a right-to-left override, then the name reversed. It
/// holds no control character, so discovery takes it; the views show the
/// override as the escape below.
const SPOOF_LABEL: &str = "\u{202e}1h@bew";
const SPOOF_SHOWN: &str = "\\u{202e}1h@bew";
/// A label that would recolour the operator's terminal: control characters
/// make discovery refuse it, and nothing of it may reach a terminal raw.
const ANSI_LABEL: &[u8] = b"red\x1b[31mALERT\x1b[0m";

#[test]
fn markup_and_escapes_from_the_link_stay_text_on_the_page_and_in_status() {
    let lab = Lab::new(3);
    let (_redis, _provider) = provider(lab.host("h1"));
    let h3 = lab.host("h3");
    let (consumer, admin) = consumer(h3);
    let real = instance(&format!("{SERVICE}@h1"));
    let stranger = lab.host("h2");
    let marked: Vec<FakeInstance> = MARKUP_LABELS
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let mut f = FakeInstance::service(
                &format!("mark{i}"),
                SERVICE,
                DEAD_PORTS + i as u16,
                stranger.ip.into(),
            );
            f.label = label.as_bytes().to_vec();
            // Values no key of ours reads: still nothing may render them.
            f.txt.push(b"note=<script>alert(3)</script>".to_vec());
            f.txt
                .push(b"title=\"><img src=x onerror=alert(4)>".to_vec());
            f.txt.push(b"weight=1<b>".to_vec());
            f
        })
        .collect();
    let mut spoof = FakeInstance::service("spoof", SERVICE, DEAD_PORTS + 8, stranger.ip.into());
    spoof.label = SPOOF_LABEL.as_bytes().to_vec();
    let _marked = Rogue::start(stranger, [marked, vec![spoof]].concat());
    let mut ansi = FakeInstance::service("ansi", SERVICE, DEAD_PORTS + 9, stranger.ip.into());
    ansi.label = ANSI_LABEL.to_vec();
    // A packet of its own, so that a parser refusing it whole hides
    // nothing else.
    let _ansi = Rogue::start(stranger, vec![ansi]);

    let seen = wait_until(DEADLINE, || {
        let doc = status(h3, admin);
        state_of(&doc, &real) == Some("up")
            && MARKUP_LABELS
                .iter()
                .chain([&SPOOF_LABEL])
                .all(|l| state_of(&doc, &instance(l)).is_some())
            && discovery_counter(&doc, "bad_name") > 0
    });
    assert!(
        seen,
        "the status never held the provider, the markup and spoof instances and the refused one:\n{}\n{}",
        serde_json::to_string_pretty(&status(h3, admin)).unwrap(),
        consumer.output_tail(40)
    );

    let dom = page_in_browser(h3, admin);
    let found = elements(&dom);
    let names = |tag: &str| found.iter().filter(|(n, _)| n == tag).count();
    assert_eq!(names("img"), 0, "an <img> reached the DOM:\n{dom}");
    assert_eq!(names("b"), 0, "a <b> reached the DOM:\n{dom}");
    assert_eq!(names("script"), 1, "a <script> besides page.js:\n{dom}");
    for (name, attrs) in &found {
        assert!(
            attrs.iter().all(|a| !a.starts_with("on")),
            "an event handler on <{name}>: {attrs:?}"
        );
    }
    for (label, text) in MARKUP_LABELS.iter().zip(MARKUP_AS_TEXT) {
        assert!(
            dom.contains(&format!(">{text}</td>")),
            "{label:?} is not shown as text:\n{dom}"
        );
    }
    assert!(
        dom.contains(&format!(">{SPOOF_SHOWN}</td>")),
        "the override is not shown escaped:\n{dom}"
    );
    assert!(!dom.contains('\u{202e}'), "a raw override reached the page");
    for dead in ["alert(3)", "alert(4)"] {
        assert!(!dom.contains(dead), "a TXT value reached the page: {dead}");
    }
    let real_row = row(&dom, &real).unwrap_or_else(|| panic!("no row for {real}:\n{dom}"));
    assert!(real_row.contains("badge up"), "{real_row}");

    // Prometheus label values escape quotes and backslashes: the names
    // read back whole from a strict parse.
    let metrics = get(h3, admin, "/metrics");
    assert_eq!(metrics.code, 200);
    let samples = parse_prometheus(&metrics.body);
    for label in MARKUP_LABELS.iter().chain([&SPOOF_LABEL]) {
        let key = instance(label);
        let up = samples
            .iter()
            .find(|s| s.name == "mesh_amb_backend_up" && s.labels.get("backend") == Some(&key));
        assert!(up.is_some_and(|s| s.value == 0.0), "{key:?}: {up:?}");
    }

    // The terminal view, from inside the consumer's namespace.
    let out = h3.run(BIN, ["status", "--admin", &admin.to_string()]);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        out.status.success(),
        "status failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for label in MARKUP_LABELS {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(label)),
            "no row for {label:?}:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with(SPOOF_SHOWN)),
        "the override is not shown escaped:\n{text}"
    );
    let real_line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{SERVICE}@h1")))
        .unwrap_or_else(|| panic!("no row for the provider:\n{text}"));
    assert!(real_line.contains(" up "), "{real_line}");
    assert!(
        !text
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "a control character reached the terminal:\n{text:?}"
    );
    assert!(!text.contains("ALERT"), "the refused label was shown");
    let discovery = text
        .lines()
        .find(|l| l.starts_with("discovery:"))
        .expect("a discovery line");
    assert!(discovery.contains("bad name "), "{discovery}");
    eprintln!("status with markup instances:\n{text}");
}

/// The largest answer and the slowest of each admin path seen so far.
#[derive(Default)]
struct Worst {
    bytes: usize,
    took: Duration,
    gets: usize,
}

/// GETs `/`, `/metrics` and `/api/v1/status` once each: every one answers
/// 200 within [`ANSWER_BOUND`] and within the size that `backends_cap`
/// backends allow; `/metrics` parses. Returns the status document.
fn sweep_admin(
    host: &Host,
    addr: SocketAddr,
    worst: &mut [Worst; 3],
    backends_cap: usize,
) -> Value {
    let bound = BYTES_FIXED + backends_cap * BYTES_PER_BACKEND;
    let mut doc = Value::Null;
    for (path, w) in ["/", "/metrics", "/api/v1/status"].into_iter().zip(worst) {
        let a = get(host, addr, path);
        assert_eq!(a.code, 200, "GET {path}: {}", a.body);
        assert!(
            a.took < ANSWER_BOUND,
            "GET {path} took {:?} during the flood",
            a.took
        );
        assert!(
            a.body.len() <= bound,
            "GET {path}: {} bytes, over {bound}",
            a.body.len()
        );
        match path {
            "/metrics" => {
                let samples = parse_prometheus(&a.body);
                let series = samples
                    .iter()
                    .filter(|s| s.name == "mesh_amb_backend_up")
                    .count();
                assert!(series <= backends_cap, "{series} backend series");
            }
            "/api/v1/status" => doc = serde_json::from_str(&a.body).expect("JSON"),
            _ => assert!(a.body.ends_with("</html>\n"), "a whole page"),
        }
        w.bytes = w.bytes.max(a.body.len());
        w.took = w.took.max(a.took);
        w.gets += 1;
    }
    doc
}

#[test]
fn a_flood_of_fake_instances_leaves_the_admin_endpoint_quick_and_bounded() {
    let lab = Lab::new(3);
    let (_redis, _provider) = provider(lab.host("h1"));
    let h3 = lab.host("h3");
    let (consumer, admin) = consumer(h3);
    let real = instance(&format!("{SERVICE}@h1"));
    assert!(wait_until(DEADLINE, || state_of(&status(h3, admin), &real)
        == Some("up")));
    let cap = mesh_amb::discovery::mdns::MAX_INSTANCES_PER_SERVICE;
    let mut worst: [Worst; 3] = Default::default();
    let quiet = sweep_admin(h3, admin, &mut worst, 1);
    assert_eq!(backends(&quiet).len(), 1);

    let stranger = lab.host("h2");
    let fakes = FakeInstance::many("flood", 10_000, SERVICE, DEAD_PORTS, stranger.ip.into());
    let rogue = Rogue::start(stranger, fakes);
    // Read the endpoint over and over while the table fills to its cap and
    // the stranger repeats its whole announcement.
    let mut most = 0;
    let filled = wait_until(DEADLINE * 2, || {
        let doc = sweep_admin(h3, admin, &mut worst, cap);
        most = most.max(backends(&doc).len());
        let log = consumer.stderr();
        rogue.rounds() >= 2
            && (log.contains("dropped to make room") || log.contains("its service's table is full"))
    });
    assert!(
        filled,
        "the table never reached its cap ({most} backends seen):\n{}",
        consumer.output_tail(40)
    );
    // And a while longer at the cap.
    for _ in 0..10 {
        let doc = sweep_admin(h3, admin, &mut worst, cap);
        most = most.max(backends(&doc).len());
    }
    for (path, w) in ["/", "/metrics", "/api/v1/status"].iter().zip(&worst) {
        eprintln!(
            "10,000 fake instances: GET {path} x{}: at most {} bytes, slowest {:?}",
            w.gets, w.bytes, w.took
        );
    }
    eprintln!(
        "at most {most} backends in the table (cap {cap}); {} rogue rounds",
        rogue.rounds()
    );
    assert!(most <= cap, "{most} backends, cap {cap}");
    let answers: Vec<Option<String>> = h3.enter(|| {
        (0..20)
            .map(|_| request(local(CONSUME_PORT), &["GET", "whoami"]))
            .collect()
    });
    let failed = answers
        .iter()
        .filter(|a| a.as_deref() != Some("h1"))
        .count();
    // The tail shows the flood; what happened to the real instance may be
    // thousands of lines up.
    let log = consumer.stderr();
    let about_real: Vec<&str> = log.lines().filter(|l| l.contains(&real)).collect();
    assert_eq!(
        failed,
        0,
        "answers {answers:?}; h1's instance is {:?}; its log lines:\n{}\n{}",
        state_of(&status(h3, admin), &real),
        about_real.join("\n"),
        consumer.output_tail(40)
    );
}

/// Providers in the tens-of-hosts lab.
const PROVIDERS: usize = 20;

#[test]
fn twenty_providers_show_up_and_a_crashed_one_leaves() {
    let lab = Lab::new(PROVIDERS + 1);
    let mut hosts: Vec<(Proc, Proc)> = lab.hosts()[..PROVIDERS].iter().map(provider).collect();
    let h_c = &lab.hosts()[PROVIDERS];
    let (consumer, admin) = consumer(h_c);
    let keys: Vec<String> = lab.hosts()[..PROVIDERS]
        .iter()
        .map(|h| instance(&format!("{SERVICE}@{}", h.name)))
        .collect();
    let t0 = Instant::now();
    let all_up = wait_until(DEADLINE, || {
        let doc = status(h_c, admin);
        backends(&doc).len() == PROVIDERS && keys.iter().all(|k| state_of(&doc, k) == Some("up"))
    });
    assert!(
        all_up,
        "not all {PROVIDERS} up:\n{}\n{}",
        serde_json::to_string_pretty(&status(h_c, admin)).unwrap(),
        consumer.output_tail(40)
    );
    eprintln!(
        "{PROVIDERS} providers up on the status {:?} after the consumer started",
        t0.elapsed()
    );

    let dom = page_in_browser(h_c, admin);
    for k in &keys {
        let r = row(&dom, k).unwrap_or_else(|| panic!("no row for {k}:\n{dom}"));
        assert!(r.contains("badge up"), "{r}");
    }
    assert_eq!(dom.matches("<tr class=\"up\"").count(), PROVIDERS, "{dom}");

    // h7 crashes: its provider and its Redis die without a word, so its
    // record stays in every mDNS cache (~2 minutes). Clients that hit it
    // eject it and have discovery verify the record, which removes it.
    let crashed = &keys[6];
    let (redis7, amb7) = &mut hosts[6];
    amb7.kill();
    redis7.kill();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let mut failed = 0;
    let gone = wait_until(DEADLINE, || {
        failed += h_c.enter(|| {
            (0..PROVIDERS)
                .filter(|_| request(local(CONSUME_PORT), &["GET", "whoami"]).is_none())
                .count()
        });
        let state = state_of(&status(h_c, admin), crashed).map(str::to_owned);
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        state.is_none()
    });
    eprintln!(
        "the crashed provider's states: {seen:?}; gone after {:?}",
        t0.elapsed()
    );
    assert!(
        gone,
        "{crashed} never left (states {seen:?}):\n{}",
        consumer.output_tail(40)
    );
    assert_eq!(failed, 0, "clients failed while {crashed} was dead");
    assert!(
        seen.iter()
            .flatten()
            .all(|s| ["up", "ejected", "down"].contains(&s.as_str())),
        "{seen:?}"
    );

    let doc = status(h_c, admin);
    assert_eq!(backends(&doc).len(), PROVIDERS - 1, "{doc:#}");
    let dom = page_in_browser(h_c, admin);
    assert!(row(&dom, crashed).is_none(), "{crashed} still on the page");
    assert_eq!(
        dom.matches("<tr class=\"up\"").count(),
        PROVIDERS - 1,
        "{dom}"
    );
}
