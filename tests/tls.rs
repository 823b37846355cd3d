//! Mutual TLS between ambassadors, across separate network stacks: what
//! crosses the link, who the providers' terminators let in, an existing PKI
//! instead of the cluster key, and a backend that cannot finish a handshake.

mod common;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use mesh_amb::security::{ClusterKey, Tls};
use mesh_amb::settings::{PkiFiles, SecuritySettings};
use mesh_amb_lab::{wait_for, wait_until, Host, Lab, Proc};

use common::mesh::*;

/// The TLS port a provider's log names for its terminator.
fn terminator_port(provider: &Proc) -> u16 {
    wait_for(DEADLINE, || {
        let log = provider.stderr();
        let line = log
            .lines()
            .find(|l| l.contains("TLS terminator listening"))?;
        let at = line.find("listen=")? + "listen=".len();
        let addr: SocketAddr = line[at..].split_whitespace().next()?.parse().ok()?;
        Some(addr.port())
    })
    .unwrap_or_else(|| panic!("no terminator in the log:\n{}", provider.output_tail(20)))
}

/// tcpdump on `host`'s port of the lab bridge: every TCP segment to or from
/// the host, written to a pcap file until [`Capture::stop`]. (The bridge
/// device itself sees only what is flooded, not unicast between ports.)
struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    fn start(host: &Host) -> Capture {
        let file = host.dir().join("bridge.pcap");
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &host.ifaces[0].bridge_netns]);
        cmd.args([
            "tcpdump",
            "-i",
            &host.name,
            "--immediate-mode",
            "-U",
            "-n",
            "-w",
        ]);
        cmd.arg(&file).arg("tcp");
        let proc = host.spawn_cmd("tcpdump", cmd);
        assert!(
            wait_until(DEADLINE, || proc.stderr().contains("listening on")),
            "tcpdump did not start:\n{}",
            proc.output_tail(10)
        );
        Capture { proc, file }
    }

    /// Waits until the capture holds `needle` (each packet is written as it
    /// comes), then stops it and returns the file.
    fn stop_after(mut self, needle: &str) -> Vec<u8> {
        let seen = wait_until(DEADLINE, || {
            std::fs::read(&self.file).is_ok_and(|pcap| contains(&pcap, needle))
        });
        assert!(
            seen,
            "the capture never saw {needle:?}: it must see the plaintext mesh, or it proves nothing"
        );
        self.proc.signal(libc::SIGINT);
        assert!(
            self.proc.wait_exit(DEADLINE).is_some(),
            "tcpdump did not stop"
        );
        std::fs::read(&self.file).unwrap()
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn with_the_cluster_key_no_redis_command_crosses_the_link_in_clear() {
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let key = keygen(lab.dir(), "cluster.key");
    let key = key.to_str().unwrap();
    let _redis = redis(h1, 6379);
    // The same Redis offered twice: through the key, and in clear.
    let _keyed = amb(h1, &["--cluster-key", key, "--provide", "redis:6379"]);
    let _plain = amb(h1, &["--provide", "plain:6379"]);
    let _consumer = amb(h2, &["--cluster-key", key, "--consume", "redis:7000"]);
    let _plain_consumer = amb(h2, &["--consume", "plain:7001"]);
    wait_routed_to(h2, 7000, "h1");
    wait_routed_to(h2, 7001, "h1");

    let capture = Capture::start(h1);
    let secret = format!("keyed-{}", fastrand::u64(..));
    let clear = format!("plain-{}", fastrand::u64(..));
    let set = |port, value: &str| h2.enter(|| request(local(port), &["SET", "marker", value]));
    assert_eq!(set(7000, &secret).as_deref(), Some("+OK"));
    assert_eq!(set(7001, &clear).as_deref(), Some("+OK"));
    // The plaintext mesh's command crossed after the keyed one.
    let pcap = capture.stop_after(&clear);
    assert!(
        !contains(&pcap, &secret),
        "a Redis command crossed the link in clear despite the cluster key"
    );
}

/// One TLS connection from inside `host` to `addr` with `security`'s
/// identity; the reply to PING, or why there is none.
fn tls_ping(host: &Host, addr: SocketAddr, security: SecuritySettings) -> Result<String, String> {
    host.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let key = security.cluster_key.as_deref();
            let tls = Tls::new(key, security.pki.as_ref(), "tester")
                .unwrap()
                .unwrap();
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let mut s = tls.connect(tcp).await.map_err(|e| e.to_string())?;
            s.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf))
                .await
                .map_err(|_| "no reply".to_owned())?
                .map_err(|e| format!("read: {e}"))?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    })
}

fn keyed(path: &Path) -> SecuritySettings {
    SecuritySettings {
        cluster_key: Some(Arc::new(ClusterKey::load(path).unwrap())),
        ..SecuritySettings::default()
    }
}

#[test]
fn a_terminator_lets_in_members_only() {
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let key = keygen(lab.dir(), "cluster.key");
    let other = keygen(lab.dir(), "other.key");
    let _redis = redis(h1, 6379);
    let provider = amb(
        h1,
        &[
            "--cluster-key",
            key.to_str().unwrap(),
            "--provide",
            "redis:6379",
        ],
    );
    let port = terminator_port(&provider);
    let addr = SocketAddr::new(IpAddr::V4(h1.ip), port);

    // A member gets through to Redis.
    assert_eq!(tls_ping(h2, addr, keyed(&key)).as_deref(), Ok("+PONG\r\n"));
    // Another cluster's member does not.
    let refused = tls_ping(h2, addr, keyed(&other));
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("handshake")),
        "{refused:?}"
    );
    // Nor does a plain client speaking Redis.
    let plain = h2.enter(|| request(addr, &["PING"]));
    assert_eq!(plain, None, "a plain client reached Redis");
    // A flood of clients that connect and say nothing: a member still gets
    // through meanwhile, and each silent one is closed, so a stalled
    // handshake costs a connection slot for a bounded time only.
    let mut silent: Vec<TcpStream> = h2.enter(|| {
        (0..200)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect()
    });
    assert_eq!(tls_ping(h2, addr, keyed(&key)).as_deref(), Ok("+PONG\r\n"));
    for s in &mut silent {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let closed = std::io::Read::read(s, &mut [0u8; 16]);
        assert!(
            matches!(closed, Ok(0) | Err(_)),
            "a silent client was not closed: {closed:?}"
        );
    }
    assert!(provider.stderr().contains("refused a mesh connection"));
}

/// PEM text of one DER object.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A CA of an existing PKI, as an operator would have made it.
struct Pki {
    ca_key: rcgen::KeyPair,
    ca: rcgen::Certificate,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca_key, ca }
    }

    /// Files for one node: its certificate, key (mode 0600) and the CA.
    fn node(&self, dir: &Path, name: &str) -> PkiFiles {
        use std::os::unix::fs::OpenOptionsExt;
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![format!("{name}.example")]).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let files = PkiFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join(format!("{name}-ca.crt")),
        };
        std::fs::write(&files.cert, pem("CERTIFICATE", cert.der())).unwrap();
        std::fs::write(&files.ca, pem("CERTIFICATE", self.ca.der())).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&files.key)
            .unwrap();
        std::io::Write::write_all(&mut f, pem("PRIVATE KEY", &key.serialize_der()).as_bytes())
            .unwrap();
        files
    }
}

fn pki_args(files: &PkiFiles) -> Vec<String> {
    let arg = |p: &Path| p.to_str().unwrap().to_owned();
    vec![
        "--tls-cert".into(),
        arg(&files.cert),
        "--tls-key".into(),
        arg(&files.key),
        "--tls-ca".into(),
        arg(&files.ca),
    ]
}

fn amb_with(host: &Host, mut args: Vec<String>, more: &[&str]) -> Proc {
    args.extend(more.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    amb(host, &args)
}

#[test]
fn an_existing_pki_replaces_the_derived_ca_and_a_backend_without_tls_is_dropped() {
    let lab = Lab::new(3);
    let (h1, h2, h3) = (lab.host("h1"), lab.host("h2"), lab.host("h3"));
    let ours = Pki::new("our CA");
    let theirs = Pki::new("another CA");
    let _redis = redis(h1, 6379);
    let provider = amb_with(
        h1,
        pki_args(&ours.node(lab.dir(), "h1")),
        &["--provide", "redis:6379"],
    );
    let port = terminator_port(&provider);
    let addr = SocketAddr::new(IpAddr::V4(h1.ip), port);
    let stranger = SecuritySettings {
        pki: Some(theirs.node(lab.dir(), "stranger")),
        ..SecuritySettings::default()
    };
    let refused = tls_ping(h2, addr, stranger);
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("handshake")),
        "{refused:?}"
    );

    // A rogue advertises a "TLS" port that speaks no TLS: dialed, it fails
    // the handshake and is dropped like a dead backend; no client fails.
    let _avahi = h3.start_avahi();
    let rogue = h3.enter(|| std::net::TcpListener::bind("0.0.0.0:0").unwrap());
    let rogue_port = rogue.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write;
        for s in rogue.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(b"+PONG\r\nnot tls at all\r\n");
        }
    });
    let _rogue_ad = h3.avahi_publish("rogue", "_amb._tcp", rogue_port, &["svc=redis", "tls=1"]);

    let consumer = amb_with(
        h2,
        pki_args(&ours.node(lab.dir(), "h2")),
        &["--consume", "redis:7000", "--connect-attempts", "3"],
    );
    wait_log(&consumer, "instance=rogue._amb._tcp.local.");
    // Its probe is a handshake, not a mere connect: it is found out before
    // any client is sent there.
    wait_log(&consumer, "never answered its probe");
    wait_routed_to(h2, 7000, "h1");
    let failed = (0..50)
        .filter(|_| {
            h2.enter(|| request(local(7000), &["GET", "whoami"]))
                .as_deref()
                != Some("h1")
        })
        .count();
    assert_eq!(failed, 0, "clients failed:\n{}", consumer.output_tail(30));
}

#[test]
fn a_tls_static_backend_reaches_a_terminator_on_a_fixed_port() {
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let key = keygen(lab.dir(), "cluster.key");
    let key = key.to_str().unwrap();
    let _redis = redis(h1, 6379);
    let provider = amb(h1, &["--cluster-key", key, "--provide", "redis:6379@16379"]);
    assert_eq!(terminator_port(&provider), 16379);
    // What a site that mDNS does not reach would write.
    let tls_backend = format!("redis:7000=tls://{}:16379", h1.ip);
    let consumer = amb(h2, &["--cluster-key", key, "--consume", &tls_backend]);
    wait_routed_to(h2, 7000, "h1");
    // The same port dialed in clear gives nothing, and the start says so.
    let plain_backend = format!("redis:7001={}:16379", h1.ip);
    let plain = amb(h2, &["--cluster-key", key, "--consume", &plain_backend]);
    wait_log(&plain, "static backends without tls://");
    let log = plain.stderr();
    let warning = log
        .lines()
        .find(|l| l.contains("static backends without tls://"));
    let named = format!("backends={}:16379", h1.ip);
    assert!(
        warning.is_some_and(|w| w.contains("in clear") && w.contains(&named)),
        "{warning:?}"
    );
    let reply = h2.enter(|| {
        wait_for(DEADLINE, || {
            std::net::TcpStream::connect(local(7001)).ok()?;
            Some(request(local(7001), &["GET", "whoami"]))
        })
    });
    assert_eq!(
        reply,
        Some(None),
        "a plain client got a reply from a terminator"
    );
    let warned = |p: &Proc| p.stderr().contains("static backends without tls://");
    assert!(
        !warned(&consumer),
        "a tls:// backend warned of:\n{}",
        consumer.output_tail(10)
    );
}

#[test]
fn silent_clients_of_a_terminator_take_no_slot_of_local_clients() {
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let key = keygen(lab.dir(), "cluster.key");
    let _redis = redis(h1, 6379);
    // One node, a tiny limit: it provides redis to the mesh and stands in
    // for it locally (a static backend).
    let node = amb(
        h1,
        &[
            "--cluster-key",
            key.to_str().unwrap(),
            "--provide",
            "redis:6379",
            "--consume",
            "local:7000=127.0.0.1:6379",
            "--max-connections",
            "4",
        ],
    );
    let addr = SocketAddr::new(IpAddr::V4(h1.ip), terminator_port(&node));
    wait_routed_to(h1, 7000, "h1");
    // Twice the limit in silent clients from the LAN.
    let silent: Vec<TcpStream> =
        h2.enter(|| (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect());
    // Local clients one after another (the first may use the permit the
    // accept loop already holds).
    for _ in 0..3 {
        assert_eq!(
            h1.enter(|| request(local(7000), &["GET", "whoami"]))
                .as_deref(),
            Some("h1")
        );
    }
    // Had a local client needed a slot of theirs, it would have waited
    // for the terminator to close one of them (after its handshake timeout).
    let closed = silent
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let r = std::io::Read::read(&mut &**s, &mut [0u8; 1]);
            !matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert_eq!(closed, 0, "the local client waited for a LAN client's slot");
}

#[test]
fn a_consumer_with_tls_uses_a_plain_provider_only_when_allowed() {
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let _redis = redis(h1, 6379);
    let _plain = amb(h1, &["--provide", "redis:6379"]);
    let pki = Pki::new("our CA");
    let strict = amb_with(
        h2,
        pki_args(&pki.node(lab.dir(), "strict")),
        &["--consume", "redis:7000"],
    );
    let _lenient = amb_with(
        h2,
        pki_args(&pki.node(lab.dir(), "lenient")),
        &["--consume", "redis:7001", "--allow-plaintext"],
    );
    wait_routed_to(h2, 7001, "h1");
    wait_log(&strict, "it offers no TLS");
    assert_eq!(
        h2.enter(|| request(local(7000), &["GET", "whoami"])),
        None,
        "a consumer with TLS used a plain provider"
    );
}
