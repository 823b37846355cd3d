//! SIGHUP reloads the configuration of a running `mesh-amb`: consumes and
//! provides are added, changed and removed without a failed connection, and
//! an invalid configuration changes nothing. Every process runs in a
//! namespace lab (lab/src/lib.rs), so no multicast leaves it.

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mesh_amb_lab::{wait_until, Host, Lab, Proc};

mod common;

use common::mesh::*;

/// Spacing of the client loop's connections: steady load that leaves CPU
/// for the processes under test on a 2-core machine.
const CLIENT_PACE: Duration = Duration::from_millis(2);

/// A new connection per `GET whoami`, one after another, until finished.
struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    /// What each failed request was, by its start time.
    failed: Arc<Mutex<Vec<Duration>>>,
    /// Answers seen, in order, without repeats in a row.
    answers: Arc<Mutex<Vec<String>>>,
    handle: JoinHandle<()>,
}

impl Clients {
    fn start(host: &Host, port: u16) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(Vec::<String>::new()));
        let (flag, n, bad, seen) = (stop.clone(), ok.clone(), failed.clone(), answers.clone());
        let t0 = Instant::now();
        let handle = host.thread(move || {
            while !flag.load(Ordering::Relaxed) {
                let start = t0.elapsed();
                match request(local(port), &["GET", "whoami"]) {
                    Some(who) if !who.starts_with('-') => {
                        n.fetch_add(1, Ordering::Relaxed);
                        let mut seen = seen.lock().unwrap();
                        if seen.last() != Some(&who) {
                            seen.push(who);
                        }
                    }
                    _ => bad.lock().unwrap().push(start),
                }
                std::thread::sleep(CLIENT_PACE);
            }
        });
        Clients {
            stop,
            ok,
            failed,
            answers,
            handle,
        }
    }

    fn wait_answered_by(&self, who: &str) {
        let seen = || self.answers.lock().unwrap().iter().any(|a| a == who);
        assert!(wait_until(DEADLINE, seen), "no client reached {who}");
    }

    fn wait_more(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let more = || self.ok.load(Ordering::Relaxed) >= target;
        assert!(wait_until(DEADLINE, more), "the clients stalled");
    }

    /// Requests that succeeded, and the start times of those that failed.
    fn finish(self) -> (usize, Vec<Duration>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("client loop");
        let failed = std::mem::take(&mut *self.failed.lock().unwrap());
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

fn write(path: &Path, toml: &str) {
    std::fs::write(path, toml).unwrap();
}

/// Sends SIGHUP and waits for the `n`th reload outcome in the log; that
/// line.
fn hangup(amb: &Proc, n: usize) -> String {
    amb.signal(libc::SIGHUP);
    let outcomes = || {
        amb.stderr()
            .lines()
            .filter(|l| l.contains("reloaded: ") || l.contains("reload rejected"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(DEADLINE, || outcomes().len() >= n),
        "no reload outcome #{n} in the log:\n{}",
        amb.output_tail(30)
    );
    outcomes().swap_remove(n - 1)
}

/// Three Redis servers on h1 answering `GET whoami` with a, b and c.
fn three_redis(h: &Host) -> Vec<Proc> {
    [(7001, "a"), (7002, "b"), (7003, "c")]
        .into_iter()
        .map(|(port, name)| {
            let p = redis(h, port);
            let set = h.enter(|| request(local(port), &["SET", "whoami", name]));
            assert_eq!(set.as_deref(), Some("+OK"));
            p
        })
        .collect()
}

fn get_whoami(s: &mut TcpStream) -> Option<String> {
    command(s, &["GET", "whoami"])
}

#[test]
fn sighup_under_load_adds_changes_and_removes_consumes_without_a_failed_connection() {
    let lab = Lab::new(1);
    let h = lab.host("h1");
    let _redis = three_redis(h);
    let file = h.dir().join("amb.toml");
    write(
        &file,
        r#"consume = ["one:6001=127.0.0.1:7001", "gone:6002=127.0.0.1:7001"]"#,
    );
    let amb = amb(h, &["--config", file.to_str().unwrap()]);
    wait_log(&amb, "service=gone listen=127.0.0.1:6002");
    wait_routed_to(h, 6001, "a");
    let mut long = h.enter(|| TcpStream::connect(local(6001))).unwrap();
    long.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(get_whoami(&mut long).as_deref(), Some("a"));
    let clients = Clients::start(h, 6001);
    clients.wait_more(50);

    // Static backends changed in place, one consume added, one removed.
    write(
        &file,
        r#"consume = ["one:6001=127.0.0.1:7002", "new:6003=127.0.0.1:7003"]"#,
    );
    let line = hangup(&amb, 1);
    for change in ["-consume gone", "+consume new", "~consume one"] {
        assert!(line.contains(change), "{change} in {line}");
    }
    let refused = h.enter(|| TcpStream::connect(local(6002)));
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "the removed consume refuses new connections"
    );
    clients.wait_answered_by("b");
    let added = h.enter(|| request(local(6003), &["GET", "whoami"]));
    assert_eq!(added.as_deref(), Some("c"), "the added consume answers");
    assert_eq!(
        get_whoami(&mut long).as_deref(),
        Some("a"),
        "the long-lived connection keeps its backend"
    );

    // A proxy setting: every listener moves to a new accept loop.
    write(
        &file,
        r#"consume = ["one:6001=127.0.0.1:7002", "new:6003=127.0.0.1:7003"]
connect_timeout = "5s""#,
    );
    let line = hangup(&amb, 2);
    assert!(line.contains("reloaded: ~connect_timeout"), "{line}");
    clients.wait_more(100);
    // The same file again: nothing to do.
    let line = hangup(&amb, 3);
    assert!(line.contains("reloaded: no change"), "{line}");
    clients.wait_more(50);
    assert_eq!(get_whoami(&mut long).as_deref(), Some("a"));

    let (ok, failed) = clients.finish();
    eprintln!(
        "{ok} requests through three reloads, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests at {failed:?}");
    assert_eq!(log_lines(&amb, &["ERROR"]), 0, "{}", amb.stderr());
    assert_eq!(log_lines(&amb, &["needs a restart"]), 0, "{}", amb.stderr());
}

#[test]
fn an_invalid_configuration_is_rejected_and_the_old_one_keeps_serving() {
    let lab = Lab::new(1);
    let h = lab.host("h1");
    let _redis = three_redis(h);
    let file = h.dir().join("amb.toml");
    let good = r#"consume = ["one:6001=127.0.0.1:7001"]"#;
    write(&file, good);
    let mut amb = amb(h, &["--config", file.to_str().unwrap()]);
    wait_routed_to(h, 6001, "a");

    let taken = h.enter(|| TcpListener::bind(local(0))).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let cases = [
        ("consume = [".to_owned(), "line 1"),
        (
            r#"consume = ["one:6001=127.0.0.1:7002"]
max_connections = 0"#
                .to_owned(),
            "max_connections '0'",
        ),
        (
            r#"consume = ["one:6001=127.0.0.1:7002", "two:6001=127.0.0.1:7003"]"#.to_owned(),
            "duplicate listen port 6001",
        ),
        // Binding comes before any change: 'one' keeps its backend.
        (
            format!(r#"consume = ["one:6001=127.0.0.1:7002", "two:{taken_port}=127.0.0.1:7003"]"#),
            "cannot listen on 127.0.0.1:",
        ),
    ];
    for (n, (body, why)) in cases.iter().enumerate() {
        write(&file, body);
        let line = hangup(&amb, n + 1);
        assert!(
            line.contains("reload rejected") && line.contains(why),
            "{line}"
        );
        assert_eq!(log_lines(&amb, &["ERROR"]), n + 1, "{}", amb.stderr());
        assert!(amb.is_running());
        let answer = h.enter(|| request(local(6001), &["GET", "whoami"]));
        assert_eq!(answer.as_deref(), Some("a"), "the old configuration serves");
    }
    drop(taken);
    // Nothing of the rejected configurations was started: the host's
    // listeners are Redis's and the first configuration's. Asked of the
    // kernel: binding a port again can fail for a socket that is no
    // listener (it did once, not traced), and a connect could meet itself.
    let listeners = h.run_ok("ss", ["-Hltn"]);
    let ports: BTreeSet<u16> = listeners
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([6001, 7001, 7002, 7003]),
        "a rejected configuration listens (port {taken_port} was taken):\n{listeners}"
    );
    write(&file, good);
    let line = hangup(&amb, cases.len() + 1);
    assert!(line.contains("reloaded: no change"), "{line}");
}

#[test]
fn provides_added_changed_and_removed_by_a_reload_reach_another_host() {
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let _redis = redis(h1, 7000);
    let file = h1.dir().join("amb.toml");
    let provide = |list: &str| format!("provide = [{list}]\ndrain_period = \"1s\"\n");
    write(&file, &provide(r#""api:7000""#));
    let provider = amb(h1, &["--config", file.to_str().unwrap(), "--node-id", "h1"]);
    let consumer = amb(h2, &["--consume", "api:8080", "--consume", "web:8081"]);
    wait_routed_to(h2, 8080, "h1");

    write(&file, &provide(r#""web:7000""#));
    let line = hangup(&provider, 1);
    assert!(
        line.contains("-provide api") && line.contains("+provide web"),
        "{line}"
    );
    let took = wait_routed_to(h2, 8081, "h1");
    eprintln!("the added provide served a consumer {took:?} after the reload line");
    let left = || log_lines(&consumer, &["backend left", "instance=api@h1._amb._tcp"]) > 0;
    assert!(
        wait_until(DEADLINE, left),
        "the removed provide never left the consumer's table:\n{}",
        consumer.output_tail(30)
    );
    assert!(log_lines(&provider, &["provide=api:7000", "advertisement withdrawn"]) > 0);
    // api's goodbye must not take web, which lives on the same host, with
    // it: a removal would show a second after the goodbye, before api's.
    let web_left = || log_lines(&consumer, &["backend left", "instance=web@h1"]);
    assert_eq!(web_left(), 0, "{}", consumer.output_tail(30));

    write(&file, &provide(r#""web:7000*5""#));
    let line = hangup(&provider, 2);
    assert!(line.contains("reloaded: ~provide web"), "{line}");
    let updated = || {
        log_lines(
            &consumer,
            &["backend updated", "instance=web@h1._amb._tcp", "weight=5"],
        ) > 0
    };
    assert!(
        wait_until(DEADLINE, updated),
        "the new weight was not advertised:\n{}",
        consumer.output_tail(30)
    );
    // Re-advertised, not withdrawn: no goodbye for web.
    assert_eq!(web_left(), 0, "{}", consumer.output_tail(30));
    assert_eq!(
        h2.enter(|| request(local(8081), &["GET", "whoami"]))
            .as_deref(),
        Some("h1")
    );
}

#[test]
fn a_provide_changed_while_its_service_dies_is_withdrawn_not_left_standing() {
    let lab = Lab::new(2);
    let (h1, h2) = (lab.host("h1"), lab.host("h2"));
    let mut redis7000 = redis(h1, 7000);
    let file = h1.dir().join("amb.toml");
    // Slow to notice a failure on its own: the reload comes first.
    let provide = |spec: &str| {
        format!("provide = [\"{spec}\"]\ncheck_interval = \"500ms\"\nfall = 20\ndrain_period = \"1s\"\n")
    };
    write(&file, &provide("web:7000"));
    let provider = amb(h1, &["--config", file.to_str().unwrap(), "--node-id", "h1"]);
    let consumer = amb(h2, &["--consume", "web:8081"]);
    wait_routed_to(h2, 8081, "h1");

    redis7000.kill();
    write(&file, &provide("web:7000*5"));
    let line = hangup(&provider, 1);
    assert!(line.contains("reloaded: ~provide web"), "{line}");
    // The new provider's first check fails: the record the old one left
    // is withdrawn, not kept as the link's truth until the node stops.
    let left = || log_lines(&consumer, &["backend left", "instance=web@h1._amb._tcp"]) > 0;
    assert!(
        wait_until(DEADLINE, left),
        "the dead provide stayed advertised:\n{}",
        provider.output_tail(30)
    );
}

/// A credentials file rotated in place: the reload reads it again and
/// says so, and the next connections log in with the new password. The
/// same file read again is no change, and neither password is logged.
/// A config file swapped for a FIFO that some process holds open and never
/// closes: the reload waits for its writers up to their deadline (10 s)
/// and is rejected, while the node serves on; and a SIGTERM during such a
/// reload ends the node at once. Before, the read waited for ever, and the
/// node, having drained, never exited.
#[test]
fn a_reload_held_by_a_pipe_neither_stalls_the_node_nor_holds_its_exit() {
    let lab = Lab::new(1);
    let h = lab.host("h1");
    let _redis = three_redis(h);
    let file = h.dir().join("amb.toml");
    write(&file, r#"consume = ["one:6001=127.0.0.1:7001"]"#);
    let mut amb = amb(h, &["--config", file.to_str().unwrap()]);
    wait_routed_to(h, 6001, "a");

    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success());
    // Read and write: a writer that does not wait for a reader to open.
    let mut writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut writer, b"consume = [").unwrap();

    let t0 = Instant::now();
    let line = hangup(&amb, 1);
    assert!(
        line.contains("reload rejected") && line.contains("did not finish within 10s"),
        "{line}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(9), "{:?}", t0.elapsed());
    let answer = h.enter(|| request(local(6001), &["GET", "whoami"]));
    assert_eq!(answer.as_deref(), Some("a"), "the old configuration serves");

    // Again, and a SIGTERM while the node reads the pipe.
    amb.signal(libc::SIGHUP);
    let fds = PathBuf::from(format!("/proc/{}/fd", amb.pid()));
    // Told by the file itself, not its path: a process in another mount
    // namespace (the lab's hosts, under a chroot) shows the path from the
    // namespace's root.
    let fifo = std::fs::metadata(&file).unwrap();
    let reading = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(&fds)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::metadata(fd.path()).ok())
            .any(|m| (m.dev(), m.ino()) == (fifo.dev(), fifo.ino()))
    };
    assert!(
        wait_until(DEADLINE, reading),
        "the reload never opened the pipe"
    );
    amb.signal(libc::SIGTERM);
    // Well before the pipe's deadline, which a drop of the runtime waited for.
    let exited = amb.wait_exit(Duration::from_secs(6));
    assert!(
        exited.is_some_and(|s| s.success()),
        "{exited:?}: {}",
        amb.output_tail(10)
    );
    drop(writer);
}

#[test]
fn a_rotated_password_is_read_again_and_named_in_the_summary() {
    let lab = Lab::new(1);
    let h = lab.host("h1");
    let (first, second) = ("first-Pa55word", "second-Pa55word");
    let _redis = h.spawn(
        "redis-server",
        [
            "--port",
            "7001",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            first,
        ],
    );
    let redis = local(7001);
    let up = || h.enter(|| request(redis, &["AUTH", first])).as_deref() == Some("+OK");
    assert!(wait_until(DEADLINE, up), "redis-server did not start");
    let pass = lab.dir().join("redis.pass");
    mesh_amb::secret::write_new_secret_file(&pass, format!("{first}\n").as_bytes()).unwrap();
    let file = lab.dir().join("amb.toml");
    let config = format!(
        "consume = [\"redis:6001=127.0.0.1:7001\"]\ncredentials = [\"redis=redis:{}\"]\n",
        pass.display()
    );
    write(&file, &config);
    let amb = amb(h, &["--config", file.to_str().unwrap()]);
    let ping = || h.enter(|| request(local(6001), &["PING"]));
    let served = || ping().as_deref() == Some("+PONG");
    assert!(wait_until(DEADLINE, served), "{}", amb.output_tail(20));

    // Redis takes the new password first, then the file.
    h.enter(|| {
        let mut admin = TcpStream::connect(redis).unwrap();
        assert_eq!(
            command(&mut admin, &["AUTH", first]).as_deref(),
            Some("+OK")
        );
        let set = command(&mut admin, &["CONFIG", "SET", "requirepass", second]);
        assert_eq!(set.as_deref(), Some("+OK"));
    });
    let refused = ping().unwrap_or_default();
    assert!(refused.contains("refused the credentials"), "{refused}");
    std::fs::write(&pass, format!("{second}\n")).unwrap();
    let line = hangup(&amb, 1);
    assert!(line.contains("reloaded: ~credentials redis"), "{line}");
    assert_eq!(ping().as_deref(), Some("+PONG"));

    let line = hangup(&amb, 2);
    assert!(line.contains("reloaded: no change"), "{line}");
    let log = amb.stderr();
    assert!(
        !log.contains(first) && !log.contains(second),
        "a password in the log"
    );
}
