//! seccomp-bpf filters, one per thread kind (VMM event loop, vCPU, API, console output), built
//! with seccompiler from the lists below and installed before any guest code runs. A system call
//! outside its thread's list raises SIGSYS; the handler writes one line naming the thread and the
//! call to stderr and ends the process with status 159 (128 + SIGSYS). `--no-seccomp` turns
//! filtering off for debugging: it removes a layer of defence against a compromised VMM.
//!
//! The filters allow system calls by number, without argument checks (a later refinement can
//! restrict `ioctl` to the KVM and TUN requests Ember issues).

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Exit status when a forbidden system call is made: 128 + SIGSYS.
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

/// Which filter a thread gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop, device emulation, block and network I/O.
    Vmm,
    /// A vCPU thread: KVM_RUN and exit dispatch.
    Vcpu,
    /// The API server thread.
    Api,
    /// The console output thread: blocking writes to standard output.
    Console,
}

/// Errors while building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler rejected the rule set.
    #[error("Failed to build the {0:?} seccomp filter: {1}")]
    Build(ThreadKind, String),
    /// The kernel refused the filter.
    #[error("Failed to install the {0:?} seccomp filter: {1}")]
    Install(ThreadKind, String),
    /// The SIGSYS handler could not be installed.
    #[error("Failed to install the SIGSYS handler")]
    Handler(#[source] vmm_sys_util::errno::Error),
}

/// Calls every thread makes: memory management, locks, signals, time, thread exit, logging.
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_read,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The main thread, after the VM is built: epoll, eventfds, timerfd, signalfd, disk and TAP
/// I/O, terminal ioctls, vCPU kicks, teardown; for vsock, accepting host clients on the
/// listener bound at build time, connecting to `<uds_path>_<port>` (`socket` only for AF_UNIX,
/// see `filter`) and half-closing streams.
const VMM: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_ioctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_readv,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    // The Async block engine's submissions and completions (the ring is set up, restricted
    // and its eventfd registered before this filter is installed: no setup or register).
    libc::SYS_io_uring_enter,
    // A diff snapshot's memory file is sized before its pages are written (sparse).
    libc::SYS_ftruncate,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_tgkill,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_shutdown,
];

/// A vCPU thread: KVM_RUN and the register ioctls of the exit handlers.
const VCPU: &[libc::c_long] = &[libc::SYS_ioctl];

/// The API thread: a Unix socket server over epoll.
const API: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_poll,
];

/// The system calls `kind` may make.
pub fn allowed(kind: ThreadKind) -> Vec<libc::c_long> {
    let extra = match kind {
        ThreadKind::Vmm => VMM,
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Api => API,
        // write, futex and memory management, all in the common list.
        ThreadKind::Console => &[],
    };
    let mut list: Vec<libc::c_long> = COMMON.iter().chain(extra).copied().collect();
    list.sort_unstable();
    list.dedup();
    list
}

/// The BPF program for `kind`: allow the list, trap everything else. The API thread may use
/// `ioctl` only to make a socket non-blocking (FIONBIO).
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |e: seccompiler::BackendError| SeccompError::Build(kind, e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed(kind).into_iter().map(|nr| (nr, vec![])).collect();
    if kind == ThreadKind::Api {
        let fionbio =
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::FIONBIO)
                .map_err(build)?;
        rules.insert(
            libc::SYS_ioctl,
            vec![SeccompRule::new(vec![fionbio]).map_err(build)?],
        );
    }
    if kind == ThreadKind::Vmm {
        // vsock connects to Unix sockets only: no network socket from the main thread.
        let unix = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )
        .map_err(build)?;
        rules.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![unix]).map_err(build)?],
        );
    }
    // Decided by `open_refusal`, stacked on this filter: ENOENT, except the main thread's
    // snapshot files.
    rules.insert(libc::SYS_openat, vec![]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(kind, e.to_string()))
}

/// A second filter, stacked on every thread's list: `openat` fails with ENOENT. glibc's malloc
/// opens `/proc/sys/vm/overcommit_memory` the first time it shrinks a thread's heap
/// (`check_may_shrink_heap`) and copes when it cannot; trapping would kill Ember for freeing
/// memory (the API thread did, after a burst of large answers). The thread still cannot open
/// anything (crosvm's policies answer `openat` with an errno for the same reason). The kernel
/// applies the stricter of the two filters' answers, so ENOENT wins over the list's allow.
///
/// One exception, on the main thread only: `PUT /snapshot/create` writes the snapshot and
/// memory files, so it may open a file write-only, created or truncated (`O_WRONLY | O_CREAT |
/// O_TRUNC`, no `O_PATH`). It still cannot open an existing file for reading.
pub fn open_refusal(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |e: seccompiler::BackendError| SeccompError::Build(kind, e.to_string());
    let rules = if kind == ThreadKind::Vmm {
        // Refused (ENOENT) when any of these holds of the flags (argument 2).
        let flags = |mask: i32, value: i32| {
            SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(mask as u64),
                value as u64,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(build)
        };
        let refused = vec![
            flags(libc::O_ACCMODE, libc::O_RDONLY)?,
            flags(libc::O_ACCMODE, libc::O_RDWR)?,
            flags(libc::O_ACCMODE, libc::O_ACCMODE)?,
            flags(libc::O_CREAT, 0)?,
            flags(libc::O_TRUNC, 0)?,
            flags(libc::O_PATH, libc::O_PATH)?,
        ];
        BTreeMap::from([(libc::SYS_openat, refused)])
    } else {
        BTreeMap::from([(libc::SYS_openat, vec![])])
    };
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOENT as u32),
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

thread_local! {
    /// The filter this thread installed, for the SIGSYS report (read without system calls).
    static THREAD_KIND: std::cell::Cell<Option<ThreadKind>> = const { std::cell::Cell::new(None) };
}

/// Installs `kind`'s filter on the calling thread (threads it spawns later inherit it).
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let program = filter(kind)?;
    let refusal = open_refusal(kind)?;
    THREAD_KIND.with(|k| k.set(Some(kind)));
    seccompiler::apply_filter(&refusal)
        .and_then(|()| seccompiler::apply_filter(&program))
        .map_err(|e| SeccompError::Install(kind, e.to_string()))
}

extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here: format into a stack buffer, write(2), _exit(2).
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo for SIGSYS; for SECCOMP traps si_syscall
        // sits right after si_call_addr (a pointer) at the start of the union at offset 16.
        unsafe {
            let base = info.cast::<u8>();
            std::ptr::read_unaligned(base.add(16 + std::mem::size_of::<usize>()).cast::<i32>())
        }
    };
    let kind: &[u8] = match THREAD_KIND.with(|k| k.get()) {
        Some(ThreadKind::Vmm) => b"main",
        Some(ThreadKind::Vcpu) => b"vcpu",
        Some(ThreadKind::Api) => b"api",
        Some(ThreadKind::Console) => b"console",
        None => b"?",
    };
    let mut buf = [0u8; 160];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            if len < buf.len() {
                buf[len] = b;
                len += 1;
            }
        }
    };
    put(b"ember: seccomp: a ");
    put(kind);
    put(b" thread");
    put(b" made forbidden system call ");
    let mut digits = [0u8; 12];
    let mut n = i64::from(nr).unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if nr < 0 {
        put(b"-");
    }
    put(&digits[i..]);
    put(b"; exiting\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf[..len]` is initialised.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(EXIT_SECCOMP);
    }
}

/// Installs the SIGSYS handler that reports a forbidden system call.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, handle_sigsys)
        .map_err(SeccompError::Handler)
}

/// Test hook: with `EMBER_SECCOMP_SELFTEST=1` in the environment, the main thread makes one
/// system call outside its list right after its filter is installed, so the test suite can
/// check that a forbidden call ends the process with the SIGSYS report (docs/security.md).
pub fn self_test_hook() {
    if std::env::var_os("EMBER_SECCOMP_SELFTEST").is_some() {
        log::warn!("EMBER_SECCOMP_SELFTEST: making a forbidden system call (getppid)");
        // SAFETY: getppid has no arguments and no side effects; the filter traps it.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

/// Holds vCPU threads between installing their filters and running guest code, until the main
/// thread has installed its own filter.
#[derive(Default)]
pub struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    arrived: usize,
    failure: Option<String>,
    decision: Option<bool>,
}

impl StartGate {
    /// A vCPU thread reports its filter installed (or not), then waits for the decision;
    /// `false` means do not run.
    pub fn arrive_and_wait(&self, installed: Result<(), String>) -> bool {
        let mut state = self.state.lock().expect("gate lock poisoned");
        state.arrived += 1;
        if let Err(e) = installed {
            state.failure.get_or_insert(e);
        }
        self.changed.notify_all();
        loop {
            if let Some(go) = state.decision {
                return go;
            }
            state = self.changed.wait(state).expect("gate lock poisoned");
        }
    }

    /// Waits (bounded) until `n` threads arrived; returns the first failure.
    pub fn wait_arrivals(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().expect("gate lock poisoned");
        while state.arrived < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "only {} of {n} vCPU threads became ready",
                    state.arrived
                ));
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .expect("gate lock poisoned")
                .0;
        }
        state.failure.clone().map_or(Ok(()), Err)
    }

    /// Lets the waiting threads run (`true`) or end (`false`).
    pub fn open(&self, go: bool) {
        self.state.lock().expect("gate lock poisoned").decision = Some(go);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn test_filters_build_for_every_thread_kind() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::Console,
        ] {
            assert!(!filter(kind).expect("filter builds").is_empty());
        }
    }

    #[test]
    fn test_open_refusal_builds() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api] {
            assert!(!open_refusal(kind).expect("filter builds").is_empty());
        }
    }

    #[test]
    fn test_main_thread_may_only_create_files_write_only() {
        let path = std::env::temp_dir().join(format!("ember-openat-{}", std::process::id()));
        let opened = std::thread::spawn({
            let path = path.clone();
            move || {
                // Only the stacked filter: it decides openat and allows every other call.
                let refusal = open_refusal(ThreadKind::Vmm).expect("filter builds");
                seccompiler::apply_filter(&refusal).expect("install on this thread");
                let errno =
                    |r: std::io::Result<std::fs::File>| r.err().and_then(|e| e.raw_os_error());
                let mut open = std::fs::OpenOptions::new();
                let create = open.write(true).create(true).truncate(true);
                (
                    errno(std::fs::File::open("/proc/self/status")),
                    create.open(&path).is_ok(),
                    errno(
                        std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path),
                    ),
                    errno(
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(&path),
                    ),
                )
            }
        })
        .join()
        .expect("thread");
        let _ = std::fs::remove_file(&path);
        assert_eq!(opened.0, Some(libc::ENOENT), "read-only open allowed");
        assert!(opened.1, "write-only create and truncate refused");
        assert_eq!(opened.2, Some(libc::ENOENT), "read-write open allowed");
        assert_eq!(
            opened.3,
            Some(libc::ENOENT),
            "open without truncate allowed"
        );
    }

    #[test]
    fn test_vcpu_list_is_narrower_than_vmm_list() {
        let vcpu = allowed(ThreadKind::Vcpu);
        let vmm = allowed(ThreadKind::Vmm);
        assert!(vcpu.iter().all(|nr| vmm.contains(nr)));
        assert!(!vcpu.contains(&libc::SYS_execve));
        assert!(!vcpu.contains(&libc::SYS_openat));
        assert!(!vmm.contains(&libc::SYS_execve));
        assert!(!allowed(ThreadKind::Api).contains(&libc::SYS_ioctl));
        let console = allowed(ThreadKind::Console);
        assert!(console.iter().all(|nr| vcpu.contains(nr)));
        assert!(!console.contains(&libc::SYS_ioctl));
    }

    #[test]
    fn test_start_gate_reports_failure_and_releases() {
        let gate = Arc::new(StartGate::default());
        let g = gate.clone();
        let t = std::thread::spawn(move || g.arrive_and_wait(Err("nope".into())));
        assert_eq!(
            gate.wait_arrivals(1, Duration::from_secs(5)),
            Err("nope".to_string())
        );
        gate.open(false);
        assert!(!t.join().expect("thread"));
    }

    #[test]
    fn test_start_gate_times_out_when_threads_missing() {
        let gate = StartGate::default();
        assert!(gate.wait_arrivals(1, Duration::from_millis(10)).is_err());
    }
}
