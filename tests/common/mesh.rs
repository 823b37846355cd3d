//! Real processes in a namespace lab (lab/src/lib.rs): `redis-server` and
//! `mesh-amb` started inside hosts, and a blocking RESP client run from
//! inside a host.

use std::net::{SocketAddr, TcpStream};
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
    let mut cmd = host.command(BIN);
    cmd.args(args).env("RUST_LOG", "mesh_amb=debug");
    host.spawn_cmd("mesh-amb", cmd)
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
