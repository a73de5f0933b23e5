//! Host-side peers that misbehave (issue 20): a reader that never reads, hostile API clients,
//! an exhausted host. Each must degrade into a clear error or a counted loss, never a frozen
//! Ember.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::api::{http, sock_path, wait_for_socket};
use common::{GUEST_TIMEOUT, TestVm, VmArgs, scratch_dir};

const SIGTERM: i32 = 15;
/// What "promptly" means for a stop signal: the issue asks for a second; the bound is looser
/// because other builds share this host. Before the fixes these cases never ended.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

fn mkfifo(name: &str) -> std::path::PathBuf {
    let path = scratch_dir().join(name);
    let _ = std::fs::remove_file(&path);
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
    path
}

/// Holds a FIFO open for reading without ever reading (opened read-write so that the open does
/// not wait), its pipe shrunk to one page so that it fills after a few dozen lines.
fn stalled_reader(fifo: &Path) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .expect("open the FIFO");
    // SAFETY: F_SETPIPE_SZ on a descriptor this test owns; no memory is passed.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(rc >= 4096, "F_SETPIPE_SZ failed");
    file
}

fn expect_status(sock: &Path, method: &str, target: &str, body: &str, status: u16) {
    let (got, answer) = http(sock, method, target, body);
    assert_eq!(got, status, "{method} {target} {body} -> {answer}");
}

fn wait_stopped(vm: &mut TestVm, code: i32) {
    let asked = Instant::now();
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), code, "{}", vm.log());
    assert!(
        asked.elapsed() < STOP_TIMEOUT,
        "stopping took {:?}",
        asked.elapsed()
    );
}

/// Item 1: an `--events` FIFO whose reader keeps it open and never reads. Thousands of
/// pause/resume events later the API still answers, every event is either delivered or counted
/// in a `dropped` line once the reader reads, and SIGTERM ends Ember at once.
#[test]
fn test_events_fifo_never_read_keeps_api_and_sigterm_working() {
    const CYCLES: u64 = 5000;
    let fifo = mkfifo("stalled-events.fifo");
    let mut reader = stalled_reader(&fifo);
    let sock = sock_path("stalled-events");
    let mut vm = TestVm::start(
        VmArgs::guest("echo")
            .arg("--api-sock", sock.display())
            .arg("--events", fifo.display()),
    );
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    wait_for_socket(&sock, GUEST_TIMEOUT);
    for _ in 0..CYCLES {
        expect_status(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
        expect_status(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    }
    expect_status(&sock, "GET", "/", "", 200);
    assert!(vm.log().contains("does not keep up"), "{}", vm.log());

    // The reader wakes up: what fitted, then the count of what was lost, then the newest.
    let mut text = String::new();
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        let mut buf = [0u8; 65536];
        match reader.read(&mut buf) {
            Ok(n) => text.push_str(std::str::from_utf8(&buf[..n]).expect("utf8")),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("read events: {e}"),
        }
        let lines = text.lines().filter(|l| l.ends_with('}')).count() as u64;
        let counted: u64 = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["count"].as_u64())
            .sum();
        let notices = text.matches("\"dropped\"").count() as u64;
        if lines - notices + counted == 1 + 2 * CYCLES {
            assert!(counted > 0, "nothing dropped?\n{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events neither delivered nor counted: {lines} lines, {counted} counted\n{}",
            vm.log()
        );
    }
    assert!(vm.log().contains("were dropped"), "{}", vm.log());

    // Stalled again (nobody reads from here on), then stopped.
    for _ in 0..100 {
        expect_status(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
        expect_status(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    }
    vm.signal(SIGTERM);
    wait_stopped(&mut vm, 128 + SIGTERM);
    assert!(!sock.exists(), "the socket is removed");
}

/// Item 1, at the start: Ember waits for a reader of an events FIFO, and a stop signal ends
/// the wait.
#[test]
fn test_events_fifo_without_reader_sigterm_stops_wait() {
    let fifo = mkfifo("no-reader-events.fifo");
    let mut vm = TestVm::start(VmArgs::guest("echo").arg("--events", fifo.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vm.log().contains("Waiting for a reader") {
        assert!(Instant::now() < deadline, "{}", vm.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    vm.signal(SIGTERM);
    wait_stopped(&mut vm, 128 + SIGTERM);
}
