//! The files a user names: the config file, certificates, secret files.
//! Each must be a regular file of a bounded size. A FIFO named by mistake
//! would otherwise block the start, or a reload with the node's admin
//! endpoint behind it, on its open until something writes to it; a device
//! or a log would fill memory.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a named file cannot be read. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is larger than {max} bytes: not a file of ours")]
    TooLarge { path: PathBuf, max: u64 },
}

/// `path` opened for reading, a regular file of at most `max` bytes,
/// checked on the open file (a swap between a check of the path and the
/// open cannot slip another file in), with its metadata.
pub fn open(path: &Path, max: u64) -> Result<(File, Metadata), FileError> {
    let read_err = |source| FileError::Read {
        path: path.to_owned(),
        source,
    };
    // Non-blocking, so that opening a FIFO returns at once, to be refused
    // below; it changes nothing for a regular file's reads.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
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
/// to `buf`, refusing more than `max` bytes: a file may grow after its
/// size was checked.
pub fn read_into(file: File, path: &Path, max: u64, buf: &mut Vec<u8>) -> Result<(), FileError> {
    file.take(max + 1)
        .read_to_end(buf)
        .map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
    if buf.len() as u64 > max {
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

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let dir = TempDir::new();
        let fifo = dir.path("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Without the non-blocking open this never returns: the test
        // would hang until its harness's timeout.
        assert!(matches!(read(&fifo, 10), Err(FileError::NotAFile { .. })));
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
