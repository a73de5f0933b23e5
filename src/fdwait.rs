//! Bounded waits on host descriptors with poll(2): writers that must never block (lifecycle
//! events) and readers that must never hang (a config file that is a FIFO) wait here, with a
//! time-out, instead of in a blocking read or write.
//!
//! The unsafe here wraps the one libc call that has no safe wrapper in std or vmm-sys-util; it
//! lives outside `vstate/` because it concerns host files, not KVM.

use std::os::fd::RawFd;
use std::time::Duration;

fn wait(fd: RawFd, events: libc::c_short, timeout: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // Round up: a wait of 0.5 ms must not become a non-blocking poll that spins.
    let ms = timeout.as_micros().div_ceil(1000);
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd owned by this frame; poll only writes its `revents`.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        rc if rc < 0 => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        // Ready, or hung up / in error: the next read or write says which.
        _ => Ok(true),
    }
}

/// Waits at most `timeout` for `fd` to have input or an end of file; false on time-out.
pub fn readable(fd: RawFd, timeout: Duration) -> std::io::Result<bool> {
    wait(fd, libc::POLLIN, timeout)
}

/// Waits at most `timeout` for `fd` to take a write; false on time-out.
pub fn writable(fd: RawFd, timeout: Duration) -> std::io::Result<bool> {
    wait(fd, libc::POLLOUT, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn test_readable_times_out_then_sees_data() {
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        assert!(!readable(reader.as_raw_fd(), Duration::from_millis(1)).expect("poll"));
        writer.write_all(b"x").expect("write");
        assert!(readable(reader.as_raw_fd(), Duration::from_millis(1)).expect("poll"));
    }

    #[test]
    fn test_writable_on_empty_pipe() {
        let (_reader, writer) = std::io::pipe().expect("pipe");
        assert!(writable(writer.as_raw_fd(), Duration::ZERO).expect("poll"));
    }
}
