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
