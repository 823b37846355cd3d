//! `mesh-amb status`: a running node's tables on a terminal, read from its
//! admin endpoint's `/api/v1/status` (the node must run with `--admin`).
//! What `consul members` or HAProxy's `show stat` give, for one node.
//!
//! The document is read as plain JSON rather than into the library's
//! types: a newer node may add fields, and this side shows what it knows.

use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::Value;

use mesh_amb::settings::AdminAddr;
use mesh_amb::status::{human_bytes, human_span, VERSION};

use crate::columns::{aligned, escape};
use crate::Failure;

/// `mesh-amb status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The running node's admin endpoint: what it was given as --admin
    /// (a PORT alone is on loopback).
    #[arg(long, value_name = "[ADDR:]PORT", env = "MESH_AMB_ADMIN")]
    admin: Option<AdminAddr>,

    /// Print the status document as JSON (the shape of /api/v1/status).
    #[arg(long)]
    json: bool,
}

/// Bound on the whole request, from connect to the answer's last byte: the
/// node answers from memory. A bound per read alone would let a peer that
/// trickles its answer hold `status` forever.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the answer: a node with thousands of backends stays far below.
const MAX_ANSWER: u64 = 64 << 20;

/// Runs `mesh-amb status`.
pub fn run(args: StatusArgs) -> Result<(), Failure> {
    let Some(AdminAddr(addr)) = args.admin else {
        return Err(Failure::Usage(
            "give --admin [ADDR:]PORT: the --admin of the running node (or set MESH_AMB_ADMIN)"
                .into(),
        ));
    };
    if addr.port() == 0 {
        // Any port to listen on, for a node; nothing to dial.
        return Err(Failure::Usage(
            "--admin: give the port the running node's admin endpoint listens on, not 0".into(),
        ));
    }
    let body = get(addr, "/api/v1/status").map_err(|e| {
        Failure::Runtime(e.context(format!(
            "cannot read http://{addr}/api/v1/status (is a node running with --admin {addr}?)"
        )))
    })?;
    let doc: Value = serde_json::from_str(&body)
        .context("the admin endpoint answered something that is not JSON")
        .map_err(Failure::Runtime)?;
    if doc["version"] != VERSION {
        let served = match &doc["version"] {
            Value::Null => "no status version".to_owned(),
            v => format!("status version {v}"),
        };
        return Err(Failure::Runtime(anyhow::anyhow!(
            "the node serves {served}, this mesh-amb reads version {VERSION}"
        )));
    }
    let out = if args.json { body } else { render(&doc) };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
        .map_err(Failure::Runtime)
}

/// One HTTP/1.1 GET to our own admin endpoint; the body of a 200 answer.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    // An endpoint on all addresses is reached on loopback, which is also
    // the host name it expects there.
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, addr.port());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    let raw = exchange(addr, request.as_bytes(), Instant::now() + TIMEOUT).map_err(|e| {
        // A read timeout is EAGAIN on Linux ("Resource temporarily
        // unavailable"), which says nothing to the user.
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            anyhow::anyhow!("the admin endpoint did not answer within {TIMEOUT:?}")
        } else {
            e.into()
        }
    })?;
    let text = String::from_utf8(raw).context("the answer is not UTF-8")?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("the answer has no HTTP header");
    };
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        match body.lines().next().filter(|l| !l.trim().is_empty()) {
            Some(line) => bail!("{status}: {line}"),
            None => bail!("{status}"),
        }
    }
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    if chunked {
        return unchunk(body);
    }
    Ok(body.to_owned())
}

/// Sends `request` and reads the answer up to the peer's close (at most
/// [`MAX_ANSWER`] bytes), all before `deadline`: each step is bounded by
/// what is left of it, so a timeout error ends the exchange in time.
fn exchange(addr: SocketAddr, request: &[u8], deadline: Instant) -> io::Result<Vec<u8>> {
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(io::Error::from(io::ErrorKind::TimedOut))
    };
    let s = TcpStream::connect_timeout(&addr, left()?)?;
    s.set_write_timeout(Some(left()?))?;
    (&s).write_all(request)?;
    let mut answer = (&s).take(MAX_ANSWER);
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        s.set_read_timeout(Some(left()?))?;
        match answer.read(&mut chunk) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The body of a chunked transfer encoding.
fn unchunk(mut rest: &str) -> anyhow::Result<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("a truncated chunk")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("a bad chunk size")?;
        if size == 0 {
            return Ok(body);
        }
        let chunk = after.get(..size).context("a truncated chunk")?;
        body.push_str(chunk);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .context("a truncated chunk")?;
    }
}

/// The document as a person reads it: per node, its consumes with a row
/// per backend, its provides, and what discovery ignored.
fn render(doc: &Value) -> String {
    let now = doc["generated_at_ms"].as_u64().unwrap_or(0);
    let mut out = String::new();
    for node in doc["nodes"].as_array().into_iter().flatten() {
        render_node(&mut out, node, now);
    }
    if out.is_empty() {
        out.push_str("no node\n");
    }
    out
}

fn render_node(out: &mut String, n: &Value, now: u64) {
    let ago = |field: &Value| human_span(now.saturating_sub(field.as_u64().unwrap_or(now)));
    let key = match n["cluster_key"].as_str() {
        Some(fp) => format!("signed (key {fp})"),
        None => "unsigned (no cluster key)".into(),
    };
    let tls = if n["tls"] == true {
        "mutual TLS"
    } else {
        "plain TCP"
    };
    out.push_str(&format!(
        "node {}  mesh-amb {}  up {}  {key}  {tls}\n",
        text(&n["node"]),
        text(&n["version"]),
        ago(&n["started_at_ms"]),
    ));
    for c in n["consumes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\nconsume {}  listen {}  {} backends  {}  clients {}  turned away {}  waiting {}  active {}  \
             in {}  out {}\n",
            text(&c["name"]),
            text(&c["listen"]),
            text(&c["source"]),
            text(&c["policy"]),
            text(&c["clients"]),
            text(&c["turned_away"]),
            text(&c["waiting"]),
            text(&c["active"]),
            human_bytes(c["bytes_in"].as_u64().unwrap_or(0)),
            human_bytes(c["bytes_out"].as_u64().unwrap_or(0)),
        ));
        let backends = c["backends"].as_array().map_or(&[][..], Vec::as_slice);
        if backends.is_empty() {
            out.push_str("  no backend known yet\n");
            continue;
        }
        let mut rows = vec![[
            "BACKEND", "SOURCE", "ADDRESS", "STATE", "WEIGHT", "ACTIVE", "TOTAL", "FAILS", "IN",
            "OUT", "CHANGED",
        ]
        .map(str::to_owned)
        .to_vec()];
        for b in backends {
            let mut state = text(&b["state"]);
            if let Some(why) = b["ejected_for"].as_str() {
                match b["ejected_remaining_ms"].as_u64() {
                    Some(left) => state.push_str(&format!(
                        " ({}; retried in {})",
                        escape(why),
                        human_span(left)
                    )),
                    None => state.push_str(&format!(" ({})", escape(why))),
                }
            }
            // An instance's label, without the service type they all share.
            let key = b["key"].as_str().unwrap_or("-");
            let short = escape(mesh_amb::discovery::wire::label_of(key).unwrap_or(key));
            rows.push(vec![
                short,
                text(&b["origin"]),
                text(&b["address"]),
                state,
                text(&b["weight"]),
                text(&b["active"]),
                text(&b["total"]),
                text(&b["failures"]),
                human_bytes(b["bytes_in"].as_u64().unwrap_or(0)),
                human_bytes(b["bytes_out"].as_u64().unwrap_or(0)),
                format!("{} ago", ago(&b["changed_at_ms"])),
            ]);
        }
        indent(out, &aligned(&rows));
    }
    let provides = n["provides"].as_array().map_or(&[][..], Vec::as_slice);
    if !provides.is_empty() {
        out.push('\n');
        let mut rows = vec![[
            "PROVIDE",
            "PORT",
            "LOCAL",
            "ADVERTISED",
            "OFFERED",
            "TLS",
            "WEIGHT",
            "SIGNED",
            "CHANGED",
        ]
        .map(str::to_owned)
        .to_vec()];
        for p in provides {
            let signed: Vec<String> = p["signed_addrs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            rows.push(vec![
                text(&p["name"]),
                text(&p["port"]),
                text(&p["local"]),
                text(&p["advertised"]),
                text(&p["advertised_port"]),
                if p["tls"] == true { "yes" } else { "no" }.into(),
                text(&p["weight"]),
                if signed.is_empty() {
                    "-".into()
                } else {
                    signed.join(",")
                },
                format!("{} ago", ago(&p["changed_at_ms"])),
            ]);
        }
        indent(out, &aligned(&rows));
    }
    let ignored: Vec<String> = n["discovery"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pair| pair[1].as_u64().unwrap_or(0) > 0)
        .map(|pair| format!("{} {}", text(&pair[0]).replace('_', " "), text(&pair[1])))
        .collect();
    out.push_str(&format!(
        "\ndiscovery: {} mDNS events{}\n",
        text(&n["discovery_events"]),
        if ignored.is_empty() {
            String::new()
        } else {
            format!("; {}", ignored.join(", "))
        }
    ));
}

/// A field, escaped for the terminal (a string may come from the link);
/// `-` when absent (a node of an older version may lack a newer field).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        Value::Null => "-".into(),
        other => escape(&other.to_string()),
    }
}

fn indent(out: &mut String, table: &str) {
    for line in table.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            unchunk("4\r\nWiki\r\n6;x=1\r\npedia \r\n0\r\n\r\n").unwrap(),
            "Wikipedia "
        );
        assert!(unchunk("4\r\nWi").is_err());
        assert!(unchunk("zz\r\n").is_err());
    }

    #[test]
    fn a_node_reads_as_tables() {
        let doc: Value = serde_json::from_str(
            r#"{"version":1,"generated_at_ms":10000,"nodes":[{"node":"n1","version":"0.1.0",
            "started_at_ms":0,"cluster_key":null,"tls":false,"discovery_events":3,
            "discovery":[["unsigned",2],["bad_txt",0]],"provides":[],
            "consumes":[{"name":"redis","listen":"127.0.0.1:6379","source":"discovered",
            "policy":"p2c","clients":5,"turned_away":1,"waiting":2,"active":0,"bytes_in":2048,"bytes_out":10,
            "backends":[{"key":"redis@h1._amb._tcp.local.","origin":"mesh","address":"10.0.0.1:6379",
            "state":"ejected","ejected_for":"refused\u001b[2J","ejected_remaining_ms":1500,
            "weight":1,"active":0,"total":4,"failures":1,"bytes_in":0,"bytes_out":0,
            "changed_at_ms":9000}]}]}]}"#,
        )
        .unwrap();
        let out = render(&doc);
        assert!(out.starts_with("node n1  mesh-amb 0.1.0  up 10 s"), "{out}");
        assert!(out.contains("turned away 1  waiting 2  active 0"), "{out}");
        let row = out.lines().find(|l| l.contains("redis@h1")).unwrap();
        assert!(!row.contains("_amb._tcp"), "{row}");
        assert!(
            row.contains("ejected (refused\\u{1b}[2J; retried in 1 s)"),
            "escaped: {row}"
        );
        assert!(
            out.contains("discovery: 3 mDNS events; unsigned 2\n"),
            "{out}"
        );
        assert!(
            !out.contains('\u{1b}'),
            "no control character reaches the terminal"
        );
    }

    #[test]
    fn a_field_an_older_node_lacks_reads_as_a_dash() {
        let doc: Value = serde_json::from_str(
            r#"{"version":1,"generated_at_ms":0,"nodes":[{"node":"n1","consumes":[{"name":"redis",
            "clients":5,"turned_away":1,"active":0,"backends":[]}]}]}"#,
        )
        .unwrap();
        let out = render(&doc);
        assert!(out.contains("turned away 1  waiting -  active 0"), "{out}");
        assert!(!out.contains("null"), "{out}");
    }
}
