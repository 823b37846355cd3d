//! What ships beside the binary, kept from rotting: every example config
//! passes `--check`, the embedding example runs, the systemd unit verifies,
//! and the completions, man page and `--help` say what the parsers accept.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-amb");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
/// The Docker link every example run sees; only `from_env` examples use it.
const LINK: (&str, &str) = ("REDIS_PORT_6379_TCP", "tcp://172.17.0.5:6379");
/// A `--check` answers at once; a run that is still going after this is
/// serving instead.
const CHECK_DEADLINE: Duration = Duration::from_secs(20);
/// Building the example may compile it first (`cargo test --test packaging`
/// builds no examples).
const BUILD_DEADLINE: Duration = Duration::from_secs(600);

/// Runs `cmd` to its end within `deadline`, killing it past that. Its
/// output is read while it runs, so a chatty child cannot fill a pipe
/// and stall.
fn output_within(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(deadline) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // Our own child, by its pid: it has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{cmd:?} still running after {deadline:?}");
        }
    }
}

/// `mesh-amb --config FILE --check` in `dir`, in a network namespace of
/// its own (only `lo`): a `--check` that served by mistake could not
/// advertise anything on the real network.
fn check(file: &Path, dir: &Path) -> Output {
    let mut cmd = Command::new("unshare");
    cmd.arg("--net")
        .arg(BIN)
        .arg("--config")
        .arg(file)
        .arg("--check")
        .current_dir(dir)
        .env_clear()
        .env(LINK.0, LINK.1);
    output_within(cmd, CHECK_DEADLINE)
}

/// A working directory holding the secret files the examples name by
/// their bare names, as the systemd unit's credentials directory does.
fn secrets_dir(key_mode: u32) -> TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new();
    let key = dir.path("cluster.key");
    let out = Command::new(BIN).arg("keygen").arg(&key).output().unwrap();
    assert!(out.status.success(), "keygen: {out:?}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(key_mode)).unwrap();
    dir.secret("redis.pass", "example-password\n");
    dir
}

fn example_configs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(EXAMPLES)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// A spec list of the file (`consume`, `provide`), empty if absent.
fn specs<'a>(table: &'a toml::Table, key: &str) -> Vec<&'a str> {
    let items = table.get(key).and_then(|v| v.as_array());
    items
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect()
}

/// A spec's service name.
fn name_of(spec: &str) -> &str {
    spec.split(':').next().unwrap()
}

#[test]
fn every_example_config_passes_check() {
    let files = example_configs();
    let stems: Vec<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for role in [
        "consumer",
        "provider",
        "both",
        "static-forwarder",
        "docker-links",
        "secure",
    ] {
        assert!(stems.iter().any(|s| s == role), "no {role}.toml: {stems:?}");
    }
    let dir = secrets_dir(0o600);
    for file in &files {
        let out = check(file, &dir.path(""));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let name = file.display();
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(stderr.is_empty(), "{name}: {stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some(format!("configuration ok ({name}); it would run:").as_str()),
            "{stdout}"
        );
        assert_eq!(
            lines.last().copied(),
            Some("nothing listened or was advertised (--check)"),
            "{stdout}"
        );

        let table: toml::Table = toml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
        for spec in specs(&table, "consume") {
            let service = name_of(spec);
            assert!(has(&format!("consume {service}: ")), "{name}: {stdout}");
        }
        for spec in specs(&table, "provide") {
            let service = name_of(spec);
            assert!(has(&format!("provide {service}: ")), "{name}: {stdout}");
        }
        let discovered = specs(&table, "consume").iter().any(|c| !c.contains('='));
        if discovered || table.contains_key("provide") {
            // No example names interfaces: the empty list reads as "all".
            assert!(
                has("discovery: mDNS, interfaces=all addresses=all, node id "),
                "{name}: {stdout}"
            );
        }
        if table.get("from_env").and_then(|v| v.as_bool()) == Some(true) {
            assert!(
                has("consume redis: listen on 0.0.0.0:6379, forward to 172.17.0.5:6379"),
                "{name}: the link's consume: {stdout}"
            );
        }
        if table.contains_key("cluster_key") {
            assert!(has("security: cluster key "), "{name}: {stdout}");
        }
        if table.contains_key("credentials") {
            assert!(
                stdout.contains("logging in with the redis credentials in redis.pass"),
                "{name}: {stdout}"
            );
            assert!(!stdout.contains("example-password"), "{stdout}");
        }
    }
}

/// `--check` reads the files a config names, as a start does, and a bad
/// config is the usual one-line usage error with nothing on stdout.
#[test]
fn check_refuses_a_bad_config_with_exit_2() {
    let loose = secrets_dir(0o644);
    let secure = Path::new(EXAMPLES).join("secure.toml");
    let typo = loose.path("typo.toml");
    std::fs::write(&typo, "consume = [\"redis:6379\"]\nbalanse = \"p2c\"\n").unwrap();
    for (file, want) in [
        (&secure, "cluster.key is readable by group or others"),
        (&typo, "unknown field `balanse`"),
    ] {
        let out = check(file, &loose.path(""));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", file.display());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    }
}

/// `cargo run --example embed`, as a reader would run it (already built
/// by `cargo test`; built here otherwise).
#[test]
fn the_embed_example_round_trips_through_a_node() {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["run", "--quiet", "--example", "embed", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    let out = output_within(cmd, BUILD_DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "got them back: \"hello through the ambassador\"",
        ": 1 connection(s), 29 bytes out, 29 bytes in, 0 failed connect(s)",
        "node stopped",
    ] {
        assert!(stdout.contains(want), "{want:?} not in {stdout}");
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// The long flags `--help` lists.
fn long_flags() -> Vec<String> {
    let help = String::from_utf8(run(&["--help"]).stdout).unwrap();
    let flags: Vec<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split([' ', ',']).find(|w| w.starts_with("--")))
        .map(str::to_owned)
        .collect();
    assert!(flags.len() > 30, "{help}");
    flags
}

#[test]
fn completions_know_the_subcommands_and_flags() {
    let out = run(&["completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
    let script = String::from_utf8(out.stdout).unwrap();
    for word in ["demo", "keygen", "completions", "man"] {
        assert!(script.contains(word), "{word} not in the bash script");
    }
    for flag in long_flags() {
        assert!(script.contains(&flag), "{flag} not in the bash script");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
    }

    let out = run(&["completions", "nosh"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("'nosh'"), "{stderr}");
}

#[test]
fn the_man_page_is_roff_with_every_flag() {
    let out = run(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH mesh-amb 1"), "{page}");
    for flag in long_flags() {
        let roff = flag.replace('-', "\\-");
        assert!(page.contains(&roff), "{flag} not in the man page");
    }
    assert!(page.contains("MESH_AMB_CONNECT_TIMEOUT"), "no variables");
    assert!(page.contains("keygen"), "no subcommands");
}

/// The value names show every form the spec parsers accept.
#[test]
fn help_shows_the_whole_spec_forms() {
    let help = String::from_utf8(run(&["--help"]).stdout).unwrap();
    for want in [
        "--provide <NAME:PORT[*WEIGHT][@TLSPORT]>",
        "--consume <NAME:PORT[=BACKEND,...]>",
        "[tls://]HOST:PORT[*WEIGHT]",
        "--check",
    ] {
        assert!(help.contains(want), "{want} not in --help:\n{help}");
    }
}

/// `systemd-analyze verify` accepts the unit (its ExecStart pointed at the
/// binary under test, which it checks exists), and `systemd-analyze
/// security` rates it "OK" or better (exposure below 2.0 of 10).
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(Path::new(EXAMPLES).join("systemd/mesh-amb.service"))
        .unwrap()
        .replace("/usr/local/bin/mesh-amb", BIN);
    let dir = TempDir::new();
    let path = dir.path("mesh-amb.service");
    std::fs::write(&path, &unit).unwrap();

    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .expect("systemd-analyze (Debian package systemd)")
    };
    let out = analyze(&["verify", "--man=no"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");

    let out = analyze(&["security", "--offline=yes", "--no-pager"]);
    let report = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for mesh-amb.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure < 2.0, "exposure {exposure}:\n{report}");
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(line), "{line:?} not in the unit");
    }
}

/// The vendored mdns-sd (vendor/mdns-sd) is the release it names plus
/// exactly the changes `PATCHED.diff` holds (and PATCHED.md explains):
/// nothing edited there by hand, and nothing of the release left out
/// unsaid. Fetches the release from crates.io with cargo, as the build
/// fetches every other crate.
#[test]
fn the_vendored_mdns_sd_is_its_release_plus_the_patch() {
    let vendored = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/mdns-sd");
    let manifest: toml::Table = std::fs::read_to_string(vendored.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let version = manifest["package"]["version"].as_str().unwrap();

    // A crate of its own that depends on the release, outside our
    // workspace (and so without our [patch]).
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.path("src")).unwrap();
    std::fs::write(dir.path("src/lib.rs"), "").unwrap();
    std::fs::write(
        dir.path("Cargo.toml"),
        format!(
            "[package]\nname = \"release\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             [dependencies]\nmdns-sd = \"={version}\"\n[workspace]\n"
        ),
    )
    .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut metadata = Command::new(cargo);
    metadata
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(dir.path("Cargo.toml"));
    let out = output_within(metadata, BUILD_DEADLINE);
    assert!(
        out.status.success(),
        "cannot fetch mdns-sd {version} from crates.io: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let release = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "mdns-sd")
        .and_then(|p| p["manifest_path"].as_str())
        .map(|m| Path::new(m).parent().unwrap().to_path_buf())
        .expect("mdns-sd in the release crate's metadata");

    let listed = |dir: &Path, prefix: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| format!("{prefix}{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        listed(&vendored, ""),
        [
            "Cargo.toml",
            "LICENSE-APACHE",
            "LICENSE-MIT",
            "PATCHED.diff",
            "PATCHED.md",
            "src"
        ],
        "vendor/mdns-sd holds other files than the release's it copies and the patch's"
    );
    let sources = listed(&release.join("src"), "src/");
    assert_eq!(
        listed(&vendored.join("src"), "src/"),
        sources,
        "the vendored src/ has other files than the release's"
    );
    let mut patch = String::new();
    for name in ["Cargo.toml", "LICENSE-APACHE", "LICENSE-MIT"]
        .into_iter()
        .map(String::from)
        .chain(sources)
    {
        let out = Command::new("diff")
            .arg("-u")
            .args([
                "--label",
                &format!("a/{name}"),
                "--label",
                &format!("b/{name}"),
            ])
            .arg(release.join(&name))
            .arg(vendored.join(&name))
            .output()
            .expect("diff (Debian package diffutils)");
        assert!(
            out.status.code().is_some_and(|c| c < 2),
            "diff failed on {name}"
        );
        patch.push_str(&String::from_utf8(out.stdout).unwrap());
    }
    let kept = std::fs::read_to_string(vendored.join("PATCHED.diff")).unwrap();
    assert!(
        patch == kept,
        "vendor/mdns-sd differs from mdns-sd {version} otherwise than PATCHED.diff says; \
         if the change is meant, say why in PATCHED.md and write this as PATCHED.diff:\n{patch}"
    );
}
