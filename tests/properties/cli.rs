//! The binary's input: flags, `MESH_AMB_*` variables, Docker-link variables
//! and the config file, layered. Whatever a user writes, `mesh-amb` exits 2
//! with one line naming the problem; it never panics.
//!
//! Every run ends with `--interface=nosuchif0`, an error only found after
//! every other value is parsed and layered, so no case can start a node
//! (and multicast from this namespace): each one walks the whole path and
//! stops at the end.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mesh_amb_lab::wait_until;
use proptest::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-amb");

/// The settings' keys (file keys; flags with '-' for '_'), and one that
/// is none.
const KEYS: &[&str] = &[
    "bind",
    "from_env",
    "config",
    "balance",
    "max_connections",
    "connect_timeout",
    "connect_attempts",
    "wait_for_backend",
    "idle_timeout",
    "drain_timeout",
    "eject_time",
    "tcp_keepalive",
    "tcp_keepalive_interval",
    "tcp_keepalive_probes",
    "tcp_user_timeout",
    "half_close_timeout",
    "consume",
    "provide",
    "interface",
    "advertise_addr",
    "node_id",
    "check_interval",
    "rise",
    "fall",
    "drain_period",
    "backend_check",
    "login_timeout",
    "log_format",
    "no_such_key",
];

/// How long one run may take: it parses and exits.
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => crate::regex("[a-z_]{1,12}"),
    ]
}

/// A setting's text: plausible for some setting, or any (without NUL,
/// which no argument or variable can hold).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("redis:7379=127.0.0.1:6379".to_owned()),
        Just("web:80*3".to_owned()),
        Just("::1".to_owned()),
        Just("off".to_owned()),
        Just("round-robin".to_owned()),
        Just("json".to_owned()),
        Just("lo".to_owned()),
        crate::regex("[0-9]{1,12}(ms|s|m|days)?"),
        crate::regex("[a-z0-9:=,.*\\[\\] -]{0,24}"),
        crate::regex("[^\0]{0,24}"),
    ]
}

/// A TOML value: of the right kind for some setting, or of any kind.
fn toml_value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        text().prop_map(|s| toml_string(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        // TOML spells it `nan`.
        any::<f64>().prop_map(|f| format!("{f:?}").replace("NaN", "nan")),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_owned()),
    ];
    scalar.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..3).prop_map(|kv| {
                let kv: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", kv.join(", "))
            }),
        ]
    })
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out + "\""
}

/// A config file: lines of settings, or any text.
fn file() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec((key(), toml_value()), 0..6).prop_map(|kv| {
            kv.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>()
        }),
        1 => any::<String>(),
    ]
}

/// Where the file goes: `--config`, `MESH_AMB_CONFIG`, or nowhere.
#[derive(Debug, Clone, Copy)]
enum FileVia {
    Flag,
    Variable,
    None,
}

#[derive(Debug, Clone)]
struct Input {
    flags: Vec<(String, String)>,
    /// Flags whose values need not be UTF-8.
    raw: Vec<Vec<u8>>,
    vars: Vec<(String, String)>,
    file: String,
    via: FileVia,
}

fn input() -> impl Strategy<Value = Input> {
    let var = prop_oneof![
        key().prop_map(|k| format!("MESH_AMB_{}", k.to_ascii_uppercase())),
        crate::regex("[A-Z]{1,6}_PORT_[0-9]{1,5}_TCP"),
    ];
    let value = prop_oneof![text(), text().prop_map(|t| format!("tcp://{t}"))];
    // `--KEY=` and bytes that are seldom UTF-8 (never NUL, which no
    // argument can hold).
    let raw = prop::collection::vec(
        (key(), prop::collection::vec(1..=255u8, 0..12)).prop_map(|(k, v)| {
            let mut arg = format!("--{}=", k.replace('_', "-")).into_bytes();
            arg.extend(v);
            arg
        }),
        1..3,
    );
    (
        prop::collection::vec((key(), text()), 0..6),
        prop_oneof![3 => Just(Vec::new()), 1 => raw],
        prop::collection::vec((var, value), 0..4),
        file(),
        prop_oneof![
            Just(FileVia::Flag),
            Just(FileVia::Variable),
            Just(FileVia::None)
        ],
    )
        .prop_map(|(flags, raw, vars, file, via)| Input {
            flags,
            raw,
            vars,
            file,
            via,
        })
}

/// A file removed when the case ends, however it ends.
struct TempFile(PathBuf);

impl TempFile {
    fn new(body: &str) -> TempFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "mesh-amb-properties-{}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&path, body).expect("write the config file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn any_input_exits_2_with_one_line(input in input()) {
        let file = TempFile::new(&input.file);
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &input.flags {
            cmd.arg(format!("--{}={v}", k.replace('_', "-")));
        }
        for raw in &input.raw {
            cmd.arg(OsString::from_vec(raw.clone()));
        }
        cmd.envs(input.vars.iter().map(|(k, v)| (k, v)));
        match input.via {
            FileVia::Flag => {
                cmd.arg("--config").arg(&file.0);
            }
            FileVia::Variable => {
                cmd.env("MESH_AMB_CONFIG", &file.0);
            }
            FileVia::None => {}
        }
        cmd.arg("--interface=nosuchif0");
        let mut child = cmd.spawn().expect("run mesh-amb");
        let mut status = None;
        let exited = wait_until(RUN_LIMIT, || {
            status = child.try_wait().expect("wait for mesh-amb");
            status.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        let out = child.wait_with_output().expect("read mesh-amb's output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert!(exited, "still running after {RUN_LIMIT:?}: {input:?}");
        prop_assert!(!stderr.contains("panicked"), "{input:?}: {stderr}");
        prop_assert_eq!(status.and_then(|s| s.code()), Some(2), "{:?}: {}", input, stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        prop_assert!(
            lines.len() == 1 && lines[0].starts_with("error: ") && lines[0].len() > 8,
            "{input:?}: {stderr:?}"
        );
    }
}
