//! Host stop signals (SIGINT, SIGTERM, SIGHUP) delivered to the event loop through a signalfd.
//!
//! The unsafe here wraps three libc calls that have no safe wrapper in vmm-sys-util; it lives
//! outside `vstate/` because it concerns the host process, not KVM.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// Signals that stop the VM cleanly.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A signalfd for `STOP_SIGNALS`, which are blocked in the calling thread (and in every thread
/// it spawns afterwards, which inherit the mask).
pub struct StopSignals {
    fd: File,
}

impl StopSignals {
    /// Blocks the stop signals and opens a non-blocking signalfd for them.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for sig in STOP_SIGNALS {
            // SAFETY: `set` is initialised and `sig` a valid signal number.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
        // SAFETY: `set` is initialised; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(StopSignals { fd })
    }

    /// The next pending stop signal, if any.
    pub fn read(&mut self) -> Option<libc::c_int> {
        let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        match self.fd.read(&mut buf) {
            Ok(n) if n == buf.len() => {
                let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
                Some(signo as libc::c_int)
            }
            _ => None,
        }
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
