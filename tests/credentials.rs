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
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use common::{command, free_port, wait_for, Redis, Reply, DEADLINE};
use mesh_amb::secret::write_new_secret_file;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-amb");
/// Distinctive, so that a leak anywhere is found by a plain search.
const PASSWORD: &str = "pw-7f3a9c21-never-shown";
/// What a misconfigured node holds instead; a secret all the same.
const WRONG: &str = "wrong-e5d1b0-never-shown";

/// A directory of this test's files, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> TestDir {
        let dir = std::env::temp_dir().join(format!(
            "mesh-amb-creds-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    /// A new owner-only file holding `body`.
    fn secret(&self, name: &str, body: &str) -> PathBuf {
        let path = self.0.join(name);
        write_new_secret_file(&path, body.as_bytes()).unwrap();
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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
    /// Starts `mesh-amb --consume redis:PORT=BACKEND ARGS` on a free port
    /// (retried if another process grabs it first) and waits until it
    /// says it listens (a test connection would log in, and be counted).
    async fn start(dir: &TestDir, backend: SocketAddr, args: &[&str]) -> Amb {
        let log = dir.0.join(format!("amb-{}.log", fastrand::u64(..)));
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(BIN)
                .arg("--consume")
                .arg(format!("redis:{port}={backend}"))
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
    let dir = TestDir::new();
    let file = dir.secret("redis.pass", &format!("{PASSWORD}\n"));

    // Without credentials, the same server turns the application away.
    let plain = Amb::start(&dir, redis.addr, &[]).await;
    let r = plain.one(&[b"PING"]).await;
    assert!(noauth(&r), "without --credentials: {r:?}");
    drop(plain);

    let amb = Amb::start(&dir, redis.addr, &["--credentials", &credentials(&file)]).await;
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
    let dir = TestDir::new();

    // Nobody is logged in without the ambassador's help.
    let plain = Amb::start(&dir, redis.addr, &[]).await;
    let r = plain.one(&[b"PING"]).await;
    assert!(noauth(&r), "without --credentials: {r:?}");
    drop(plain);

    let file = dir.secret("alice.pass", &format!("alice\n{PASSWORD}\n"));
    let amb = Amb::start(&dir, redis.addr, &["--credentials", &credentials(&file)]).await;
    assert_eq!(amb.one(&[b"PING"]).await, pong());
    assert_eq!(
        amb.one(&[b"ACL", b"WHOAMI"]).await,
        Reply::Bulk(Some(b"alice".to_vec()))
    );
    amb.assert_nothing_shows();
}

#[tokio::test]
async fn a_wrong_password_is_a_resp_error_and_one_log_line() {
    let redis = Redis::start_with(&["--requirepass", PASSWORD]).await;
    let dir = TestDir::new();
    let file = dir.secret("wrong.pass", WRONG);
    let amb = Amb::start(&dir, redis.addr, &["--credentials", &credentials(&file)]).await;

    for _ in 0..5 {
        let e = turned_away(&amb).await;
        assert!(
            e.starts_with("ERR mesh-amb: the backend refused the credentials: WRONGPASS"),
            "{e}"
        );
    }
    let refused = "refused the credentials";
    assert_eq!(amb.warnings(refused), 1, "{}", amb.log());
    assert!(!amb.log().contains("ejected"), "{}", amb.log());

    // The server's password changes to the one the node holds: the next
    // client goes through, and the recovery is logged.
    let set_password = |from: &'static str, to: &'static str| async move {
        let mut admin = TcpStream::connect(redis.addr).await.unwrap();
        let auth = command(&mut admin, &[b"AUTH", from.as_bytes()])
            .await
            .unwrap();
        assert_eq!(auth, Reply::Simple("OK".into()));
        let args: [&[u8]; 4] = [b"CONFIG", b"SET", b"requirepass", to.as_bytes()];
        let set = command(&mut admin, &args).await.unwrap();
        assert_eq!(set, Reply::Simple("OK".into()));
    };
    set_password(PASSWORD, WRONG).await;
    assert_eq!(amb.one(&[b"PING"]).await, pong());
    assert!(amb.log().contains("accepts the credentials again"));
    // And a new refusal after a success is worth a new line.
    set_password(WRONG, PASSWORD).await;
    for _ in 0..3 {
        turned_away(&amb).await;
    }
    assert_eq!(amb.warnings(refused), 2, "{}", amb.log());
    amb.assert_nothing_shows();
}

#[tokio::test]
async fn a_backend_that_drops_the_login_is_ejected_one_that_stalls_is_not() {
    let dir = TestDir::new();
    let file = dir.secret("redis.pass", PASSWORD);

    // Accepts, then closes at once: as good as dead.
    let closing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing_addr = closing.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        while let Ok((s, _)) = closing.accept().await {
            drop(s);
        }
    });
    // Ejected for longer than the test, so that one line is all there is.
    let args = ["--credentials", &credentials(&file), "--eject-time", "1m"];
    let amb = Amb::start(&dir, closing_addr, &args).await;
    for _ in 0..3 {
        let e = turned_away(&amb).await;
        assert!(
            e.starts_with("ERR mesh-amb: the backend connection failed during the login"),
            "{e}"
        );
    }
    // Its accepts do not count as successes that would end the ejection.
    assert_eq!(amb.warnings("backend ejected"), 1, "{}", amb.log());
    assert!(!amb.log().contains("backend restored"), "{}", amb.log());
    amb.assert_nothing_shows();
    closer.abort();

    // Connects (the kernel completes the handshake) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let amb = Amb::start(
        &dir,
        silent.local_addr().unwrap(),
        &["--credentials", &credentials(&file)],
    )
    .await;
    for _ in 0..3 {
        let e = turned_away(&amb).await;
        assert!(
            e.contains("the backend did not answer the login within 300ms"),
            "{e}"
        );
    }
    assert_eq!(amb.warnings("did not answer the login"), 1, "{}", amb.log());
    assert!(!amb.log().contains("ejected"), "{}", amb.log());
    amb.assert_nothing_shows();
}

/// Starts the binary to fail: exit status 2 and one line of stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["--consume", "redis:6379=127.0.0.1:6379"])
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
    let dir = TestDir::new();
    let loose = dir.secret("loose.pass", PASSWORD);
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let three = dir.secret("three.pass", &format!("alice\n{PASSWORD}\n{WRONG}\n"));
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
