//! The `mesh-amb` binary as a user runs it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, ping, Redis, TempDir, DEADLINE};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-amb");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("run mesh-amb")
}

/// A new cluster key `cluster.key` in `dir`, made by `mesh-amb keygen`:
/// its path.
fn keygen_in(dir: &TempDir) -> String {
    let key = dir.path("cluster.key").to_str().unwrap().to_owned();
    let out = run(&["keygen", &key], &[]);
    assert_eq!(out.status.code(), Some(0), "keygen: {out:?}");
    key
}

/// Arguments, environment, and what the error must mention.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_input_exits_2_with_one_line() {
    let cases: &[Case] = &[
        (&[], &[], "nothing to do"),
        (&["--consume", "redis:0"], &[], "'redis:0'"),
        // Control characters are shown escaped, not sent to the terminal.
        (&["--consume", "re\x1b[31mdis:1"], &[], "'re\\u{1b}[31mdis'"),
        (&["--consume", "redis:65536=127.0.0.1:1"], &[], "65536"),
        (&["--consume", "redis:6379=10.0.0.5"], &[], "'10.0.0.5'"),
        (&["--provide", "redis:99999"], &[], "99999"),
        (
            &["--consume", "a:7000=h:1", "--consume", "b:7000=h:2"],
            &[],
            "duplicate listen port 7000",
        ),
        (
            &["--config", "/nonexistent/amb.toml"],
            &[],
            "/nonexistent/amb.toml",
        ),
        (
            &["--balance", "fastest", "--consume", "a:1"],
            &[],
            "'fastest'",
        ),
        (&["--no-such-flag"], &[], "'--no-such-flag'"),
        (
            &["--check", "--bind", "fe80::1", "--consume", "a:7000=h:1"],
            &[],
            "--bind 'fe80::1': a link-local address needs an interface",
        ),
        (
            &["--bind", "example.org", "--consume", "a:1"],
            &[],
            "'example.org'",
        ),
        (
            &["--idle-timeout", "forever", "--consume", "a:1"],
            &[],
            "'forever'",
        ),
        (
            &["--consume", "a:1"],
            &[("MESH_AMB_BIND", "nowhere")],
            "'nowhere'",
        ),
        (
            &["--from-env"],
            &[("DB_PORT_5432_TCP", "tcp://10.0.0.7")],
            "DB_PORT_5432_TCP",
        ),
        // Socket options the kernel would refuse on every connection.
        (
            &["--consume", "a:1=h:1", "--tcp-keepalive", "500ms"],
            &[],
            "--tcp-keepalive '500ms'",
        ),
        (
            &["--consume", "a:1=h:1", "--tcp-keepalive-interval", "10h"],
            &[],
            "--tcp-keepalive-interval '10h'",
        ),
        (
            &["--consume", "a:1=h:1", "--tcp-user-timeout", "25days"],
            &[],
            "--tcp-user-timeout '25days'",
        ),
    ];
    for (args, env, want) in cases {
        let out = run(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {stderr:?}"
        );
        assert!(
            stderr.contains(want),
            "{args:?}: {stderr:?} does not name {want:?}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains('\x1b'), "{args:?}: {stderr:?}");
    }
}

#[test]
fn a_bad_config_file_exits_2() {
    let path = std::env::temp_dir().join(format!("mesh-amb-cli-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "consume = [\"redis:7379=127.0.0.1:6379\"]\ncolour = \"blue\"\n",
    )
    .unwrap();
    let out = run(&["--config", path.to_str().unwrap()], &[]);
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown field `colour`") && stderr.contains("line 2"),
        "{stderr}"
    );
}

/// With TLS on, `--check` names the static backends a key does not cover
/// (plain, off this host), and only those, unless plaintext is allowed.
#[test]
fn check_warns_of_plain_static_backends_off_this_host_with_tls_on() {
    let dir = TempDir::new();
    let key = keygen_in(&dir);
    let consume = "a:7000=10.0.0.5:6379,tls://10.0.0.6:16379,127.0.0.1:6379,localhost:6380";
    let check = |more: &[&str]| {
        let out = run(&[&["--check", "--consume", consume], more].concat(), &[]);
        assert_eq!(out.status.code(), Some(0), "{more:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let warnings: Vec<String> = (stdout.lines())
            .filter(|l| l.starts_with("warning:"))
            .map(str::to_owned)
            .collect();
        warnings
    };
    let warned = check(&["--cluster-key", &key]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].starts_with("warning: consume a: 10.0.0.5:6379: ")
            && warned[0].contains("in clear"),
        "{warned:?}"
    );
    assert_eq!(
        check(&["--cluster-key", &key, "--allow-plaintext"]),
        [""; 0]
    );
    // Without TLS every backend is plain, as the user chose.
    let plain = "a:7000=10.0.0.5:6379";
    let out = run(&["--check", "--consume", plain], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
}

/// A FIFO with no writer, or a device, named as a file is refused at
/// once: opening the FIFO waited for a writer (the start hung, and a
/// reload with the admin endpoint behind it), and /dev/zero was read until
/// memory ran out. A pipe with a writer is read: `--config /dev/stdin`, as
/// `--config <(envsubst < mesh.toml.in)` is.
#[test]
fn a_fifo_with_no_writer_or_a_device_is_refused_at_once_and_a_pipe_is_read() {
    let dir = TempDir::new();
    let fifo = dir.path("fifo").to_str().unwrap().to_owned();
    let made = Command::new("mkfifo").args(["-m", "600", &fifo]).status();
    assert!(made.unwrap().success());
    let credentials = format!("r=redis:{fifo}");
    let cases: &[(&[&str], &str)] = &[
        (&["--config", &fifo], "nothing to do"),
        (
            &["--consume", "r:1=h:1", "--credentials", &credentials],
            "it is empty",
        ),
        (
            &["--consume", "r:1=h:1", "--cluster-key", &fifo],
            "--cluster-key",
        ),
        (&["--config", "/dev/zero"], "is not a regular file"),
        (
            &[
                "--consume",
                "r:1=h:1",
                "--tls-cert",
                "/dev/zero",
                "--tls-key",
                &fifo,
                "--tls-ca",
                "/dev/zero",
            ],
            "is not a regular file",
        ),
    ];
    let check = |args: &[&str], stdin: Stdio| {
        let child = Command::new(BIN)
            .arg("--check")
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        output_within(child, DEADLINE)
    };
    for (args, want) in cases {
        let out = check(args, Stdio::null());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let (reader, mut writer) = std::io::pipe().unwrap();
    use std::io::Write as _;
    writer
        .write_all(b"consume = [\"r:7000=10.0.0.5:6379\"]\n")
        .unwrap();
    drop(writer);
    let out = check(&["--config", "/dev/stdin"], reader.into());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("consume r: listen on 127.0.0.1:7000"),
        "{stdout}"
    );
}

/// Two listeners of a node on one port fail its start: `--check` says so
/// first, for the admin endpoint on a consume's or a terminator's port.
#[test]
fn check_refuses_an_admin_port_another_listener_has() {
    let dir = TempDir::new();
    let key = keygen_in(&dir);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--cluster-key",
                &key,
                "--provide",
                "r:1@7000",
                "--admin",
                "7000",
            ],
            "--admin 127.0.0.1:7000: the port of the TLS terminator of --provide r:1@7000",
        ),
        (
            &["--consume", "redis:6379", "--admin", "6379"],
            "--admin 127.0.0.1:6379: the port of --consume redis:6379",
        ),
        (
            &["--consume", "redis:6379", "--admin", "0.0.0.0:6379"],
            "the port of --consume redis:6379",
        ),
    ];
    for (args, want) in cases {
        let out = run(&[&["--check"], *args].concat(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    // Another address, another listener.
    let args = [
        "--check",
        "--consume",
        "redis:6379",
        "--admin",
        "127.0.0.2:6379",
    ];
    assert_eq!(run(&args, &[]).status.code(), Some(0));
}

#[test]
fn keygen_writes_a_private_key_once() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new();
    let key = dir.path("cluster.key").to_str().unwrap().to_owned();
    let out = run(&["keygen", &key], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    let first = std::fs::read(&key).unwrap();
    let again = run(&["keygen", &key], &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never replaces"));
    assert_eq!(std::fs::read(&key).unwrap(), first, "the key was replaced");
    // Every key is new.
    let other = dir.path("other.key").to_str().unwrap().to_owned();
    assert_eq!(run(&["keygen", &other], &[]).status.code(), Some(0));
    assert_ne!(std::fs::read(&other).unwrap(), first);
}

/// A pipe whose reader is gone before the writer starts: the first write
/// fails with EPIPE (`mesh-amb ... | true`), however quick the writer.
fn closed_pipe() -> Stdio {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills `fds` with two new descriptors, owned below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are open and owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// A stdout on which every write fails with ENOSPC (`> /dev/full`).
fn dev_full() -> Stdio {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
    Stdio::from(full.expect("open /dev/full"))
}

#[test]
fn a_stdout_that_cannot_be_written_is_an_error_not_a_panic() {
    // What the user asked to see was not shown: they must learn it from
    // the exit code and one line, not from a backtrace (exit 101).
    let dir = TempDir::new();
    let sinks = [
        ("closed pipe", closed_pipe as fn() -> Stdio),
        ("/dev/full", dev_full),
    ];
    for (i, (sink, stdout)) in sinks.into_iter().enumerate() {
        let key = dir.path(&format!("{i}.key")).to_str().unwrap().to_owned();
        let commands: [&[&str]; 4] = [
            &["--check", "--consume", "redis:6379"],
            &["keygen", &key],
            &["completions", "bash"],
            &["man"],
        ];
        for args in commands {
            let out = Command::new(BIN)
                .args(args)
                .env_remove("RUST_LOG")
                .stdout(stdout())
                .output()
                .expect("run mesh-amb");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?} > {sink}: {stderr}");
            assert!(
                stderr.starts_with("error: cannot write to stdout"),
                "{args:?} > {sink}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{args:?} > {sink}: {stderr}");
        }
        // The key itself was written before its message failed.
        assert!(std::fs::metadata(&key).is_ok(), "{sink}: no {key}");
    }
}

#[test]
fn unsafe_or_incomplete_security_settings_exit_2() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let key = keygen_in(&dir);
    let loose = dir.path("loose.key").to_str().unwrap().to_owned();
    std::fs::copy(&key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let garbage = dir.path("garbage.key").to_str().unwrap().to_owned();
    std::fs::write(&garbage, "not a key\n").unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key_text = std::fs::read_to_string(&key).unwrap();
    let missing = dir.path("missing.key").to_str().unwrap().to_owned();
    let cases: &[Case] = &[
        (
            &["--cluster-key", &loose, "--consume", "a:1=h:1"],
            &[],
            "chmod 600",
        ),
        (
            &["--consume", "a:1=h:1"],
            &[("MESH_AMB_CLUSTER_KEY", &loose)],
            "readable by group or others",
        ),
        (
            &["--cluster-key", &garbage, "--consume", "a:1=h:1"],
            &[],
            "does not hold a cluster key",
        ),
        (
            &["--cluster-key", &missing, "--consume", "a:1=h:1"],
            &[],
            "cannot read",
        ),
        (
            &["--consume", "a:1=tls://h:1"],
            &[],
            "needs TLS: give --cluster-key",
        ),
        (
            &["--provide", "a:1@2"],
            &[],
            "names a TLS port: give --cluster-key",
        ),
        (
            &["--tls-cert", &key, "--consume", "a:1=h:1"],
            &[],
            "go together",
        ),
        (
            &[
                "--tls-cert",
                &garbage,
                "--tls-key",
                &key,
                "--tls-ca",
                &garbage,
                "--consume",
                "a:1=h:1",
            ],
            &[],
            "--tls-ca",
        ),
    ];
    for (args, env, want) in cases {
        let out = run(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr:?} lacks {want:?}");
        assert!(
            !stderr.contains(key_text.trim()),
            "{args:?}: the key is in the message"
        );
    }
}

#[test]
fn help_and_version_exit_0() {
    for flag in ["--help", "--version"] {
        let out = run(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(!out.stdout.is_empty(), "{flag}");
    }
}

/// clap prints the defaults, which come from the library's constants (the
/// binary's unit tests compare them one by one).
#[test]
fn help_shows_the_defaults() {
    let out = run(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, default) in [
        ("--max-connections", "[default: 10000]"),
        ("--connect-timeout", "[default: 2s]"),
        ("--idle-timeout", "[default: off]"),
        ("--bind", "[default: 127.0.0.1]"),
        ("--balance", "[default: p2c]"),
    ] {
        let entry = help
            .split("\n      --")
            .find(|e| e.starts_with(&flag[2..]))
            .unwrap_or_else(|| panic!("{flag} not in {help}"));
        assert!(entry.contains(default), "{flag}: {entry}");
    }
}

/// The README's flag table is the reference users read: it lists exactly
/// the flags of `--help`, each with the default `--help` prints.
#[test]
fn the_readme_lists_every_flag_with_its_default() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let help = String::from_utf8(run(&["--help"], &[]).stdout).unwrap();
    // "      --flag <VALUE>\n          what it does [default: X]"
    let from_help: BTreeMap<&str, Option<&str>> = help
        .split("\n      --")
        .skip(1)
        .map(|entry| {
            let name = entry.split([' ', '\n']).next().unwrap();
            let default = entry
                .split("[default: ")
                .nth(1)
                .and_then(|d| d.split(']').next());
            (name, default)
        })
        .collect();
    // "| `--flag VALUE` | default | meaning |"
    let from_readme: BTreeMap<&str, &str> = readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = cells[1]
                .trim_start_matches("`--")
                .split([' ', '`'])
                .next()
                .unwrap();
            (name, cells[2].trim_matches('`'))
        })
        .collect();
    assert_eq!(
        from_help.keys().collect::<Vec<_>>(),
        from_readme.keys().collect::<Vec<_>>(),
        "flags of --help vs the README's table"
    );
    for (flag, default) in from_help {
        if let Some(default) = default {
            assert_eq!(from_readme[flag], default, "default of --{flag}");
        }
    }
}

#[test]
fn the_demo_runs_and_says_what_happened() {
    let out = run(&["demo"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "1500 client connections, 0 failed.",
        "0 reached the stranger",
        "30 of its 30 clients turned away",
        "mutual TLS under the cluster key",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    // A story a newcomer can follow: the nodes' own lines are in their file.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = take_demo_log(&stdout);
    assert!(log.contains("mDNS discovery started"), "{log}");
}

/// The nodes' log file that a demo's output names, read and removed.
fn take_demo_log(stdout: &str) -> String {
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("The nodes' own log lines: "))
        .unwrap_or_else(|| panic!("no log file named in:\n{stdout}"));
    let log = std::fs::read_to_string(path).expect("read the demo's log");
    std::fs::remove_file(path).unwrap();
    log
}

/// Bound on the whole demo: its five phases have 20 s each at most.
const DEMO_DEADLINE: Duration = Duration::from_secs(120);

/// A child process SIGKILLed by PID if the test ends before it does.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_demo_keeps_running_until_sigint() {
    let mut demo = Reaped(
        Command::new(BIN)
            .args(["demo", "--keep"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mesh-amb demo --keep"),
    );
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = demo.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + DEMO_DEADLINE;
    let mut out = String::new();
    // Up to the last line of the instructions printed under the banner.
    while !out.contains("what the nodes log") {
        let left = end.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("{e} before the instructions:\n{out}"));
        out.push_str(&line);
        out.push('\n');
    }
    assert!(out.contains("running until Ctrl-C"), "{out}");
    // The nodes are still up, and reachable the way the demo says.
    let reach = out
        .lines()
        .find(|l| l.contains("redis-cli -p"))
        .unwrap_or_else(|| panic!("no redis-cli line in:\n{out}"));
    let reply = Command::new("sh").args(["-c", reach]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout).trim(),
        "PONG",
        "{reach}: {}",
        String::from_utf8_lossy(&reply.stderr)
    );

    // SAFETY: plain syscall to a child we started and have not reaped.
    assert_eq!(
        unsafe { libc::kill(demo.0.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < end,
            "the demo did not exit after SIGINT:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The rest of the output, up to its end (the reader's channel closes).
    while let Ok(line) = lines.recv_timeout(end.saturating_duration_since(Instant::now())) {
        out.push_str(&line);
        out.push('\n');
    }
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("1500 client connections, 0 failed."), "{out}");
    take_demo_log(&out);
}

#[test]
fn the_demo_ends_with_an_error_when_its_reader_leaves() {
    // `mesh-amb demo | head`: the reader leaves while the nodes run.
    let mut demo = Command::new(BIN)
        .arg("demo")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mesh-amb demo");
    let stdout = demo.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    // Reads up to the consumer's line, when every node is up, and closes
    // the pipe by returning.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let consumer = line.starts_with("  consumer ");
            if tx.send(line).is_err() || consumer {
                break;
            }
        }
    });
    let end = Instant::now() + DEMO_DEADLINE;
    let mut seen = String::new();
    while !seen.contains("  consumer ") {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push_str(&(line + "\n")),
            Err(e) => {
                // SAFETY: a plain kill(2) on our own child's pid, not reaped.
                unsafe { libc::kill(demo.id() as libc::pid_t, libc::SIGKILL) };
                let out = demo.wait_with_output().expect("wait for mesh-amb demo");
                panic!("{e} before the consumer's line:\n{seen}\n{out:?}");
            }
        }
    }
    let out = output_within(demo, DEMO_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{seen}\n{stderr}");
    assert!(stderr.contains("error: cannot write to stdout"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The log file is named where the user still reads.
    take_demo_log(&stderr);
}

/// `child`'s output once it exits, which must be within `limit`: if not,
/// it is SIGKILLed by PID (its waiter has not reaped it) and the test
/// fails.
fn output_within(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match done.recv_timeout(limit) {
        Ok(out) => out.expect("wait for mesh-amb"),
        Err(_) => {
            // SAFETY: a plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let out = done.recv().unwrap().expect("wait for mesh-amb");
            panic!("still running after {limit:?}, killed: {out:?}");
        }
    }
}

/// The binary serving until the test ends; SIGKILLed by PID if still alive.
struct Running {
    child: Child,
    port: u16,
}

impl Running {
    /// Starts `mesh-amb ARGS`, with `{port}` in ARGS replaced by a free port
    /// (retried if another process grabs it first), and waits until it
    /// accepts connections. `RUST_LOG` is `info`, and
    /// `MESH_AMB_WAIT_FOR_BACKEND` is 0, unless `env` sets them.
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
        Running::start_at("127.0.0.1", args, env, None).await
    }

    /// As `start`, waiting for a listener on `ip`. With `file`, a config
    /// file with that text (`{port}` replaced too) is written and `{file}`
    /// in ARGS names it.
    async fn start_at(
        ip: &str,
        args: &[&str],
        env: &[(&str, &str)],
        file: Option<&str>,
    ) -> Running {
        let path =
            std::env::temp_dir().join(format!("mesh-amb-cli-run-{}.toml", std::process::id()));
        for _ in 0..5 {
            let port = free_port();
            let fill = |s: &str| {
                s.replace("{port}", &port.to_string())
                    .replace("{file}", path.to_str().unwrap())
            };
            if let Some(text) = file {
                std::fs::write(&path, fill(text)).unwrap();
            }
            let args: Vec<String> = args.iter().map(|a| fill(a)).collect();
            let env: Vec<(String, String)> = env.iter().map(|(k, v)| (fill(k), fill(v))).collect();
            let mut child = Command::new(BIN)
                .args(&args)
                .env("RUST_LOG", "info")
                // Its probe connection would otherwise be held for a dead
                // static backend, and hold the shutdown 3 s with it.
                .env("MESH_AMB_WAIT_FOR_BACKEND", "0")
                .envs(env)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn mesh-amb");
            let end = Instant::now() + DEADLINE;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // most likely lost the port: try another
                }
                if tokio::net::TcpStream::connect((ip, port)).await.is_ok() {
                    if file.is_some() {
                        let _ = std::fs::remove_file(&path);
                    }
                    return Running { child, port };
                }
                assert!(Instant::now() < end, "mesh-amb did not start listening");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("mesh-amb did not start");
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall to a child we started and have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    /// Waits for exit; returns status code and stderr.
    fn wait(mut self) -> (Option<i32>, String) {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.code(), err);
            }
            assert!(Instant::now() < end, "mesh-amb did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn in_front_of_redis_then_sigterm_exits_0() {
    let redis = Redis::start().await;
    let backend = format!("redis:{{port}}={}", redis.addr);
    let amb = Running::start(&["--consume", &backend], &[]).await;
    ping(([127, 0, 0, 1], amb.port).into())
        .await
        .expect("PING via the binary");

    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &amb.port.to_string(), "ping"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");

    // Not a speed test: 50 parallel clients through the binary, no errors.
    // redis-benchmark redraws its progress line with \r.
    let bench = tokio::process::Command::new("timeout")
        .args(["60", "redis-benchmark", "-p", &amb.port.to_string()])
        .args(["-t", "get,set", "-c", "50", "-n", "20000", "-q"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success(), "redis-benchmark failed: {text}");
    for t in ["SET", "GET"] {
        assert!(
            text.split(['\r', '\n'])
                .any(|l| l.starts_with(t) && l.contains("requests per second")),
            "no {t} result in {text:?}"
        );
    }

    amb.signal(libc::SIGTERM);
    let (code, stderr) = amb.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("listening") && stderr.contains("shut down"),
        "{stderr}"
    );
}

/// `RUST_LOG` set and empty is the default, `info`, not silence.
#[tokio::test]
async fn an_empty_rust_log_logs_at_info() {
    for empty in ["", " "] {
        let stderr = logged_with(empty).await;
        assert!(
            stderr.contains("INFO") && stderr.contains("listening"),
            "RUST_LOG={empty:?}: {stderr:?}"
        );
    }
}

/// What a node with a dead static backend logs with `RUST_LOG` set to
/// `filter`, from its start to a clean exit on SIGTERM.
async fn logged_with(filter: &str) -> String {
    let amb = Running::start(
        &["--consume", "redis:{port}=127.0.0.1:1"],
        &[("RUST_LOG", filter)],
    )
    .await;
    amb.signal(libc::SIGTERM);
    let (code, stderr) = amb.wait();
    assert_eq!(code, Some(0), "{stderr}");
    stderr
}

/// A `RUST_LOG` directive that does not parse is named in a warning and
/// left out; the others still apply (a strict parse dropped them all and
/// fell back to `info` without a word).
#[tokio::test]
async fn a_bad_rust_log_directive_is_named_and_the_rest_kept() {
    let stderr = logged_with("warn, mesh_amb=loud ,mesh_amb=debug").await;
    assert!(
        stderr.contains("WARN") && stderr.contains("RUST_LOG: ignoring \"mesh_amb=loud\""),
        "{stderr:?}"
    );
    // mesh_amb=debug still applies: its lines are there.
    assert!(stderr.contains("DEBUG"), "{stderr:?}");
}

/// A flag's variable takes what a container's environment writes for on
/// and off (`1`, `yes`, `0`, `off`), not only `true` and `false`.
#[test]
fn a_flag_variable_takes_1_yes_0_and_off() {
    let link = ("REDIS_PORT_6379_TCP", "tcp://10.0.0.5:6379");
    for (value, on) in [("1", true), ("yes", true), ("0", false), ("off", false)] {
        let args = ["--check", "--consume", "api:8080=10.0.0.9:80"];
        let out = run(&args, &[("MESH_AMB_FROM_ENV", value), link]);
        assert_eq!(out.status.code(), Some(0), "{value}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.contains("consume redis:"), on, "{value}: {stdout}");
    }
    let out = run(
        &["--check", "--consume", "a:1=h:1"],
        &[("MESH_AMB_FROM_ENV", "maybe")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[tokio::test]
async fn docker_link_variables_and_json_logs() {
    let redis = Redis::start().await;
    let link = format!("tcp://{}", redis.addr);
    let amb = Running::start(
        &["--from-env", "--log-format", "json"],
        &[("CACHE_PORT_{port}_TCP", &link)],
    )
    .await;
    ping(([127, 0, 0, 1], amb.port).into())
        .await
        .expect("PING via --from-env");
    amb.signal(libc::SIGINT);
    let (code, stderr) = amb.wait();
    assert_eq!(code, Some(0), "{stderr}");
    // Every line is JSON; the listener's names the service. (Not necessarily
    // the first: a host with a small fd limit gets a warning before it.)
    for line in stderr.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not JSON: {line}"
        );
    }
    let listening = stderr
        .lines()
        .find(|l| l.contains("listening"))
        .expect("a listening line");
    assert!(listening.contains("\"service\":\"cache\""), "{listening}");
}

#[tokio::test]
async fn the_port_being_taken_is_a_clear_runtime_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = run(&["--consume", &format!("redis:{port}=127.0.0.1:1")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port} for 'redis'")),
        "{stderr}"
    );
}

/// Flag > environment > file > default, for a scalar (`--bind`, whose
/// variable clap reads) and a list (`--consume`, whose variable holds
/// whitespace-separated specs and replaces the file's list), as seen from
/// where the binary listens and which service it says it serves.
#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_file() {
    let file = "bind = \"127.0.0.2\"\nconsume = [\"file:{port}=127.0.0.1:1\"]\n";
    let no_bind = "consume = [\"file:{port}=127.0.0.1:1\"]\n";
    let env: &[(&str, &str)] = &[
        ("MESH_AMB_BIND", "127.0.0.3"),
        ("MESH_AMB_CONSUME", "env:{port}=127.0.0.1:1"),
    ];
    let flags: &[&str] = &[
        "--config",
        "{file}",
        "--bind",
        "127.0.0.4",
        "--consume",
        "flag:{port}=127.0.0.1:1",
    ];
    type Case<'a> = (
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        &'a str,
        &'a str,
        &'a str,
    );
    let cases: &[Case] = &[
        (&["--config", "{file}"], &[], no_bind, "127.0.0.1", "file"),
        (&["--config", "{file}"], &[], file, "127.0.0.2", "file"),
        (&["--config", "{file}"], env, file, "127.0.0.3", "env"),
        (flags, env, file, "127.0.0.4", "flag"),
    ];
    for (args, env, file, ip, service) in cases {
        let amb = Running::start_at(ip, args, env, Some(file)).await;
        amb.signal(libc::SIGTERM);
        let (code, stderr) = amb.wait();
        assert_eq!(code, Some(0), "{stderr}");
        let listening: Vec<&str> = stderr.lines().filter(|l| l.contains("listening")).collect();
        assert_eq!(listening.len(), 1, "{args:?} {env:?}: {stderr}");
        assert!(
            listening[0].contains(&format!("service={service}")),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

/// The connection limit a node with a static consume settles on under
/// `ulimit -n 256`, read from its warning, with `extra` arguments.
fn limit_under_256_descriptors(extra: &[&str]) -> usize {
    let consume = format!("redis:{}=127.0.0.1:1", free_port());
    let mut child = Command::new("prlimit")
        .args(["--nofile=256:256", BIN, "--consume", &consume])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prlimit (util-linux) and mesh-amb");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let limit = loop {
        let Ok(line) = rx.recv_timeout(DEADLINE) else {
            break None;
        };
        if let Some((_, v)) = line.split_once("max_connections=") {
            break v.split_whitespace().next().and_then(|n| n.parse().ok());
        }
        seen.push_str(&line);
        seen.push('\n');
    };
    let _ = child.kill();
    let _ = child.wait();
    limit.unwrap_or_else(|| panic!("no lowered connection limit in the log:\n{seen}"))
}

#[test]
fn with_a_cluster_key_the_connection_limit_leaves_descriptors_for_the_terminators() {
    let dir = TempDir::new();
    let key = keygen_in(&dir);
    let plain = limit_under_256_descriptors(&[]);
    let keyed = limit_under_256_descriptors(&["--cluster-key", &key]);
    // Each connection holds two descriptors, and the terminators' limit is
    // as large as the consumes': the two fill the same budget.
    assert!(
        plain * 2 <= 256,
        "{plain} connections cannot fit 256 descriptors"
    );
    assert!(
        keyed * 2 <= plain + 1,
        "two limits of {keyed} do not fit where one of {plain} does"
    );
}

/// The listen backlog the kernel shows for a listening port (`ss`'s Send-Q).
fn listen_backlog(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next()?.split_whitespace().nth(2)?.parse().ok()
}

#[tokio::test]
async fn the_listen_backlog_is_as_deep_as_the_kernel_allows_whatever_the_limit() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("somaxconn")
        .trim()
        .parse()
        .unwrap();
    // Above tokio's fixed 128 (what a plain tokio bind would show) and far
    // above the connection limit (what it followed before).
    assert!(
        somaxconn > 128,
        "somaxconn {somaxconn} leaves nothing to test"
    );
    let amb = Running::start(
        &[
            "--consume",
            "redis:{port}=127.0.0.1:1",
            "--max-connections",
            "2",
        ],
        &[],
    )
    .await;
    assert_eq!(listen_backlog(amb.port), Some(somaxconn));
}

#[test]
fn a_node_whose_stderr_is_gone_still_stops_on_sigint() {
    // `mesh-amb ... 2>&1 | head -1`: the reader leaves after one line and
    // every later log line fails to write.
    let port = free_port().to_string();
    let consume = format!("redis:{port}=127.0.0.1:1");
    let mut node = Reaped(
        Command::new(BIN)
            .args(["--consume", &consume])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mesh-amb"),
    );
    let mut stderr = node.0.stderr.take().unwrap();
    let mut first = [0u8; 1];
    use std::io::Read as _;
    stderr.read_exact(&mut first).expect("a first log byte");
    drop(stderr);
    // Listening (or gone): the log lines after the pipe closed were written.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let end = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "the node never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a plain kill(2) on our own child's pid.
    unsafe { libc::kill(node.0.id() as libc::pid_t, libc::SIGINT) };
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0), "a clean shutdown");
            break;
        }
        assert!(Instant::now() < end, "still running after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fake admin endpoint on an ephemeral port of 127.0.0.1: `answer`
/// serves each connection, in a thread of its own.
fn fake_admin(answer: fn(std::net::TcpStream)) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || answer(conn));
        }
    });
    port
}

/// `mesh-amb status` against `port`: it must give up, in time, saying why.
fn status_times_out(port: u16) {
    let status = Command::new(BIN)
        .args(["status", "--admin", &format!("127.0.0.1:{port}")])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mesh-amb status");
    // The 5 s of the request, and room for a loaded machine.
    let out = output_within(status, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not answer within 5s"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn status_gives_up_on_a_node_that_trickles_its_answer() {
    // A header line every 300 ms: each read is well within the timeout,
    // and only a deadline for the whole request ends it.
    status_times_out(fake_admin(|mut conn| {
        use std::io::Write as _;
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n");
        for n in 0.. {
            std::thread::sleep(Duration::from_millis(300));
            if write!(conn, "X-Slow: {n}\r\n").is_err() {
                return;
            }
        }
    }));
}

#[test]
fn status_gives_up_on_a_node_that_never_answers() {
    // Reads the request and then the silence, until the client leaves: a
    // read timeout, which the OS calls "Resource temporarily unavailable".
    status_times_out(fake_admin(|mut conn| {
        let _ = std::io::copy(&mut conn, &mut std::io::sink());
    }));
}

/// Reads a request's head, then sends `reply` and closes: a close with the
/// request unread would reset the connection under the reply.
fn answer(mut conn: std::net::TcpStream, reply: &[u8]) {
    use std::io::{Read as _, Write as _};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    let _ = conn.write_all(reply);
}

/// What `status` says of an answer it cannot use, and of port 0.
#[test]
fn status_says_what_a_wrong_answer_was() {
    let status = |port: u16| {
        let out = run(&["status", "--admin", &format!("127.0.0.1:{port}")], &[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let not_found = fake_admin(|conn| {
        answer(conn, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    });
    let (code, stderr) = status(not_found);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.trim_end().ends_with("HTTP/1.1 404 Not Found"),
        "{stderr:?}"
    );
    let unversioned = fake_admin(|conn| {
        answer(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    });
    let (code, stderr) = status(unversioned);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the node serves no status version"),
        "{stderr:?}"
    );
    let (code, stderr) = status(0);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not 0"), "{stderr:?}");
}
