//! Secrets read from files: the cluster key, backend credentials, a TLS
//! private key. Secrets come from files and never from flag values, which
//! any user can read in the process list.
//!
//! A secret file that group or others may read is refused, as ssh refuses
//! a private key with loose permissions: a key that every local user can
//! copy protects nothing, and saying so at start-up beats finding out later.
//! The bytes live in a buffer that is wiped when dropped, and no `Debug` or
//! `Display` of any type here shows them.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::files::{self, FileError};

/// No secret file of ours is anywhere near this; a bigger one is a wrong
/// path (a log, a device), not a key to read into memory.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Bytes that must not be shown: wiped on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret file cannot be used. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{path} is {} by group or others (mode {mode:04o}); \
         it holds a secret: chmod 600 it",
        open_as(*mode)
    )]
    Permissive { path: PathBuf, mode: u32 },
}

/// What group or others may do to a file of `mode`, the worst first.
fn open_as(mode: u32) -> &'static str {
    match mode {
        m if m & 0o044 != 0 => "readable",
        m if m & 0o022 != 0 => "writable",
        _ => "usable",
    }
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_secret_file(path: &Path) -> Result<Secret, SecretFileError> {
    let (file, meta) = files::open(path, MAX_SECRET_FILE)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Permissive {
            path: path.to_owned(),
            mode,
        });
    }
    // A pipe's size is unknown (0): room for the most it may hold, so that
    // no copy of the secret is left behind in a buffer outgrown and freed.
    let room = if meta.is_file() {
        meta.len()
    } else {
        MAX_SECRET_FILE + 1
    };
    let mut bytes = Zeroizing::new(Vec::with_capacity(room as usize));
    files::read_into(file, path, MAX_SECRET_FILE, &mut bytes)?;
    Ok(Secret(bytes))
}

/// Writes a new secret file, readable by its owner only; never replaces an
/// existing file (a cluster key overwritten by mistake locks a node out of
/// its cluster).
pub fn write_new_secret_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Keeps secrets in this process's memory out of core dumps and away from
/// other processes of the same user (`ptrace`, `/proc/PID/mem`): what ssh-agent
/// does. Best effort: a failure is returned for the caller to log.
pub fn protect_process_memory() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(io::Error::from)
}

/// Secret files for unit tests, in a directory of their own that goes away
/// with its guard (also when a test fails).
#[cfg(test)]
pub(crate) mod test_files {
    use std::path::PathBuf;

    /// A new directory under the system's temporary one, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new() -> TempDir {
            // Unique per process and per test: tests run in parallel.
            let dir = std::env::temp_dir().join(format!(
                "mesh-amb-test-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        /// The path of `name` in the directory (not created).
        pub(crate) fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// A new owner-only file `name` holding `body`.
        pub(crate) fn secret_file(&self, name: &str, body: &[u8]) -> PathBuf {
            let path = self.path(name);
            super::write_new_secret_file(&path, body).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_files::TempDir;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_file_is_private_and_never_overwritten() {
        let dir = TempDir::new();
        let path = dir.path("key");
        write_new_secret_file(&path, b"one").unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = write_new_secret_file(&path, b"two").unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(read_secret_file(&path).unwrap().expose(), b"one");
    }

    #[test]
    fn a_file_others_can_read_is_refused_without_showing_it() {
        let dir = TempDir::new();
        let path = dir.secret_file("key", b"hunter2");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_secret_file(&path).unwrap_err();
        assert!(matches!(e, SecretFileError::Permissive { mode: 0o640, .. }));
        let shown = format!("{e} {e:?}");
        assert!(
            shown.contains("0640") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn a_file_others_can_write_is_refused_as_such() {
        let dir = TempDir::new();
        let path = dir.secret_file("key", b"hunter2");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        let e = read_secret_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("is writable by group or others (mode 0620)"),
            "{e}"
        );
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn directories_and_missing_files_are_clear_errors() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            read_secret_file(&dir),
            Err(SecretFileError::File(FileError::NotAFile { .. })
                | SecretFileError::Permissive { .. })
        ));
        let e = read_secret_file(Path::new("/nonexistent/key")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read /nonexistent/key"));
    }
}
