//! Host-side peers that misbehave (issue 20): a reader that never reads, hostile API clients,
//! an exhausted host. Each must degrade into a clear error or a counted loss, never a frozen
//! Ember.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{
    exchange, http, raw, request, sock_path, split_response, statuses, wait_for_socket,
};
use common::{GUEST_TIMEOUT, TestVm, VmArgs, scratch_dir, test_guest};

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

/// Waits for a log line containing `needle`.
fn wait_for_log(vm: &TestVm, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !vm.log().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in\n{}", vm.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `sig` and checks that Ember stops promptly with status 128 + `sig` and, when it
/// served `sock`, removes the socket.
fn stop(vm: &mut TestVm, sig: i32, sock: Option<&Path>) {
    vm.signal(sig);
    let asked = Instant::now();
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 128 + sig, "{}", vm.log());
    assert!(
        asked.elapsed() < STOP_TIMEOUT,
        "stopping took {:?}",
        asked.elapsed()
    );
    if let Some(sock) = sock {
        assert!(!sock.exists(), "the socket is removed");
    }
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
    // Ember logs the loss as it writes the notice; its stderr may reach us a moment after
    // the FIFO did.
    wait_for_log(&vm, "were dropped", GUEST_TIMEOUT);

    // Stalled again (nobody reads from here on), then stopped.
    for _ in 0..100 {
        expect_status(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
        expect_status(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    }
    stop(&mut vm, SIGTERM, Some(&sock));
}

/// Item 1, at the start: Ember waits for a reader of an events FIFO, and a stop signal ends
/// the wait.
#[test]
fn test_events_fifo_without_reader_sigterm_stops_wait() {
    let fifo = mkfifo("no-reader-events.fifo");
    let mut vm = TestVm::start(VmArgs::guest("echo").arg("--events", fifo.display()));
    wait_for_log(&vm, "Waiting for a reader", Duration::from_secs(10));
    stop(&mut vm, SIGTERM, None);
}

/// Ember waiting for its configuration on a fresh API socket.
fn api_only(name: &str) -> (TestVm, std::path::PathBuf) {
    let sock = sock_path(name);
    let vm = TestVm::start(VmArgs::default().arg("--api-sock", sock.display()));
    wait_for_socket(&sock, GUEST_TIMEOUT);
    // Answered by the main thread: every descriptor of the pre-boot loop exists.
    expect_status(&sock, "GET", "/", "", 200);
    (vm, sock)
}

/// User plus system CPU time of process `pid`, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    // Fields 14 and 15 (utime, stime), counted after the comm field.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Sets the soft RLIMIT_NOFILE of process `pid`; returns the old soft limit.
fn set_nofile(pid: u32, soft: u64) -> u64 {
    set_limit(pid, libc::RLIMIT_NOFILE, soft)
}

/// Sets the soft limit `resource` of process `pid`; returns the old soft limit.
fn set_limit(pid: u32, resource: libc::__rlimit_resource_t, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a query of `pid`'s limit into `old`, a valid rlimit owned by this frame.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, resource, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit query");
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit; the old value is not asked for.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, resource, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit set");
    old.rlim_cur
}

/// The lowest descriptor number process `pid` has free: with RLIMIT_NOFILE there, it can make
/// no new descriptor.
fn lowest_free_fd(pid: u32) -> u64 {
    let open: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).expect("a free number")
}

/// Item 2: out of descriptors, accept(2) fails with EMFILE while ten clients wait. The API
/// thread backs off (no busy loop: CPU time measured) and says so at most once per period;
/// once descriptors are available again every waiting client is served.
#[test]
fn test_api_emfile_backs_off_without_spinning() {
    let (mut vm, sock) = api_only("emfile");
    let pid = vm.pid();
    let old = set_nofile(pid, lowest_free_fd(pid));
    let clients: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(&sock).expect("connect (queued in the backlog)"))
        .collect();
    let cpu_before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_time(pid) - cpu_before;
    assert!(cpu < Duration::from_millis(500), "{cpu:?} of CPU in 2 s");
    let complaints = vm.log().matches("cannot accept connections").count();
    assert!((1..=2).contains(&complaints), "{}", vm.log());

    set_nofile(pid, old);
    for mut client in clients {
        client
            .set_read_timeout(Some(GUEST_TIMEOUT))
            .expect("read timeout");
        client
            .write_all(request("GET", "/", "").as_bytes())
            .unwrap_or_else(|e| panic!("send: {e}\n{}", vm.log()));
        let mut answer = String::new();
        client
            .read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("answer: {e}\n{}", vm.log()));
        assert_eq!(split_response(&answer).0, 200, "{answer}");
    }
    stop(&mut vm, SIGTERM, Some(&sock));
}

/// Item 2: a client trickling one byte every 200 ms is closed (408) when its request's deadline
/// passes, however recent its last byte.
#[test]
fn test_api_trickling_client_closed_at_deadline() {
    let (mut vm, sock) = api_only("trickle");
    let mut client = UnixStream::connect(&sock).expect("connect");
    client.set_nonblocking(true).expect("non-blocking");
    let started = Instant::now();
    let mut answer = Vec::new();
    let head = b"GET / HTTP/1.1\r\nX-Slow: ".iter();
    'trickle: for byte in head.chain(std::iter::repeat(&b'a')) {
        if client.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut buf = [0u8; 1024];
        loop {
            match client.read(&mut buf) {
                Ok(0) => break 'trickle,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => break 'trickle,
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a trickling client is still connected after 20 s"
        );
    }
    let closed_after = started.elapsed();
    assert!(closed_after >= Duration::from_secs(4), "{closed_after:?}");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    expect_status(&sock, "GET", "/", "", 200);
    stop(&mut vm, SIGTERM, Some(&sock));
}

/// A client that pipelines 2,000 requests and never reads an answer.
fn hog(sock: &Path) -> UnixStream {
    let pipelined = request("GET", "/vm/config", "").replace("Connection: close", "X: y");
    let burst = pipelined.repeat(2000);
    let client = UnixStream::connect(sock).expect("connect");
    let mut writer = client.try_clone().expect("clone");
    // The server stops reading a client whose answers pile up: write from a thread.
    std::thread::spawn(move || {
        let _ = writer.write_all(burst.as_bytes());
    });
    client
}

/// Item 2: ten clients pipeline requests and never read the answers; another client is still
/// answered at once (before, each of them held the single API thread for 2 s).
#[test]
fn test_api_clients_not_reading_answers_block_nobody() {
    let (mut vm, sock) = api_only("no-readers");
    let hogs: Vec<UnixStream> = (0..10).map(|_| hog(&sock)).collect();
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    expect_status(&sock, "GET", "/", "", 200);
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "GET / took {took:?}");
    drop(hogs);
    stop(&mut vm, SIGTERM, Some(&sock));
}

/// Item 2: 64 idle connections (the most served at once) do not lock a newcomer out: the one
/// idle the longest makes room (it was a 503 until one of them timed out after 30 s).
#[test]
fn test_api_idle_connections_do_not_lock_out_newcomers() {
    let (mut vm, sock) = api_only("idle-crowd");
    let idle: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&sock).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    expect_status(&sock, "GET", "/", "", 200);
    drop(idle);
    stop(&mut vm, SIGTERM, Some(&sock));
}

/// Item 2: requests pipelined and followed by shutdown(SHUT_WR) are all answered and applied.
#[test]
fn test_api_pipelined_requests_after_half_close_all_served() {
    let (mut vm, sock) = api_only("pipelined");
    // While a client that does not read holds the server busy (it did, 2 s per answer), the
    // requests and the half-close below arrive together.
    let _hog = hog(&sock);
    std::thread::sleep(Duration::from_millis(300));
    let get = request("GET", "/", "").replace("Connection: close", "X: y");
    let mut client = UnixStream::connect(&sock).expect("connect");
    client.write_all(get.repeat(3).as_bytes()).expect("send");
    client.shutdown(Shutdown::Write).expect("half close");
    let mut answer = String::new();
    client.read_to_string(&mut answer).expect("answers");
    assert_eq!(statuses(&answer), [200, 200, 200], "{answer}");

    let machine = request(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
    );
    let boot = request(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}"}}"#,
            test_guest("echo").display()
        ),
    );
    let mut client = UnixStream::connect(&sock).expect("connect");
    let both = format!("{machine}{boot}").replace("Connection: close", "X: y");
    client.write_all(both.as_bytes()).expect("send");
    client.shutdown(Shutdown::Write).expect("half close");
    let mut answer = String::new();
    client.read_to_string(&mut answer).expect("answers");
    assert_eq!(statuses(&answer), [204, 204], "{answer}");
    let (_, config) = http(&sock, "GET", "/vm/config", "");
    assert!(config.contains("kernel_image_path"), "{config}");
    assert!(config.contains(r#""vcpu_count":2"#), "{config}");
    stop(&mut vm, SIGTERM, Some(&sock));
}

/// Item 2: two Content-Length headers that disagree are refused (RFC 9112), not "last wins".
#[test]
fn test_api_conflicting_content_length_is_400() {
    let (mut vm, sock) = api_only("content-length");
    let answer = raw(
        &sock,
        b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
    );
    let (status, body) = split_response(&answer);
    assert_eq!(status, 400, "{answer}");
    assert!(body.contains("fault_message"), "{body}");
    assert!(body.contains("Content-Length"), "{body}");
    stop(&mut vm, SIGTERM, Some(&sock));
}

/// How a bounded `ember` run ended: exit code (None if killed by a signal), stderr, duration.
struct Ended {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// A resource limit for `run_bounded`.
type Limit = (libc::__rlimit_resource_t, u64);

/// Runs `ember args` with `stdin` under resource `limits` (an address-space limit makes a
/// runaway allocation fail fast instead of eating the host), killed after `timeout`.
fn run_bounded(args: &[&str], stdin: Stdio, limits: &[Limit], timeout: Duration) -> Ended {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(common::ember_bin());
    cmd.args(args)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let limits = limits.to_vec();
    // SAFETY: between fork and exec only setrlimit, which is async-signal-safe, runs.
    unsafe {
        cmd.pre_exec(move || {
            for &(resource, value) in &limits {
                let limit = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn ember");
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ember {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    Ended {
        code: status.code(),
        stderr,
        took,
    }
}

/// One `ember:` error line containing `needle`, exit status 2.
fn assert_usage_error(ended: &Ended, needle: &str) {
    assert_eq!(ended.code, Some(2), "{}", ended.stderr);
    let errors: Vec<&str> = ended
        .stderr
        .lines()
        .filter(|l| l.starts_with("ember:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", ended.stderr);
    assert!(errors[0].contains(needle), "{}", ended.stderr);
}

/// An address-space limit that Ember's config parsing never reaches.
const AS_1GIB: Limit = (libc::RLIMIT_AS, 1 << 30);

/// Item 3: `--config-file /dev/zero` stops at the 1 MiB limit (it was read without limit).
#[test]
fn test_config_file_dev_zero_stops_at_limit() {
    let ended = run_bounded(
        &["--config-file", "/dev/zero"],
        Stdio::null(),
        &[AS_1GIB],
        Duration::from_secs(30),
    );
    assert_usage_error(&ended, "larger than 1 MiB");
}

/// Item 3: a config file on a pipe is read up to the limit, not to its end.
#[test]
fn test_config_file_pipe_over_limit_is_refused() {
    let (reader, mut writer) = std::io::pipe().expect("pipe");
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 16];
        // Ember stops reading at the limit and exits: the write then fails, as it should.
        for _ in 0..64 {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let ended = run_bounded(
        &["--config-file", "/dev/stdin"],
        Stdio::from(reader),
        &[AS_1GIB],
        Duration::from_secs(30),
    );
    feeder.join().expect("feeder");
    assert_usage_error(&ended, "larger than 1 MiB");
}

/// Item 3: a FIFO that nobody writes to times out with one clear line (it hung forever).
#[test]
fn test_config_file_fifo_without_writer_times_out() {
    let fifo = mkfifo("no-writer-config.fifo");
    let ended = run_bounded(
        &["--config-file", &fifo.display().to_string()],
        Stdio::null(),
        &[AS_1GIB],
        Duration::from_secs(30),
    );
    assert_usage_error(&ended, "not read to its end within 10 s");
    assert!(ended.took >= Duration::from_secs(9), "{:?}", ended.took);
}

/// Item 4: standard output is a pipe that nobody reads once the guest is up. The guest keeps
/// echoing (its output waits in Ember), a pause still succeeds (it answered 500 while the vCPU
/// was stuck in the console write), and once the reader reads again every line arrives.
#[test]
fn test_console_pipe_not_read_does_not_stall_vcpu_or_pause() {
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    // SAFETY: F_SETPIPE_SZ on a descriptor this test owns; no memory is passed.
    let rc = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(rc >= 4096, "F_SETPIPE_SZ failed");
    let sock = sock_path("console-stall");
    let mut child = KillOnDrop(
        Command::new(common::ember_bin())
            .args(["--kernel", &test_guest("echo").display().to_string()])
            .args([
                "--api-sock",
                &sock.display().to_string(),
                "--log-level",
                "info",
            ])
            .stdin(Stdio::piped())
            .stdout(writer)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ember"),
    );
    let mut console = String::new();
    let mut read_until = |console: &mut String, needle: &str| {
        let mut buf = [0u8; 4096];
        while !console.contains(needle) {
            let n = reader.read(&mut buf).expect("console");
            assert!(n > 0, "console closed before {needle:?}: {console}");
            console.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    read_until(&mut console, "READY");
    wait_for_socket(&sock, GUEST_TIMEOUT);
    let mut stdin = child.0.stdin.take().expect("stdin");
    let lines: String = (0..60)
        .map(|i| format!("{i:03}{}\n", "x".repeat(150)))
        .collect();
    stdin.write_all(lines.as_bytes()).expect("serial input");
    // The echoes (9 KiB) overflow the one-page pipe long before the guest is done.
    std::thread::sleep(Duration::from_secs(2));
    expect_status(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    expect_status(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    read_until(&mut console, &format!("ECHO 059{}", "x".repeat(150)));
    stdin.write_all(b"quit\n").expect("quit");
    drop(stdin);
    let status = child.0.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

/// A child process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Item 5: a signal Ember does not otherwise use (SIGUSR1, whose default action kills) stops
/// the VM like SIGTERM: exit status 128 + 10, the socket removed.
#[test]
fn test_sigusr1_stops_cleanly_and_removes_socket() {
    const SIGUSR1: i32 = 10;
    let sock = sock_path("sigusr1");
    let mut vm = TestVm::start(VmArgs::guest("echo").arg("--api-sock", sock.display()));
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    wait_for_socket(&sock, GUEST_TIMEOUT);
    stop(&mut vm, SIGUSR1, Some(&sock));
}

/// Item 5: a socket file left by an Ember that was killed (nobody listens on it) is removed at
/// the next start, with a log line; a socket somebody listens on is left alone.
#[test]
fn test_stale_api_socket_is_replaced_live_one_refused() {
    let sock = sock_path("stale");
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists(), "a stale socket file");
    let mut vm = TestVm::start(VmArgs::default().arg("--api-sock", sock.display()));
    wait_for_log(&vm, "Removed the stale API socket", GUEST_TIMEOUT);
    expect_status(&sock, "GET", "/", "", 200);

    let (code, stderr) =
        common::run_ember(&["--api-sock", &sock.display().to_string()], GUEST_TIMEOUT);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    expect_status(&sock, "GET", "/", "", 200);
    stop(&mut vm, SIGTERM, Some(&sock));
}

/// Item 6: the host refuses a disk write (EFBIG past RLIMIT_FSIZE; it used to kill Ember with
/// SIGXFSZ): the guest gets an I/O error, the VM goes on, and the log warns once, naming the
/// disk and its file.
#[test]
fn test_block_host_write_failure_warns_once_naming_disk_and_file() {
    let disk = scratch_dir().join("fsize-limited.img");
    File::create(&disk)
        .and_then(|f| f.set_len(4 << 20))
        .expect("sparse disk file");
    let ended = run_bounded(
        &[
            "--kernel",
            &test_guest("blk").display().to_string(),
            "--disk",
            &format!("path={},id=scratch", disk.display()),
            // The guest finds its disk on the command line, not in the DSDT.
            "--virtio-discovery",
            "cmdline",
        ],
        Stdio::null(),
        // The check writes 64 KiB at sector 128 (64 KiB in): just past the limit.
        &[(libc::RLIMIT_FSIZE, 64 << 10)],
        GUEST_TIMEOUT,
    );
    assert_eq!(ended.code, Some(0), "{}", ended.stderr);
    let warnings: Vec<&str> = ended
        .stderr
        .lines()
        .filter(|l| l.contains("host write of"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", ended.stderr);
    assert!(warnings[0].contains("Disk scratch"), "{}", warnings[0]);
    assert!(
        warnings[0].contains(&disk.display().to_string()),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("File too large"), "{}", warnings[0]);
}

/// Item 7: a writable disk image is locked: a second writable (or read-only) user, in the same
/// VM or another Ember, is refused with one clear line; read-only users share it.
#[test]
fn test_writable_disk_image_is_exclusive() {
    let disk = scratch_dir().join("exclusive.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk file");
    let path = disk.display().to_string();
    // Runs to its end at once: before the lock, each refused run below exited 0.
    let hello = test_guest("hello").display().to_string();

    let twice = [
        "--kernel",
        &hello,
        "--disk",
        &format!("path={path},id=a"),
        "--disk",
        &format!("path={path},id=b"),
    ];
    let (code, stderr) = common::run_ember(&twice, GUEST_TIMEOUT);
    assert_eq!(code, 1, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ember:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("disk b"), "{stderr}");
    assert!(
        errors[0].contains("in use by another disk or process"),
        "{stderr}"
    );

    let mut first = TestVm::start(VmArgs::guest("echo").arg("--disk", format!("path={path}")));
    first.wait_for_line("READY", GUEST_TIMEOUT);
    for disk in [format!("path={path}"), format!("path={path},readonly=on")] {
        let (code, stderr) =
            common::run_ember(&["--kernel", &hello, "--disk", &disk], GUEST_TIMEOUT);
        assert_eq!(code, 1, "{disk}: {stderr}");
        assert!(stderr.contains("in use"), "{stderr}");
    }
    first.send(b"quit\n");
    assert_eq!(first.exit_code(GUEST_TIMEOUT), 0);

    let readers: Vec<TestVm> = (0..2)
        .map(|_| {
            let mut vm = TestVm::start(
                VmArgs::guest("echo").arg("--disk", format!("path={path},readonly=on")),
            );
            vm.wait_for_line("READY", GUEST_TIMEOUT);
            vm
        })
        .collect();
    for mut vm in readers {
        vm.send(b"quit\n");
        assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    }

    // shared=on: the user's explicit choice to share a writable image.
    let shared = format!("path={path},shared=on");
    let mut first = TestVm::start(VmArgs::guest("echo").arg("--disk", &shared));
    first.wait_for_line("READY", GUEST_TIMEOUT);
    let (code, stderr) = common::run_ember(&["--kernel", &hello, "--disk", &shared], GUEST_TIMEOUT);
    assert_eq!(code, 0, "{stderr}");
    first.send(b"quit\n");
    assert_eq!(first.exit_code(GUEST_TIMEOUT), 0);
}

/// Starts Ember in API mode, applies `limit(pid, step)`, configures a 4-vCPU guest and sends
/// InstanceStart (on a connection made before the limit, which may leave none to accept).
/// Whatever the limit, the answer is 204 or an error with a fault message, and Ember keeps
/// serving; returns whether the VM started.
fn start_under_limit(name: &str, step: u64, limit: &dyn Fn(u32, u64)) -> bool {
    let (mut vm, sock) = api_only(name);
    let mut client = UnixStream::connect(&sock).expect("connect");
    assert_eq!(exchange(&mut client, "GET", "/", "").0, 200);
    limit(vm.pid(), step);
    let machine = r#"{"vcpu_count": 4, "mem_size_mib": 64}"#;
    assert_eq!(
        exchange(&mut client, "PUT", "/machine-config", machine).0,
        204
    );
    let boot = format!(
        r#"{{"kernel_image_path": "{}"}}"#,
        test_guest("echo").display()
    );
    assert_eq!(exchange(&mut client, "PUT", "/boot-source", &boot).0, 204);
    let start = r#"{"action_type": "InstanceStart"}"#;
    let (status, body) = exchange(&mut client, "PUT", "/actions", start);
    let started = status == 204;
    assert!(
        started || ((400..600).contains(&status) && body.contains("fault_message")),
        "step {step}: {status} {body}\n{}",
        vm.log()
    );
    let (status, info) = exchange(&mut client, "GET", "/", "");
    assert_eq!(
        status,
        200,
        "step {step}: Ember stopped serving\n{}",
        vm.log()
    );
    let state = if started { "Running" } else { "Not started" };
    assert!(info.contains(state), "step {step}: {info}");
    drop(client);
    stop(&mut vm, SIGTERM, Some(&sock));
    started
}

/// Item 8: InstanceStart with too few file descriptors left, from none to enough: every
/// attempt is answered (4xx with the reason, or 204) and Ember keeps waiting (it exited, the
/// client getting 503, when the descriptors ran out while the vCPUs were being set up).
#[test]
fn test_instance_start_out_of_descriptors_is_answered() {
    let set = |pid: u32, extra: u64| {
        set_nofile(pid, lowest_free_fd(pid) + extra);
    };
    let started = (0..40).any(|extra| start_under_limit("nofile-start", extra, &set));
    assert!(started, "never started, even with 40 descriptors to spare");
}

/// Item 8: InstanceStart with the address space limited, from below the guest's memory to
/// enough: every attempt is answered and Ember keeps waiting (it aborted on a failed
/// allocation, or exited after a failed vCPU thread spawn).
#[test]
fn test_instance_start_out_of_address_space_is_answered() {
    let set = |pid: u32, step: u64| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let size_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmSize");
        set_limit(pid, libc::RLIMIT_AS, (size_kib << 10) + (step << 22));
    };
    let started = (0..64).any(|step| start_under_limit("as-start", step, &set));
    assert!(
        started,
        "never started, even with 256 MiB of address space to spare"
    );
}
