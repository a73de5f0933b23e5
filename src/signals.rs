//! Host stop signals delivered to the event loop through a signalfd: SIGINT, SIGTERM, SIGHUP,
//! and every other signal whose default action would end the process without a word (SIGUSR1,
//! SIGALRM, ...), so that whatever stops Ember removes its API socket and writes its last event.
//! SIGXFSZ is ignored: a disk write past RLIMIT_FSIZE then fails with EFBIG, which the guest
//! gets as an I/O error, instead of killing the VMM. Signals that report a fault in Ember itself
//! (SIGSEGV, SIGBUS, SIGABRT, ...) keep their default action; a stale socket they leave is
//! removed by the next start (see `api::server`).
//!
//! The unsafe here wraps libc calls that have no safe wrapper in vmm-sys-util; it lives
//! outside `vstate/` because it concerns the host process, not KVM.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// Signals that stop the VM cleanly (exit status 128 + the signal): the usual three, then the
/// others whose default action is to terminate.
pub const STOP_SIGNALS: [libc::c_int; 12] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSTKFLT,
    libc::SIGXCPU,
];

/// A signalfd for `STOP_SIGNALS`, which are blocked in the calling thread (and in every thread
/// it spawns afterwards, which inherit the mask).
pub struct StopSignals {
    fd: File,
}

impl StopSignals {
    /// Blocks the stop signals, opens a non-blocking signalfd for them, and ignores SIGXFSZ.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: SIG_IGN for a valid signal number; no handler code is involved.
        if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
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
