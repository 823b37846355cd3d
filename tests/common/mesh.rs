//! Real processes in a namespace lab (lab/src/lib.rs): `redis-server` and
//! `mesh-amb` started inside hosts, and a blocking RESP client run from
//! inside a host.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesh_amb::resp::Value;
use mesh_amb_lab::{wait_until, Host, Proc};

pub const BIN: &str = env!("CARGO_BIN_EXE_mesh-amb");
/// Generous bound for anything expected within seconds, so a loaded CI
/// machine slows a test down instead of failing it.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Per-request socket timeout of the test clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A real Redis in `host` on `port`, reachable from other hosts, that
/// answers `GET whoami` with the host's name.
pub fn redis(host: &Host, port: u16) -> Proc {
    let dir = host.dir().join(format!("redis-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = host.spawn(
        "redis-server",
        [
            "--port",
            &port.to_string(),
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ready = wait_until(DEADLINE, || {
        host.enter(|| request(addr, &["SET", "whoami", &host.name]))
            .as_deref()
            == Some("+OK")
    });
    assert!(
        ready,
        "redis on {}:{port} did not start:\n{}",
        host.name,
        p.output_tail(20)
    );
    p
}

/// `mesh-amb ARGS` in `host`, logging at debug to its stderr file.
pub fn amb(host: &Host, args: &[&str]) -> Proc {
    amb_logging(host, args, "mesh_amb=debug")
}

/// `mesh-amb ARGS` in `host` with `RUST_LOG=filter` (a flood at debug
/// would write a line per packet).
pub fn amb_logging(host: &Host, args: &[&str], filter: &str) -> Proc {
    let mut cmd = host.command(BIN);
    cmd.args(args).env("RUST_LOG", filter);
    host.spawn_cmd("mesh-amb", cmd)
}

/// A new cluster key file `name` in `dir`, made by `mesh-amb keygen`.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = std::process::Command::new(BIN)
        .arg("keygen")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen: {out:?}");
    path
}

/// The value of `key=VALUE` in a log line, up to the next space.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..].split_whitespace().next()
}

/// The address of `p`'s admin endpoint (`--admin 127.0.0.1:0`), read from
/// its start-up line once it is there.
pub fn admin_addr(p: &Proc) -> SocketAddr {
    let addr = mesh_amb_lab::wait_for(DEADLINE, || {
        let log = p.stderr();
        let line = log
            .lines()
            .find(|l| l.contains("admin endpoint listening"))?;
        let url = line.split("url=http://").nth(1)?;
        url.split('/').next()?.parse().ok()
    });
    addr.unwrap_or_else(|| panic!("no admin URL in the log:\n{}", p.output_tail(40)))
}

/// One HTTP/1.1 GET; the body, if the status was 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).ok()?;
    s.set_read_timeout(Some(DEADLINE)).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Lines of `p`'s log holding every one of `words`.
pub fn log_lines(p: &Proc, words: &[&str]) -> usize {
    p.stderr()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .count()
}

/// One RESP command on a new connection; the reply's first line.
pub fn request(addr: SocketAddr, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    command(&mut s, args)
}

/// One RESP command on an open connection: a bulk reply's value, or the
/// reply line itself (`+PONG`, `-ERR ...`).
pub fn command(s: &mut TcpStream, args: &[&str]) -> Option<String> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    Some(match mesh_amb::resp::command_blocking(s, &args).ok()? {
        Value::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        Value::Bulk(None) => "$-1".to_owned(),
        Value::Simple(t) => format!("+{t}"),
        Value::Error(t) => format!("-{t}"),
        Value::Int(n) => format!(":{n}"),
        Value::Array(_) => "*".to_owned(),
    })
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `GET whoami` through `port` on `client` answers `want`.
pub fn wait_routed_to(client: &Host, port: u16, want: &str) -> Duration {
    let t0 = Instant::now();
    let ok = wait_until(DEADLINE, || {
        client
            .enter(|| request(local(port), &["GET", "whoami"]))
            .as_deref()
            == Some(want)
    });
    assert!(
        ok,
        "{} never reached {want} through port {port}",
        client.name
    );
    t0.elapsed()
}

/// Waits until `p`'s log (its stderr) contains `needle`; how long that
/// took.
pub fn wait_log(p: &Proc, needle: &str) -> Duration {
    let t0 = Instant::now();
    assert!(
        wait_until(DEADLINE, || p.stderr().contains(needle)),
        "no {needle:?} in the log:\n{}",
        p.output_tail(40)
    );
    t0.elapsed()
}

/// An mDNS response with a TTL-0 PTR `_amb._tcp.local. -> instance`.
pub fn goodbye(instance: &str) -> Vec<u8> {
    let name = |n: &str| {
        let mut v = Vec::new();
        for l in n.trim_end_matches('.').split('.') {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v
    };
    let mut p = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    p.extend(name("_amb._tcp.local."));
    p.extend_from_slice(&[0, 12, 0, 1, 0, 0, 0, 0]);
    let rdata = name(instance);
    p.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    p.extend(rdata);
    p
}

/// A UDP counter of `host`'s namespace over both families: `name` in the
/// `Udp:` lines of `/proc/net/snmp` plus `Udp6<name>` in `snmp6` (e.g.
/// `OutDatagrams`, `RcvbufErrors`). A kernel without IPv6 adds nothing for
/// it; the IPv4 counter must be there.
pub fn udp_counter(host: &Host, name: &str) -> u64 {
    let (snmp, snmp6) = host.enter(|| {
        let read = |f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}"));
        (read("snmp"), read("snmp6"))
    });
    let snmp = snmp.expect("/proc/net/snmp");
    let udp: Vec<Vec<&str>> = snmp
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let v4 = match &udp[..] {
        [names, values] => names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse::<u64>().ok()),
        _ => None,
    }
    .unwrap_or_else(|| panic!("no Udp {name} in /proc/net/snmp:\n{snmp}"));
    let v6_name = format!("Udp6{name}");
    let v6 = snmp6
        .as_deref()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(v6_name.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    v4 + v6
}

/// Keeps an accepted connection open until its peer closes it, as a server
/// waiting for its client does: a provider's check fails a local service
/// that closes each connection at once.
pub fn hold(conn: std::io::Result<TcpStream>) {
    if let Ok(mut c) = conn {
        std::thread::spawn(move || std::io::copy(&mut c, &mut std::io::sink()));
    }
}

/// `host`'s IPv4 address on `dev`, with its prefix (`10.77.0.1/24`), as
/// `ip addr add` and `del` take it.
pub fn ipv4_with_prefix(host: &Host, dev: &str) -> String {
    let shown = host.run_ok("ip", ["-4", "-o", "addr", "show", "dev", dev]);
    shown
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no IPv4 address on {dev}: {shown}"))
        .to_owned()
}
