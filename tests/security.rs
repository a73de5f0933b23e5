//! seccomp: every thread of a running `ember` is filtered (mode 2), and a forbidden system
//! call ends the process with the SIGSYS report and status 159.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{GUEST_TIMEOUT, TestVm, VmArgs, test_guest};

fn seccomp_mode(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn test_every_thread_runs_with_seccomp_filter() {
    let sock = common::scratch_dir().join("seccomp-threads.sock");
    let _ = std::fs::remove_file(&sock);
    let mut vm = TestVm::start(
        VmArgs::guest("echo")
            .arg("--vcpus", 2)
            .arg("--api-sock", sock.display()),
    );
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", vm.pid())).expect("task dir");
    let mut seen = Vec::new();
    for task in tasks {
        let path = task.expect("task").path();
        let name = std::fs::read_to_string(path.join("comm")).expect("comm");
        let status = std::fs::read_to_string(path.join("status")).expect("status");
        seen.push(name.trim().to_string());
        assert_eq!(
            seccomp_mode(&status),
            Some(2),
            "thread {} is not filtered",
            name.trim()
        );
    }
    // Standard output is a pipe here: the console output thread runs too.
    for expected in [
        "ember",
        "ember_vcpu0",
        "ember_vcpu1",
        "ember_api",
        "ember_console",
    ] {
        assert!(
            seen.iter().any(|n| n == expected),
            "{expected} missing in {seen:?}"
        );
    }
    vm.send(b"quit\n");
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
}

#[test]
fn test_no_seccomp_flag_leaves_threads_unfiltered() {
    let mut vm = TestVm::start(VmArgs::guest("echo").flag("--no-seccomp"));
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).expect("status");
    assert_eq!(seccomp_mode(&status), Some(0));
    vm.send(b"quit\n");
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0);
}

#[test]
fn test_forbidden_syscall_kills_with_report() {
    let out = Command::new(common::ember_bin())
        .args(["--kernel"])
        .arg(test_guest("echo"))
        .env("EMBER_SECCOMP_SELFTEST", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    let result = wait_with_timeout(out, Duration::from_secs(10));
    let (code, stderr) = result;
    assert_eq!(code, Some(159), "{stderr}");
    assert!(
        stderr.contains("ember: seccomp: a main thread made forbidden system call 110"),
        "{stderr}"
    );
}

fn wait_with_timeout(mut child: std::process::Child, timeout: Duration) -> (Option<i32>, String) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr)
                .expect("read stderr");
            return (status.code(), stderr);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ember did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `call` in a forked child under `kind`'s filters (as Ember installs them) and returns
/// how the child ended: `Ok(true)` the call succeeded, `Ok(false)` it failed with an errno,
/// `Err(signal)` the filter killed the child.
fn in_filtered_child(kind: ember::seccomp::ThreadKind, call: fn() -> bool) -> Result<bool, i32> {
    let program = ember::seccomp::filter(kind).expect("filter");
    let refusal = ember::seccomp::open_refusal(kind).expect("refusal");
    // SAFETY: the child only applies the prepared filters, makes one system call and exits
    // with _exit; it touches no lock another thread could hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = seccompiler::apply_filter(&refusal).is_ok()
            && seccompiler::apply_filter(&program).is_ok();
        let code = if !ok {
            2
        } else if call() {
            0
        } else {
            1
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        return Err(libc::WTERMSIG(status));
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(true),
        1 => Ok(false),
        other => panic!("the child could not install the filter (status {other})"),
    }
}

fn socket(domain: i32) -> bool {
    // SAFETY: socket(2) with constant arguments; the descriptor is left to the exiting child.
    unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) >= 0 }
}

fn connect_nowhere() -> bool {
    // SAFETY: connect(2) on an invalid descriptor with a null address fails with EBADF; only
    // whether the filter lets the call through matters.
    unsafe { libc::connect(-1, std::ptr::null(), 0) == 0 }
}

fn io_uring_call(nr: libc::c_long) -> bool {
    // SAFETY: an invalid descriptor and no buffers: the call fails (EBADF / EFAULT) or traps.
    unsafe { libc::syscall(nr, -1, 0, 0, 0, 0, 0) >= -1 }
}

/// io_uring pins: the main thread may only enter an existing ring (the Async block engine's,
/// set up and restricted before the filter); setting one up or registering anything is a
/// trap, and vCPU threads may do none of it.
#[test]
fn test_vmm_filter_allows_io_uring_enter_only() {
    use ember::seccomp::ThreadKind;
    assert_eq!(
        in_filtered_child(ThreadKind::Vmm, || io_uring_call(libc::SYS_io_uring_enter)),
        Ok(true)
    );
    for nr in [libc::SYS_io_uring_setup, libc::SYS_io_uring_register] {
        let call = if nr == libc::SYS_io_uring_setup {
            || io_uring_call(libc::SYS_io_uring_setup)
        } else {
            || io_uring_call(libc::SYS_io_uring_register)
        };
        assert_eq!(
            in_filtered_child(ThreadKind::Vmm, call),
            Err(libc::SIGSYS),
            "{nr}"
        );
    }
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, || io_uring_call(libc::SYS_io_uring_enter)),
        Err(libc::SIGSYS)
    );
}

/// vsock pins: the main thread may create Unix sockets and connect (guest-initiated
/// connections to `<uds_path>_<port>`), and nothing else socket-wise; the vCPU threads may
/// do neither.
#[test]
fn test_vmm_filter_allows_unix_sockets_only_and_vcpu_filter_none() {
    use ember::seccomp::ThreadKind;
    assert_eq!(
        in_filtered_child(ThreadKind::Vmm, || socket(libc::AF_UNIX)),
        Ok(true)
    );
    assert_eq!(
        in_filtered_child(ThreadKind::Vmm, connect_nowhere),
        Ok(false)
    );
    for domain in [
        libc::AF_INET,
        libc::AF_INET6,
        libc::AF_NETLINK,
        libc::AF_VSOCK,
    ] {
        let call = match domain {
            libc::AF_INET => || socket(libc::AF_INET),
            libc::AF_INET6 => || socket(libc::AF_INET6),
            libc::AF_NETLINK => || socket(libc::AF_NETLINK),
            _ => || socket(libc::AF_VSOCK),
        };
        assert_eq!(
            in_filtered_child(ThreadKind::Vmm, call),
            Err(libc::SIGSYS),
            "domain {domain}"
        );
    }
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, || socket(libc::AF_UNIX)),
        Err(libc::SIGSYS)
    );
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, connect_nowhere),
        Err(libc::SIGSYS)
    );
    let vmm = ember::seccomp::allowed(ThreadKind::Vmm);
    for nr in [
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_shutdown,
        libc::SYS_socket,
    ] {
        assert!(vmm.contains(&nr), "{nr}");
    }
    assert!(!vmm.contains(&libc::SYS_bind) && !vmm.contains(&libc::SYS_listen));
}
