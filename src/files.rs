//! The files a user names: the config file, certificates, secret files.
//! Each must be a regular file or a pipe, read to a bounded size. A FIFO
//! with no writer would otherwise block the start, or a reload with the
//! node's admin endpoint behind it, on its open; a device or a log named
//! by mistake would fill memory. A pipe is read, to its writers' end: that
//! is how `--config <(envsubst < mesh.toml.in)` and `/dev/stdin` come. Its
//! writers have [`PIPE_DEADLINE`] to finish: one that holds it open and
//! never closes it would hold the start, or a reload and with it the
//! node's exit, for ever.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

/// How long the writers of a pipe have to send all of it: a command that
/// renders a config file or fetches a secret takes moments.
pub const PIPE_DEADLINE: Duration = Duration::from_secs(10);

/// Why a named file cannot be read. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {source}", named(path))]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a regular file (nor a pipe)")]
    NotAFile { path: PathBuf },
    #[error("{path} is larger than {max} bytes: not a file of ours")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{path} is a pipe whose writers did not finish within {}s", PIPE_DEADLINE.as_secs())]
    NoEnd { path: PathBuf },
}

/// `path` as the user named it, with the directory a relative one was
/// looked for in: a config file's relative paths are taken from the
/// working directory (a service manager's, under systemd), not the file's.
fn named(path: &Path) -> String {
    match std::env::current_dir() {
        Ok(dir) if path.is_relative() => format!("{} (in {})", path.display(), dir.display()),
        _ => path.display().to_string(),
    }
}

/// `path` opened for reading, a regular file of at most `max` bytes or a
/// pipe, checked on the open file (a swap between a check of the path and
/// the open cannot slip another file in), with its metadata. The file is
/// non-blocking: read it with [`read_into`].
pub fn open(path: &Path, max: u64) -> Result<(File, Metadata), FileError> {
    let read_err = |source| FileError::Read {
        path: path.to_owned(),
        source,
    };
    // Non-blocking, so that opening a FIFO with no writer returns at once;
    // it changes nothing for a regular file's reads.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.file_type().is_fifo() {
        // Read to the end its writers make. One with no writer reads as
        // empty at once, where a blocking open would have waited.
        return Ok((file, meta));
    }
    if !meta.is_file() {
        return Err(FileError::NotAFile {
            path: path.to_owned(),
        });
    }
    if meta.len() > max {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok((file, meta))
}

/// Appends what is left of `file` (opened by [`open`] with the same `max`)
/// to `buf`, refusing more than `max` bytes (a file may grow after its
/// size was checked), and a pipe whose writers are not done within
/// [`PIPE_DEADLINE`].
pub fn read_into(file: File, path: &Path, max: u64, buf: &mut Vec<u8>) -> Result<(), FileError> {
    read_within(file, path, max, buf, PIPE_DEADLINE)
}

fn read_within(
    file: File,
    path: &Path,
    max: u64,
    buf: &mut Vec<u8>,
    within: Duration,
) -> Result<(), FileError> {
    let read_err = |source| FileError::Read {
        path: path.to_owned(),
        source,
    };
    let (start, deadline) = (buf.len(), Instant::now() + within);
    loop {
        // What a read that fails appends stays in `buf`: a pipe's read
        // goes on from there once its writers have sent more.
        let room = (max + 1).saturating_sub((buf.len() - start) as u64);
        match (&file).take(room).read_to_end(buf) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut fds = [PollFd::new(&file, PollFlags::IN)];
                let timeout = Timespec::try_from(left).unwrap_or_default();
                match rustix::event::poll(&mut fds, Some(&timeout)) {
                    Ok(0) => {
                        return Err(FileError::NoEnd {
                            path: path.to_owned(),
                        })
                    }
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(read_err(e.into())),
                }
            }
            Err(e) => return Err(read_err(e)),
        }
    }
    if (buf.len() - start) as u64 > max {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(())
}

/// The bytes of the regular file `path`, at most `max` of them.
pub fn read(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let (file, meta) = open(path, max)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    read_into(file, path, max, &mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::test_files::TempDir;
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;

    #[test]
    fn a_pipe_is_read_to_its_end_and_a_fifo_with_no_writer_is_empty_at_once() {
        // What `<(command)` gives: a pipe whose writer holds it open.
        let (reader, mut writer) = std::io::pipe().unwrap();
        let path = PathBuf::from(format!("/dev/fd/{}", reader.as_raw_fd()));
        let writing = std::thread::spawn(move || {
            writer.write_all(b"a = 1\n").unwrap();
            writer.write_all(b"b = 2\n").unwrap();
        });
        assert_eq!(read(&path, 100).unwrap(), b"a = 1\nb = 2\n");
        writing.join().unwrap();
        let (reader, mut writer) = std::io::pipe().unwrap();
        let path = PathBuf::from(format!("/dev/fd/{}", reader.as_raw_fd()));
        writer.write_all(&[b'x'; 11]).unwrap();
        drop(writer);
        assert!(matches!(read(&path, 10), Err(FileError::TooLarge { .. })));

        let dir = TempDir::new();
        let fifo = dir.path("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // A blocking open would wait here for a writer, and the test with
        // it until its harness's timeout.
        assert_eq!(read(&fifo, 10).unwrap(), b"");
    }

    #[test]
    fn a_pipe_whose_writer_never_finishes_is_an_error_at_its_deadline() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let path = PathBuf::from(format!("/dev/fd/{}", reader.as_raw_fd()));
        writer.write_all(b"consume = [").unwrap();
        let (file, _) = open(&path, 100).unwrap();
        let mut buf = Vec::new();
        let within = Duration::from_millis(300);
        let t0 = Instant::now();
        let e = read_within(file, &path, 100, &mut buf, within).unwrap_err();
        assert!(matches!(e, FileError::NoEnd { .. }), "{e}");
        assert!(t0.elapsed() >= within, "{:?}", t0.elapsed());
        assert!(e.to_string().contains("did not finish within"), "{e}");
        drop(writer);
    }

    #[test]
    fn a_relative_path_that_cannot_be_read_says_where_it_was_looked_for() {
        let e = read(Path::new("no-such-file.toml"), 10)
            .unwrap_err()
            .to_string();
        let cwd = std::env::current_dir().unwrap();
        let want = format!("cannot read no-such-file.toml (in {}): ", cwd.display());
        assert!(e.starts_with(&want), "{e}");
        let e = read(Path::new("/no/such/file"), 10)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read /no/such/file: "), "{e}");
    }

    #[test]
    fn devices_and_large_files_are_refused_without_reading_them() {
        assert!(matches!(
            read(Path::new("/dev/zero"), 10),
            Err(FileError::NotAFile { .. })
        ));
        let dir = TempDir::new();
        let path = dir.path("big");
        std::fs::write(&path, [b'x'; 11]).unwrap();
        let e = read(&path, 10).unwrap_err();
        assert!(matches!(e, FileError::TooLarge { max: 10, .. }), "{e}");
        assert_eq!(read(&path, 11).unwrap(), [b'x'; 11]);
    }
}
