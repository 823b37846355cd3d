//! The admin endpoint with real parts: real Redis servers behind an
//! ambassador, Prometheus text parsed line by line, the status JSON, and
//! the stats page in a real headless Chromium.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use common::browser::{chromium, console_messages};
use common::prometheus::{parse_prometheus, value};
use common::{command, ping, settings, wait_for, Amb, Redis, Reply, DEADLINE};
use mesh_amb::backends::balance::Policy;

/// An ambassador's admin endpoint, served from this process on port 0.
struct Admin {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Admin {
    fn start(amb: &Amb) -> Admin {
        let listener = mesh_amb::admin::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let observer = amb.node().observer().clone();
        tokio::spawn(mesh_amb::admin::serve(listener, observer, stop.clone()));
        Admin { addr, stop }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// GET `path` with `Host: host`; the status code and the body.
async fn get_as(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .expect("the admin endpoint answered in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a plain body expected"
    );
    (code, body.to_owned())
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let (code, body) = get_as(addr, &addr.to_string(), path).await;
    assert_eq!(code, 200, "GET {path}: {body}");
    body
}

/// Round robin, and an ejection that outlasts any test: what the page
/// shows is then the ejection, however slowly the machine runs.
fn long_ejections() -> mesh_amb::settings::ProxySettings {
    mesh_amb::settings::ProxySettings {
        eject_time: Duration::from_secs(600),
        ..settings(Policy::RoundRobin)
    }
}

/// An ambassador over a Redis server and a port where nothing listens,
/// which two connections (round robin) got ejected, with its admin
/// endpoint.
async fn with_an_ejected_backend() -> (Redis, SocketAddr, Amb, Admin) {
    let redis = Redis::start().await;
    let dead = closed_port();
    let amb = Amb::start(&[redis.addr, dead], long_ejections()).await;
    let admin = Admin::start(&amb);
    for _ in 0..2 {
        ping(amb.addr).await.unwrap();
    }
    (redis, dead, amb, admin)
}

/// A loopback port with nothing listening.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn metrics_parse_and_count_an_open_connection_live() {
    let redis = Redis::start().await;
    let amb = Amb::start(&[redis.addr], settings(Policy::RoundRobin)).await;
    let admin = Admin::start(&amb);

    let before = parse_prometheus(&get(admin.addr, "/metrics").await);
    let svc = [("service", "redis")];
    assert_eq!(
        value(&before, "mesh_amb_client_connections_total", &svc),
        0.0
    );
    assert_eq!(
        value(
            &before,
            "mesh_amb_backends",
            &[("service", "redis"), ("state", "up")]
        ),
        1.0
    );

    ping(amb.addr).await.unwrap();
    // The proxy counts a connection gone once both its ends are: after the
    // client's FIN has reached Redis and Redis's has come back.
    wait_for(
        DEADLINE,
        "the ping's connection to be counted closed",
        || async {
            let now = parse_prometheus(&get(admin.addr, "/metrics").await);
            value(&now, "mesh_amb_active_connections", &svc) == 0.0
        },
    )
    .await;
    // A connection that stays open: its bytes must show before it closes.
    const VALUE: usize = 200 * 1024;
    let mut open = TcpStream::connect(amb.addr).await.unwrap();
    let big = vec![b'x'; VALUE];
    let reply = command(&mut open, &[b"SET", b"k", &big]).await.unwrap();
    assert_eq!(reply, Reply::Simple("OK".into()));

    let backend = format!("static:{}", redis.addr);
    let during = parse_prometheus(&get(admin.addr, "/metrics").await);
    let out = value(
        &during,
        "mesh_amb_backend_bytes_total",
        &[("backend", &backend), ("direction", "out")],
    );
    assert!(out >= VALUE as f64, "bytes out while open: {out}");
    let total_out = value(
        &during,
        "mesh_amb_bytes_total",
        &[("service", "redis"), ("direction", "out")],
    );
    assert!(total_out >= VALUE as f64, "service total: {total_out}");
    assert_eq!(
        value(&during, "mesh_amb_client_connections_total", &svc),
        2.0
    );
    assert_eq!(value(&during, "mesh_amb_active_connections", &svc), 1.0);
    assert_eq!(
        value(&during, "mesh_amb_connect_latency_seconds_count", &svc),
        2.0
    );
    let inf = value(
        &during,
        "mesh_amb_connect_latency_seconds_bucket",
        &[("service", "redis"), ("le", "+Inf")],
    );
    assert_eq!(inf, 2.0, "+Inf holds every observation");

    // The JSON says the same.
    let doc: serde_json::Value =
        serde_json::from_str(&get(admin.addr, "/api/v1/status").await).unwrap();
    assert_eq!(doc["version"], 1);
    let b = &doc["nodes"][0]["consumes"][0]["backends"][0];
    assert_eq!(b["state"], "up");
    assert_eq!(b["active"], 1);
    assert!(b["bytes_out"].as_u64().unwrap() >= VALUE as u64, "{b}");
    drop(open);

    assert_eq!(get(admin.addr, "/healthz").await, "ok\n");
}

#[tokio::test]
async fn an_ejected_backend_shows_why_and_for_how_long() {
    let (_redis, dead, _amb, admin) = with_an_ejected_backend().await;
    let doc: serde_json::Value =
        serde_json::from_str(&get(admin.addr, "/api/v1/status").await).unwrap();
    let backends = doc["nodes"][0]["consumes"][0]["backends"]
        .as_array()
        .unwrap();
    let dead_row = backends
        .iter()
        .find(|b| b["key"] == format!("static:{dead}"))
        .unwrap();
    assert_eq!(dead_row["state"], "ejected", "{dead_row}");
    let why = dead_row["ejected_for"].as_str().unwrap();
    assert!(why.contains("refused"), "{why}");
    assert!(dead_row["ejected_remaining_ms"].as_u64().unwrap() > 0);
    assert_eq!(doc["nodes"][0]["consumes"][0]["ejections"], 1);

    let samples = parse_prometheus(&get(admin.addr, "/metrics").await);
    let dead_key = format!("static:{dead}");
    assert_eq!(
        value(&samples, "mesh_amb_backend_up", &[("backend", &dead_key)]),
        0.0
    );
    assert_eq!(
        value(
            &samples,
            "mesh_amb_backends",
            &[("service", "redis"), ("state", "ejected")]
        ),
        1.0
    );
}

#[tokio::test]
async fn on_loopback_only_loopback_host_names_are_answered() {
    let redis = Redis::start().await;
    let amb = Amb::start(&[redis.addr], settings(Policy::RoundRobin)).await;
    let admin = Admin::start(&amb);
    let (code, _) = get_as(admin.addr, "attacker.example:80", "/api/v1/status").await;
    assert_eq!(code, 421, "a rebound DNS name is refused");
    let (code, _) = get_as(admin.addr, "localhost", "/api/v1/status").await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_page_in_a_real_browser() {
    let up = Redis::start().await;
    let mut killed = Redis::start().await;
    let amb = Amb::start(&[up.addr, killed.addr], long_ejections()).await;
    let admin = Admin::start(&amb);
    for _ in 0..4 {
        ping(amb.addr).await.unwrap();
    }
    killed.kill();
    // Clients keep working; the killed server is ejected on the way.
    for _ in 0..4 {
        ping(amb.addr).await.unwrap();
    }
    let killed_key = format!("static:{}", killed.addr);
    wait_for(DEADLINE, "the killed server's ejection", || async {
        get(admin.addr, "/api/v1/status")
            .await
            .contains("\"ejected\"")
    })
    .await;

    let url = format!("http://{}/", admin.addr);
    // A virtual time budget lets the page's script refresh it twice before
    // the DOM is dumped: what is read is what the script swapped in.
    let (dom, log) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium(&url, &["--virtual-time-budget=5000", "--dump-dom"])
    })
    .await
    .unwrap();
    let console = console_messages(&log);
    assert!(console.is_empty(), "console messages: {console:#?}");
    let row = |key: &str| {
        let start = dom
            .find(&format!("data-backend=\"{key}\""))
            .unwrap_or_else(|| panic!("no row for {key} in the DOM:\n{dom}"));
        let end = dom[start..].find("</tr>").expect("row end") + start;
        dom[start..end].to_owned()
    };
    let up_row = row(&format!("static:{}", up.addr));
    assert!(up_row.contains("badge up"), "{up_row}");
    let dead_row = row(&killed_key);
    assert!(dead_row.contains("badge ejected"), "{dead_row}");
    assert!(dead_row.contains("refused"), "the reason: {dead_row}");
    assert!(dead_row.contains("retried in"), "time left: {dead_row}");
    assert!(dom.contains("id=\"status\""), "the script kept <main>");

    // A picture for a person to look at (not committed).
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stats-page.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || {
            chromium(
                &url,
                &[
                    "--window-size=1280,900",
                    &format!("--screenshot={}", shot.display()),
                ],
            )
        }
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    eprintln!("stats page screenshot: {}", shot.display());
}

#[tokio::test]
async fn the_status_follows_a_reload() {
    let redis = Redis::start().await;
    let amb = Amb::start(&[redis.addr], settings(Policy::RoundRobin)).await;
    let admin = Admin::start(&amb);
    for _ in 0..2 {
        ping(amb.addr).await.unwrap();
    }
    let mut config = (*amb.node().config()).clone();
    // A proxy setting changes: the service is replaced, its totals carry on.
    config.proxy.connect_timeout += Duration::from_millis(1);
    let mut added = config.consumes[0].clone();
    added.name = "cache".into();
    added.port = common::free_port();
    config.consumes.push(added);
    amb.node().reload(config).await.expect("the reload");
    let doc: serde_json::Value =
        serde_json::from_str(&get(admin.addr, "/api/v1/status").await).unwrap();
    let names: Vec<&str> = doc["nodes"][0]["consumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["redis", "cache"]);
    let redis = &doc["nodes"][0]["consumes"][0];
    assert_eq!(redis["clients"], 2, "counted before the reload: {redis}");
    ping(amb.addr).await.unwrap();
    let samples = parse_prometheus(&get(admin.addr, "/metrics").await);
    assert_eq!(
        value(
            &samples,
            "mesh_amb_client_connections_total",
            &[("service", "redis")]
        ),
        3.0
    );
}

/// Runs the built `mesh-amb` with `args`: exit code, stdout, stderr.
async fn mesh_amb(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mesh-amb"))
            .args(&args)
            .env_remove("MESH_AMB_ADMIN")
            .output()
            .expect("run mesh-amb")
    })
    .await
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_a_running_nodes_tables() {
    let (redis, dead, amb, admin) = with_an_ejected_backend().await;
    let port = admin.addr.port().to_string();
    let (code, out, err) = mesh_amb(&["status", "--admin", &port]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("consume redis  listen {}", amb.addr)),
        "{out}"
    );
    let row = |addr: SocketAddr| {
        out.lines()
            .find(|l| l.contains(&format!("static:{addr}")))
            .unwrap_or_else(|| panic!("no row for {addr}:\n{out}"))
            .to_owned()
    };
    assert!(row(redis.addr).contains(" up "), "{out}");
    let dead_row = row(dead);
    assert!(dead_row.contains("ejected ("), "{dead_row}");
    assert!(dead_row.contains("refused"), "{dead_row}");

    let (code, json, _) = mesh_amb(&["status", "--admin", &port, "--json"]).await;
    assert_eq!(code, Some(0));
    let doc: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(doc["nodes"][0]["consumes"][0]["clients"], 2);

    let (code, _, err) = mesh_amb(&["status"]).await;
    assert_eq!(code, Some(2), "no --admin is bad input");
    assert!(err.starts_with("error: give --admin"), "{err}");
    let closed = closed_port().port().to_string();
    let (code, _, err) = mesh_amb(&["status", "--admin", &closed]).await;
    assert_eq!(code, Some(1), "nobody there: {err}");
    assert!(err.contains("is a node running with --admin"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn a_request_sent_half_way_does_not_hold_the_shutdown() {
    let redis = Redis::start().await;
    let amb = Amb::start(&[redis.addr], settings(Policy::RoundRobin)).await;
    let listener = mesh_amb::admin::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(mesh_amb::admin::serve(
        listener,
        amb.node().observer(),
        stop.clone(),
    ));
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // Served meanwhile: the half-sent request holds one slot only.
    assert_eq!(get(addr, "/healthz").await, "ok\n");
    stop.cancel();
    tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("the admin endpoint stopped although a request was half-sent")
        .unwrap()
        .unwrap();
    drop(half);
}

#[tokio::test]
async fn two_consumes_of_one_name_are_told_apart_in_the_metrics() {
    let redis = Redis::start().await;
    let amb = Amb::start(&[redis.addr], settings(Policy::RoundRobin)).await;
    let admin = Admin::start(&amb);
    let mut config = (*amb.node().config()).clone();
    let mut second = config.consumes[0].clone();
    second.port = common::free_port();
    config.consumes.push(second);
    amb.node().reload(config).await.expect("the reload");
    // The parser refuses a series that appears twice.
    let samples = parse_prometheus(&get(admin.addr, "/metrics").await);
    let listens: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "mesh_amb_client_connections_total")
        .map(|s| s.labels["listen"].as_str())
        .collect();
    assert_eq!(listens.len(), 2, "{listens:?}");
    assert_ne!(listens[0], listens[1]);
}
