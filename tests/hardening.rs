//! Host-side faults and load: a closed console pipe, stop signals, many microVMs at once, and
//! resource stability across pause/resume cycles.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{GUEST_TIMEOUT, TestVm, VmArgs, scratch_dir, test_guest};

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// The console's reader goes away (SIGPIPE/EPIPE on every write): Ember reports it once, keeps
/// the guest running, and exits normally when the guest resets.
#[test]
fn test_closed_console_pipe_is_reported_and_vm_finishes() {
    let mut child = Command::new(common::ember_bin())
        .arg("--kernel")
        .arg(test_guest("bootinfo"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    drop(child.stdout.take());
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ember hung with a closed console"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr.matches("Serial console output failed").count(),
        1,
        "reported exactly once: {stderr}"
    );
}

#[test]
fn test_sigint_stops_vm_with_130() {
    let mut vm = TestVm::start(VmArgs::guest("echo"));
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    vm.signal(2);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 130);
}

#[test]
fn test_sighup_stops_vm_with_129() {
    let mut vm = TestVm::start(VmArgs::guest("echo").arg("--vcpus", 2));
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    vm.signal(1);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 129);
}

/// Soak: as many microVMs as this small machine comfortably holds run at once, each echoing
/// lines for a bounded time; every one answers every line and exits 0.
#[test]
fn test_soak_many_vms_echo_concurrently() {
    const VMS: usize = 12;
    const ROUNDS: usize = 20;
    let mut vms: Vec<TestVm> = (0..VMS)
        .map(|i| TestVm::start(VmArgs::guest("echo").arg("--memory", 32 + i)))
        .collect();
    for vm in &mut vms {
        vm.wait_for_line("READY", GUEST_TIMEOUT);
    }
    for round in 0..ROUNDS {
        for (i, vm) in vms.iter_mut().enumerate() {
            vm.send(format!("vm{i}-round{round}\n").as_bytes());
        }
        for (i, vm) in vms.iter_mut().enumerate() {
            vm.wait_for_line(&format!("ECHO vm{i}-round{round}"), GUEST_TIMEOUT);
        }
    }
    for vm in &mut vms {
        vm.send(b"quit\n");
    }
    for vm in &mut vms {
        assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    }
}

fn api(sock: &std::path::Path, method: &str, path: &str, body: &str) -> u16 {
    use std::io::Write;
    let mut stream = UnixStream::connect(sock).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status")
}

/// Resource hygiene within one process: 50 pause/resume cycles and 50 API connections leave the
/// number of open descriptors and threads where they were.
#[test]
fn test_pause_resume_cycles_leak_no_fds_or_threads() {
    let sock = scratch_dir().join("hygiene.sock");
    let _ = std::fs::remove_file(&sock);
    let mut vm = TestVm::start(
        VmArgs::guest("echo")
            .arg("--vcpus", 2)
            .arg("--api-sock", sock.display()),
    );
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    let fds = format!("/proc/{}/fd", vm.pid());
    let tasks = format!("/proc/{}/task", vm.pid());
    assert_eq!(api(&sock, "GET", "/", ""), 200);
    let (fds_before, tasks_before) = (count_dir(&fds), count_dir(&tasks));
    for i in 0..50 {
        assert_eq!(
            api(&sock, "PATCH", "/vm", r#"{"state":"Paused"}"#),
            204,
            "pause {i}"
        );
        assert_eq!(
            api(&sock, "PATCH", "/vm", r#"{"state":"Resumed"}"#),
            204,
            "resume {i}"
        );
    }
    vm.send(b"still alive\n");
    vm.wait_for_line("ECHO still alive", GUEST_TIMEOUT);
    // Connections are closed by the server after the reply; give it a moment.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count_dir(&fds), fds_before, "descriptor count changed");
    assert_eq!(count_dir(&tasks), tasks_before, "thread count changed");
    vm.send(b"quit\n");
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0);
    assert!(!sock.exists());
}

/// Durability: the `blk` guest writes 64 KiB at sector 128, reads it back, FLUSHes and reports;
/// Ember is then killed with SIGKILL, and the host file holds every flushed byte. On both I/O
/// engines.
#[test]
fn test_flushed_writes_survive_sigkill() {
    for engine in ["sync", "async"] {
        flushed_writes_survive_sigkill(engine);
    }
}

fn flushed_writes_survive_sigkill(engine: &str) {
    let disk = scratch_dir().join(format!("durable-{engine}.img"));
    std::fs::write(&disk, vec![0u8; 4 << 20]).expect("disk file");
    let mut vm = TestVm::start(
        VmArgs::device_guest("blk")
            .arg(
                "--disk",
                format!("path={},io_engine={engine}", disk.display()),
            )
            .arg("--cmdline", "blk=flush"),
    );
    let written = vm.wait_for_line("BLK write fnv=", GUEST_TIMEOUT);
    vm.wait_for_line("BLK flushed", GUEST_TIMEOUT);
    vm.signal(9);
    let status = vm.wait_exit(GUEST_TIMEOUT);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "ember was killed, not exited");
    let bytes = std::fs::read(&disk).expect("read disk");
    let flushed = &bytes[128 * 512..128 * 512 + 65536];
    let expected = written.trim_start_matches("BLK write fnv=");
    assert_eq!(format!("{:#x}", common::fnv1a64(flushed)), expected);
}
