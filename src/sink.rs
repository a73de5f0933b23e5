//! Where the logger and the metrics write their lines: a regular file (created if missing,
//! appended to) or a FIFO. Writing never blocks: a FIFO is opened read-write and non-blocking
//! (so the open needs no reader and a reader that leaves is no error), and a line that does not
//! fit in the pipe is dropped whole and counted, never written in part.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Pipe capacity asked for on a FIFO, so that a slow reader loses no line at the 60 s metrics
/// pace (the kernel's default is 64 KiB; 1 MiB is what unprivileged processes may ask).
const FIFO_CAPACITY: libc::c_int = 1 << 20;

/// Why a log or metrics destination could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {path}")]
pub struct SinkError {
    /// The path given.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// An open destination for lines.
#[derive(Debug)]
pub struct LineSink {
    file: File,
    path: PathBuf,
    fifo: bool,
    /// Lines dropped because the FIFO was full (or the write failed).
    missed: u64,
}

impl LineSink {
    /// Opens `path`: a FIFO read-write and non-blocking, anything else created if missing and
    /// appended to.
    pub fn open(path: &Path) -> Result<LineSink, SinkError> {
        let err = |source| SinkError {
            path: path.to_owned(),
            source,
        };
        let fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
        let file = if fifo {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(path)
                .map_err(err)?
        } else {
            OpenOptions::new()
                .create(true)
                .append(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(err)?
        };
        if fifo {
            // SAFETY: fcntl on a descriptor this value owns; a refusal leaves the default size.
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, FIFO_CAPACITY) };
        }
        Ok(LineSink {
            file,
            path: path.to_owned(),
            fifo,
            missed: 0,
        })
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines dropped so far.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Room left in the FIFO's pipe, when it can be told.
    fn fifo_room(&self) -> Option<usize> {
        // SAFETY: fcntl on a descriptor this value owns.
        let capacity = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETPIPE_SZ) };
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which points into this frame.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::FIONREAD, &mut queued) };
        (capacity > 0 && rc == 0).then(|| (capacity - queued).max(0) as usize)
    }

    /// Writes `line` (which ends in a newline) whole, or drops it and counts it. `check_room`:
    /// look at the FIFO's free space first (needs `ioctl`, so only on threads whose seccomp
    /// filter allows it); without it, lines up to PIPE_BUF (4 KiB) are still written whole or
    /// not at all, which is what the logger keeps its lines to.
    pub fn write_line(&mut self, line: &[u8], check_room: bool) -> bool {
        if self.fifo && check_room && self.fifo_room().is_some_and(|room| room < line.len()) {
            self.missed += 1;
            return false;
        }
        let written = loop {
            match self.file.write(line) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match written {
            Ok(n) if n == line.len() => true,
            _ => {
                self.missed += 1;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn test_sink_file_created_and_appended() {
        let path = scratch("log.txt");
        let mut sink = LineSink::open(&path).expect("open");
        assert!(sink.write_line(b"one\n", true));
        drop(sink);
        let mut sink = LineSink::open(&path).expect("reopen");
        assert!(sink.write_line(b"two\n", false));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "one\ntwo\n");
    }

    #[test]
    fn test_sink_fifo_without_reader_opens_and_drops_whole_lines_when_full() {
        let path = scratch("fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo reads the NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut sink = LineSink::open(&path).expect("open needs no reader");
        let line = vec![b'x'; 100_000];
        let mut written = 0;
        while sink.write_line(&line, true) {
            written += 1;
            assert!(written < 1000, "a pipe never fills");
        }
        assert_eq!(sink.missed(), 1);
        let mut reader = File::open(&path).expect("reader");
        let mut buf = vec![0u8; line.len() * written];
        reader.read_exact(&mut buf).expect("whole lines");
        assert!(buf.iter().all(|&b| b == b'x'));
    }

    #[test]
    fn test_sink_missing_directory_is_an_error_naming_the_path() {
        let e = LineSink::open(Path::new("/nonexistent-dir/x.log")).expect_err("refused");
        assert!(e.to_string().contains("/nonexistent-dir/x.log"));
    }
}
