//! Credentials injection through the `mesh-amb` binary, in front of real
//! `redis-server` processes on loopback (and once across two network
//! namespaces, through the cluster's TLS tunnel): the application sends no
//! AUTH and the ambassador logs in for it; a refused login is a RESP error
//! for the client and one log line; the secret shows up nowhere.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{command, free_port, wait_for, Redis, Reply, TempDir, DEADLINE};
use mesh_amb::backends::balance::{Balancer, Policy};
use mesh_amb::backends::table::{BackendSpec, Health, Origin, Table, Target, Update};
use mesh_amb::backends::{Service, Source};
use mesh_amb::credentials::CredentialsSpec;
use mesh_amb::net::pipeline::{connect, ConnectError};
use mesh_amb::secret::write_new_secret_file;
use mesh_amb::settings::ProxySettings;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-amb");
/// Distinctive, so that a leak anywhere is found by a plain search.
const PASSWORD: &str = "pw-7f3a9c21-never-shown";
/// What a misconfigured node holds instead; a secret all the same.
const WRONG: &str = "wrong-e5d1b0-never-shown";

/// `--credentials redis=redis:FILE`.
fn credentials(file: &Path) -> String {
    format!("redis=redis:{}", file.display())
}

/// The binary at RUST_LOG=trace, its log in a file; SIGKILLed by PID on
/// drop.
struct Amb {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Amb {
    /// Starts `mesh-amb --consume redis:PORT=BACKEND,... ARGS` on a free
    /// port (retried if another process grabs it first) and waits until it
    /// says it listens (a test connection would log in, and be counted).
    async fn start(dir: &TempDir, backends: &[SocketAddr], args: &[&str]) -> Amb {
        let log = dir.path(&format!("amb-{}.log", fastrand::u64(..)));
        let backends: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(BIN)
                .arg("--consume")
                .arg(format!("redis:{port}={}", backends.join(",")))
                .args(["--connect-timeout", "300ms"])
                .args(args)
                .env("RUST_LOG", "trace")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawn mesh-amb");
            let end = Instant::now() + DEADLINE;
            let listening = format!("listening service=redis listen=127.0.0.1:{port} ");
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // most likely lost the port: try another
                }
                if std::fs::read_to_string(&log).unwrap().contains(&listening) {
                    return Amb { child, port, log };
                }
                assert!(Instant::now() < end, "mesh-amb did not start listening");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("mesh-amb did not start");
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).await.unwrap()
    }

    /// One new connection, one command, its reply.
    async fn one(&self, args: &[&[u8]]) -> Reply {
        command(&mut self.connect().await, args).await.unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Warnings whose line contains `text`.
    fn warnings(&self, text: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(text))
            .count()
    }

    /// The secrets are in none of the log, the command line, the
    /// environment.
    fn assert_nothing_shows(&self) {
        let log = self.log();
        let proc = |f: &str| std::fs::read(format!("/proc/{}/{f}", self.child.id())).unwrap();
        let places = [
            ("the log", log.into_bytes()),
            ("the command line", proc("cmdline")),
            ("the environment", proc("environ")),
        ];
        for (name, text) in places {
            let text = String::from_utf8_lossy(&text);
            for secret in [PASSWORD, WRONG] {
                assert!(!text.contains(secret), "{secret} in {name}: {text}");
            }
        }
    }
}

impl Drop for Amb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client's side of a refusal: an error reply, then the end of the
/// connection.
async fn turned_away(amb: &Amb) -> String {
    let mut s = amb.connect().await;
    let reply = command(&mut s, &[b"PING"]).await.unwrap();
    let Reply::Error(e) = reply else {
        panic!("PING answered {reply:?}, not an error");
    };
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("the ambassador closes the connection")
        .unwrap();
    assert!(rest.is_empty(), "after the error: {rest:?}");
    for secret in [PASSWORD, WRONG] {
        assert!(!e.contains(secret), "{e}");
    }
    e
}

fn pong() -> Reply {
    Reply::Simple("PONG".into())
}

fn noauth(r: &Reply) -> bool {
    matches!(r, Reply::Error(e) if e.starts_with("NOAUTH"))
}

#[tokio::test]
async fn the_ambassador_gives_the_password_so_the_application_need_not() {
    let redis = Redis::start_with(&["--requirepass", PASSWORD]).await;
    let dir = TempDir::new();
    let file = dir.secret("redis.pass", format!("{PASSWORD}\n"));

    // Without credentials, the same server turns the application away.
    let plain = Amb::start(&dir, &[redis.addr], &[]).await;
    let r = plain.one(&[b"PING"]).await;
    assert!(noauth(&r), "without --credentials: {r:?}");
    drop(plain);

    let amb = Amb::start(&dir, &[redis.addr], &["--credentials", &credentials(&file)]).await;
    let mut app = amb.connect().await;
    assert_eq!(command(&mut app, &[b"PING"]).await.unwrap(), pong());
    let set = command(&mut app, &[b"SET", b"k", b"v"]).await.unwrap();
    assert_eq!(set, Reply::Simple("OK".into()));
    let get = command(&mut app, &[b"GET", b"k"]).await.unwrap();
    assert_eq!(get, Reply::Bulk(Some(b"v".to_vec())));
    drop(app);
    // Past the connection's last (debug) line, everything it logged is in.
    wait_for(DEADLINE, "the connection's end in the log", || async {
        amb.log().contains("connection closed")
    })
    .await;
    amb.assert_nothing_shows();
}

#[tokio::test]
async fn an_acl_user_logs_in_as_itself() {
    let acl = [
        "--user",
        "alice",
        "on",
        &format!(">{PASSWORD}"),
        "~*",
        "&*",
        "+@all",
    ];
    let mut args = acl.to_vec();
    args.extend(["--user", "default", "off"]);
    let redis = Redis::start_with(&args).await;
    let dir = TempDir::new();

    // Nobody is logged in without the ambassador's help.
    let plain = Amb::start(&dir, &[redis.addr], &[]).await;
    let r = plain.one(&[b"PING"]).await;
    assert!(noauth(&r), "without --credentials: {r:?}");
    drop(plain);

    let file = dir.secret("alice.pass", format!("alice\n{PASSWORD}\n"));
    let amb = Amb::start(&dir, &[redis.addr], &["--credentials", &credentials(&file)]).await;
    assert_eq!(amb.one(&[b"PING"]).await, pong());
    assert_eq!(
        amb.one(&[b"ACL", b"WHOAMI"]).await,
        Reply::Bulk(Some(b"alice".to_vec()))
    );
    amb.assert_nothing_shows();
}

/// Every backend refuses the node's password: each client gets the
/// refusal as a RESP error, after trying them all; one log line per
/// backend, and no ejection (the backends are alive). One that takes the
/// password again serves every client, even while the other refuses.
#[tokio::test]
async fn a_wrong_password_is_a_resp_error_and_one_log_line_per_backend() {
    let r1 = Redis::start_with(&["--requirepass", PASSWORD]).await;
    let r2 = Redis::start_with(&["--requirepass", PASSWORD]).await;
    let dir = TempDir::new();
    let file = dir.secret("wrong.pass", WRONG);
    let args = ["--credentials", &credentials(&file)];
    let amb = Amb::start(&dir, &[r1.addr, r2.addr], &args).await;

    for _ in 0..5 {
        let e = turned_away(&amb).await;
        assert!(
            e.starts_with("ERR mesh-amb: the backend refused the credentials: WRONGPASS"),
            "{e}"
        );
    }
    let refused = "refused the credentials";
    assert_eq!(amb.warnings(refused), 2, "{}", amb.log());
    assert!(!amb.log().contains("ejected"), "{}", amb.log());

    // The first server's password changes to the one the node holds: the
    // clients go through, whichever backend they try first, and the
    // recovery is logged.
    let set_password = |redis: SocketAddr, from: &'static str, to: &'static str| async move {
        let mut admin = TcpStream::connect(redis).await.unwrap();
        let auth = command(&mut admin, &[b"AUTH", from.as_bytes()])
            .await
            .unwrap();
        assert_eq!(auth, Reply::Simple("OK".into()));
        let args: [&[u8]; 4] = [b"CONFIG", b"SET", b"requirepass", to.as_bytes()];
        let set = command(&mut admin, &args).await.unwrap();
        assert_eq!(set, Reply::Simple("OK".into()));
    };
    set_password(r1.addr, PASSWORD, WRONG).await;
    for _ in 0..5 {
        assert_eq!(amb.one(&[b"PING"]).await, pong());
    }
    assert!(amb.log().contains("accepts the credentials again"));
    // And a new refusal after a success is worth a new line.
    set_password(r1.addr, WRONG, PASSWORD).await;
    for _ in 0..3 {
        turned_away(&amb).await;
    }
    assert_eq!(amb.warnings(refused), 3, "{}", amb.log());
    assert!(!amb.log().contains("ejected"), "{}", amb.log());
    amb.assert_nothing_shows();
}

/// The lines of `log` saying that `addr` was ejected.
fn ejections(log: &str, addr: SocketAddr) -> usize {
    let backend = format!("backend={addr} ");
    log.lines()
        .filter(|l| l.contains("backend ejected") && l.contains(&backend))
        .count()
}

/// Bound, round robin (the first client meets the backends in the order
/// given), ejected for longer than the test (one line each is all
/// there is).
fn in_order(credentials: &str) -> [&str; 6] {
    [
        "--credentials",
        credentials,
        "--balance",
        "round-robin",
        "--eject-time",
        "1m",
    ]
}

/// A Redis whose `AUTH` is renamed away repeats the password as an unknown
/// command's arguments, cut at 128 bytes: no part of it reaches the client
/// or the log, whole or cut short.
#[tokio::test]
async fn a_password_a_backend_repeats_cut_short_shows_nowhere() {
    let redis = Redis::start_with(&["--rename-command", "AUTH", ""]).await;
    let long = format!("{PASSWORD}-{}", "0123456789abcdef".repeat(12));
    let dir = TempDir::new();
    let args = [
        "--credentials",
        &credentials(&dir.secret("long.pass", &long)),
    ];
    let amb = Amb::start(&dir, &[redis.addr], &args).await;
    let e = turned_away(&amb).await;
    assert_eq!(
        e.trim_end(),
        "ERR mesh-amb: the backend answered the login with an error: \
         ERR unknown command 'AUTH', with args beginning with: '<redacted>'"
    );
    let log = amb.log();
    assert!(log.contains("answered the login with an error"), "{log}");
    for run in long.as_bytes().windows(10) {
        let run = std::str::from_utf8(run).unwrap();
        assert!(!log.contains(run), "{run} in the log: {log}");
    }
    amb.assert_nothing_shows();
    drop(amb);

    // Behind a long user name, Redis's cut leaves the password's first
    // seven bytes, fewer than a run: hidden all the same.
    let user = "u".repeat(118);
    let file = dir.secret("user.pass", format!("{user}\n{long}\n"));
    let amb = Amb::start(&dir, &[redis.addr], &["--credentials", &credentials(&file)]).await;
    let e = turned_away(&amb).await;
    assert!(
        e.trim_end().ends_with(&format!("'{user}' '<redacted>'")),
        "{e}"
    );
    let log = amb.log();
    assert!(log.contains("answered the login with an error"), "{log}");
    assert!(!log.contains(&format!("'{}", &long[..4])), "{log}");
    amb.assert_nothing_shows();
}

/// A backend that takes the connection and then stalls or drops the login
/// failed like a dead one: ejected, and the client goes on to the next
/// backend without noticing.
#[tokio::test]
async fn a_backend_that_stalls_or_drops_the_login_is_ejected_and_skipped() {
    let redis = Redis::start_with(&["--requirepass", PASSWORD]).await;
    let dir = TempDir::new();
    let file = credentials(&dir.secret("redis.pass", PASSWORD));

    // Connects (the kernel completes the handshake) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Accepts, then closes at once.
    let closing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = [silent.local_addr().unwrap(), closing.local_addr().unwrap()];
    let closer = tokio::spawn(async move {
        while let Ok((s, _)) = closing.accept().await {
            drop(s);
        }
    });
    let mut args = in_order(&file).to_vec();
    args.extend(["--login-timeout", "300ms"]);
    let amb = Amb::start(&dir, &[bad[0], bad[1], redis.addr], &args).await;
    for _ in 0..20 {
        assert_eq!(amb.one(&[b"PING"]).await, pong());
    }
    let log = amb.log();
    for addr in bad {
        assert_eq!(ejections(&log, addr), 1, "{addr}: {log}");
    }
    assert!(
        log.contains("did not answer the login within 300ms"),
        "{log}"
    );
    assert!(log.contains("failed during the login"), "{log}");
    // The accepts do not count as successes that would end the ejection.
    assert!(!log.contains("backend restored"), "{log}");
    assert_eq!(amb.warnings("closing client connection"), 0, "{log}");
    amb.assert_nothing_shows();
    closer.abort();
}

/// A Redis that stalls (here `CLIENT PAUSE`; a slow command, a script, a
/// fork's pause) answers the login late: the clients that came meanwhile
/// are served once it answers, as without a login, and the backend stays
/// in. Bounded at the connect timeout (300 ms here), the login reset them
/// and ejected it.
#[tokio::test]
async fn a_login_a_stalled_redis_answers_late_serves_its_client() {
    let redis = Redis::start_with(&["--requirepass", PASSWORD]).await;
    let dir = TempDir::new();
    let file = credentials(&dir.secret("redis.pass", PASSWORD));
    let amb = Amb::start(&dir, &[redis.addr], &["--credentials", &file]).await;
    assert_eq!(amb.one(&[b"PING"]).await, pong());

    let stall = Duration::from_millis(1500);
    let mut admin = TcpStream::connect(redis.addr).await.unwrap();
    let auth = command(&mut admin, &[b"AUTH", PASSWORD.as_bytes()]).await;
    assert_eq!(auth.unwrap(), Reply::Simple("OK".into()));
    let ms = stall.as_millis().to_string();
    let pause = command(&mut admin, &[b"CLIENT", b"PAUSE", ms.as_bytes(), b"ALL"]).await;
    assert_eq!(pause.unwrap(), Reply::Simple("OK".into()));
    let t0 = Instant::now();
    let ping = || amb.one(&[b"PING"]);
    let (a, b, c) = tokio::join!(ping(), ping(), ping());
    for reply in [a, b, c] {
        assert_eq!(reply, pong(), "{}", amb.log());
    }
    // Served once the pause was over, not before: the stall was real.
    assert!(
        t0.elapsed() >= stall - Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(ejections(&amb.log(), redis.addr), 0, "{}", amb.log());
    amb.assert_nothing_shows();
}

/// A Redis at its `maxclients` answers the login with an error that is
/// not about the credentials: the client waits and is served once a
/// connection leaves, where it was turned away at once.
#[tokio::test]
async fn a_client_of_a_full_redis_waits_for_a_connection_to_leave() {
    let redis = Redis::start_with(&["--requirepass", PASSWORD, "--maxclients", "1"]).await;
    let dir = TempDir::new();
    let file = credentials(&dir.secret("redis.pass", PASSWORD));
    let amb = Amb::start(&dir, &[redis.addr], &["--credentials", &file]).await;
    let mut holder = TcpStream::connect(redis.addr).await.unwrap();
    let auth = command(&mut holder, &[b"AUTH", PASSWORD.as_bytes()]).await;
    assert_eq!(auth.unwrap(), Reply::Simple("OK".into()));

    let asking = tokio::spawn({
        let port = amb.port;
        async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            command(&mut s, &[b"PING"]).await
        }
    });
    wait_for(DEADLINE, "the full Redis's answer in the log", || async {
        amb.log()
            .contains("answered the login with an error: ERR max number of clients")
    })
    .await;
    assert!(!asking.is_finished(), "{:?}", asking.await);
    drop(holder);
    assert_eq!(asking.await.unwrap().unwrap(), pong(), "{}", amb.log());
    assert_eq!(ejections(&amb.log(), redis.addr), 0, "{}", amb.log());
}

/// What a test backend does with each connection: reports go into the
/// vector.
type Answer = fn(TcpStream, Arc<Mutex<Vec<usize>>>) -> tokio::task::JoinHandle<()>;

/// A test backend on a port of its own, stopped on drop.
struct TestBackend {
    addr: SocketAddr,
    /// Connections taken so far.
    accepted: Arc<AtomicUsize>,
    /// What the connections reported.
    reports: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestBackend {
    /// Gives each connection to `answer`.
    fn start(answer: Answer) -> TestBackend {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepted.clone(), reports.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::Relaxed);
                answer(s, r.clone());
            }
        });
        TestBackend {
            addr,
            accepted,
            reports,
            task,
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads until the AUTH command is in (the CRLF after the password);
/// `false` when the connection ends first.
async fn auth_read(s: &mut TcpStream) -> bool {
    let end = format!("{PASSWORD}\r\n");
    let mut got = Vec::new();
    let mut buf = [0; 256];
    while !got.ends_with(end.as_bytes()) {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// What the flood backend writes at most, should nobody stop it.
const FLOOD: usize = 100 << 20;

/// A backend that answers the login with something no Redis server sends
/// failed like a dead one, and clients go to the good backend. One that
/// floods its answer (a bulk string of 60 MB announced) gets the first
/// few KiB of it read, not the rest: memory stays bounded.
#[tokio::test]
async fn a_backend_answering_garbage_or_a_flood_is_ejected_and_read_no_further() {
    /// The most a flooded connection may take: the answer's cap, plus what
    /// the kernel buffers on both sides of a loopback connection.
    const BOUND: usize = 16 << 20;

    let redis = Redis::start_with(&["--requirepass", PASSWORD]).await;
    let dir = TempDir::new();
    let file = credentials(&dir.secret("redis.pass", PASSWORD));

    let garbage = TestBackend::start(|mut s, _| {
        tokio::spawn(async move {
            if auth_read(&mut s).await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                let _ = s.read(&mut [0; 16]).await;
            }
        })
    });
    // Reports how much it wrote to each connection.
    let flood = TestBackend::start(|mut s, written| {
        tokio::spawn(async move {
            let mut total = 0;
            if auth_read(&mut s).await {
                let mut chunk = b"$60000000\r\n".to_vec();
                chunk.resize(64 * 1024, 0);
                while total < FLOOD && s.write_all(&chunk).await.is_ok() {
                    total += chunk.len();
                    chunk.fill(0);
                }
            }
            written.lock().unwrap().push(total);
        })
    });
    let (garbage, flood_addr) = (garbage.addr, flood.addr);
    let amb = Amb::start(&dir, &[garbage, flood_addr, redis.addr], &in_order(&file)).await;
    // A burst at once, so that several clients may meet the flood before
    // it is ejected, then one at a time.
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let port = amb.port;
            tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                command(&mut s, &[b"PING"]).await.unwrap()
            })
        })
        .collect();
    for client in burst {
        assert_eq!(client.await.unwrap(), pong());
    }
    for _ in 0..10 {
        assert_eq!(amb.one(&[b"PING"]).await, pong());
    }
    let log = amb.log();
    for addr in [garbage, flood_addr] {
        assert_eq!(ejections(&log, addr), 1, "{addr}: {log}");
    }
    assert!(log.contains("not as a Redis server does"), "{log}");
    assert_eq!(amb.warnings("closing client connection"), 0, "{log}");

    // The flooded connections end once the ambassador has dropped them.
    wait_for(DEADLINE, "the flooded connections to end", || async {
        flood.reports.lock().unwrap().len() == flood.accepted.load(Ordering::Relaxed)
    })
    .await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", amb.child.id())).unwrap();
    let peak_kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let written = flood.reports.lock().unwrap().clone();
    println!(
        "flood: bytes written to each connection before it was dropped: {written:?}; \
         ambassador peak RSS {peak_kib} KiB"
    );
    let most = written.iter().max().unwrap();
    assert!(*most < BOUND, "a flooded connection took {most} bytes");
    assert!(
        peak_kib < 64 * 1024,
        "the ambassador grew to {peak_kib} KiB"
    );
    amb.assert_nothing_shows();
}

/// A refused login leaves the backend's health as it was: a discovered
/// backend on probation is neither proven by it nor ejected, and an
/// ejected one stays ejected (it serves none of this node's clients);
/// only a login that succeeds proves and restores.
#[tokio::test]
async fn a_refusal_neither_proves_nor_ejects_nor_restores() {
    let redis = Redis::start_with(&["--requirepass", PASSWORD]).await;
    let dir = TempDir::new();
    let table = Arc::new(Table::with_probation(Duration::from_secs(60)));
    table.apply(Update::Upsert(BackendSpec {
        key: "redis@peer".into(),
        target: Target::Addrs(vec![redis.addr]),
        weight: 1,
        draining: false,
        tls: false,
        origin: Origin::Static,
    }));
    let stats = table.snapshot().backends[0].stats.clone();
    let service = |name: &str, password: &str| {
        let spec: CredentialsSpec = credentials(&dir.secret(name, password)).parse().unwrap();
        Service {
            name: "redis".into(),
            table: table.clone(),
            balancer: Balancer::new(Policy::P2c),
            source: Source::Static,
            listener: None,
            credentials: Some(Arc::new(spec.load().unwrap())),
            counters: Default::default(),
        }
    };
    let (wrong, right) = (
        service("wrong.pass", WRONG),
        service("redis.pass", PASSWORD),
    );
    let settings = ProxySettings::default();
    let refused = |r: &Result<_, ConnectError>| matches!(r, Err(ConnectError::Refused(_)));

    let r = connect(&wrong, &settings, None).await;
    assert!(refused(&r), "{r:?}");
    assert!(!table.is_proven(&stats), "a refusal proves nothing");
    assert_eq!(table.health(&stats), Health::Healthy, "nor ejects");
    let r = connect(&right, &settings, None).await;
    assert!(r.is_ok(), "{r:?}");
    assert!(table.is_proven(&stats), "a login does");

    // Ejected (as after a failure): a refusal does not end it, a login does.
    assert!(table.report_failure(&stats, &"refused").is_some());
    let r = connect(&wrong, &settings, None).await;
    assert!(refused(&r), "{r:?}");
    assert!(matches!(table.health(&stats), Health::Ejected { .. }));
    let r = connect(&right, &settings, None).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(table.health(&stats), Health::Healthy);
}

/// Starts the binary to fail: exit status 2 and one line of stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["--consume", "redis:6380=127.0.0.1:6379"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run mesh-amb");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    stderr
}

#[test]
fn bad_credentials_exit_2_naming_the_file_never_the_secret() {
    let dir = TempDir::new();
    let loose = dir.secret("loose.pass", PASSWORD);
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let three = dir.secret("three.pass", format!("alice\n{PASSWORD}\n{WRONG}\n"));
    let good = dir.secret("good.pass", PASSWORD);
    let show = |p: &Path| p.display().to_string();
    let cases: &[(String, String)] = &[
        (
            credentials(&loose),
            format!(
                "{} is readable by group or others (mode 0644)",
                show(&loose)
            ),
        ),
        (
            credentials(&three),
            format!("{}: it has 3 lines", show(&three)),
        ),
        (
            format!("cache=redis:{}", show(&good)),
            "'cache' is not a consumed service".into(),
        ),
        (
            format!("redis=memcached:{}", show(&good)),
            "unknown protocol 'memcached' (known: redis)".into(),
        ),
        (
            "redis=redis:/nonexistent/pass".into(),
            "cannot read /nonexistent/pass".into(),
        ),
    ];
    for (spec, want) in cases {
        let stderr = refused(&["--credentials", spec]);
        assert!(stderr.contains(want), "{spec}: {stderr}");
        for secret in [PASSWORD, WRONG, "alice"] {
            assert!(!stderr.contains(secret), "{spec}: {stderr}");
        }
    }
}

/// With the cluster key, the login happens inside the mutual TLS tunnel:
/// the consumer logs in to a Redis in another network stack, through that
/// host's ambassador and its TLS terminator.
#[test]
fn the_login_runs_inside_the_tls_tunnel() {
    use common::mesh::{amb, local, request};
    use mesh_amb_lab::{wait_until, Lab};

    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let key = lab.dir().join("cluster.key");
    let out = Command::new(BIN).arg("keygen").arg(&key).output().unwrap();
    assert!(out.status.success(), "keygen: {out:?}");
    let key = key.to_str().unwrap();
    let pass = lab.dir().join("redis.pass");
    write_new_secret_file(&pass, PASSWORD.as_bytes()).unwrap();

    let redis_dir = h1.dir().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let _redis = h1.spawn(
        "redis-server",
        [
            "--port",
            "6379",
            "--save",
            "",
            "--requirepass",
            PASSWORD,
            "--dir",
            redis_dir.to_str().unwrap(),
        ],
    );
    let noauth = || {
        h1.enter(|| request(local(6379), &["PING"]))
            .is_some_and(|r| r.starts_with("-NOAUTH"))
    };
    assert!(wait_until(DEADLINE, noauth), "redis did not start");
    let _provider = amb(h1, &["--cluster-key", key, "--provide", "redis:6379"]);
    let spec = format!("redis=redis:{}", pass.display());
    let consumer = amb(
        h2,
        &[
            "--cluster-key",
            key,
            "--consume",
            "redis:7000",
            "--credentials",
            &spec,
        ],
    );
    // A consumer with the key and without --allow-plaintext uses TLS
    // backends only: a PONG is a login that went through the tunnel.
    let pong = || h2.enter(|| request(local(7000), &["PING"])).as_deref() == Some("+PONG");
    assert!(
        wait_until(DEADLINE, pong),
        "no PONG through the tunnel:\n{}",
        consumer.output_tail(20)
    );
    assert!(!consumer.stderr().contains(PASSWORD));
}
