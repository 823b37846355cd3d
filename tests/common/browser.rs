//! Debian's headless Chromium (scripts/test installs it), for the tests
//! that load the stats page the way an operator's browser does.

use std::process::{Command, Stdio};

/// Where Debian installs it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Bound on one run: a page load takes seconds; this only catches a hang.
const TIMEOUT_SECS: &str = "120";

/// Runs headless Chromium on `url` with `args`; its stdout and stderr.
pub fn chromium(url: &str, args: &[&str]) -> (String, String) {
    chromium_in(&[], url, args)
}

/// Like [`chromium`], started through `wrap` (`ip netns exec NS`: the
/// browser then lives in that network namespace, as a browser on the
/// node's own machine would).
pub fn chromium_in(wrap: &[&str], url: &str, args: &[&str]) -> (String, String) {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (scripts/test does)"
    );
    let profile = super::TempDir::new();
    let out = Command::new("timeout")
        .arg(TIMEOUT_SECS)
        .args(wrap)
        .arg(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lines of Chromium's log that the page caused: console messages,
/// uncaught script errors, Content Security Policy refusals.
pub fn console_messages(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Content Security Policy")
        })
        .collect()
}
