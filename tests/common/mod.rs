//! The `TestVm` fixture: builds the test guests once, starts the real `ember` binary, captures
//! its serial output and log, feeds serial input, and waits for lines and the exit status.
#![allow(dead_code)]

pub mod api;
pub mod dhcp;
pub mod netns;
pub mod snapshot;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default time-out for test-guest events: generous, the guests finish in milliseconds.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `ember` binary under test.
pub fn ember_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ember"))
}

/// A scratch directory for this test binary.
pub fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scratch");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Whether this run must have everything the suite needs: `EMBER_REQUIRE_ALL` (set by
/// scripts/test) or its older, narrower name `EMBER_REQUIRE_LINUX`. Then a missing
/// prerequisite (built images, root, /dev/net/tun, a program) fails the test instead of
/// skipping it.
pub fn environment_required() -> bool {
    std::env::var_os("EMBER_REQUIRE_ALL").is_some()
        || std::env::var_os("EMBER_REQUIRE_LINUX").is_some()
}

/// Says that the current test does not run here and why, as `SKIP <test>: <reason>` on the real
/// standard error: the harness does not capture it, so a plain `cargo test` shows the line next
/// to the test's `ok` (a skipped test is never a silent pass).
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// A prerequisite the environment should provide is missing: fails the test when the
/// environment is required (`environment_required`), else skips it with the reason.
pub fn skip_unless_required(reason: &str) {
    assert!(
        !environment_required(),
        "{reason} (EMBER_REQUIRE_ALL is set: scripts/test runs every test)"
    );
    skip(reason);
}

/// The Debian package a program the tests run comes from (scripts/check-programs has the
/// list the suite checks before any test runs).
fn debian_package(program: &str) -> &'static str {
    match program {
        "ip" => "iproute2",
        "ping" => "iputils-ping",
        "make" => "make",
        "cpio" => "cpio",
        "sha256sum" => "coreutils",
        "dumpe2fs" | "debugfs" | "mkfs.ext4" => "e2fsprogs",
        "qemu-system-x86_64" => "qemu-system-x86",
        _ => "the package that provides it",
    }
}

/// Why `program` could not be started, as a test failure should say it.
fn spawn_failure(program: &std::ffi::OsStr, err: &std::io::Error) -> String {
    let program = Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy();
    format!(
        "failed to run {program}: {err} (install {})",
        debian_package(&program)
    )
}

/// Starts `cmd`; a program that cannot be started fails the test as exactly that ("failed to
/// run ping: No such file or directory (install iputils-ping)"), never as a failure of the
/// thing under test.
pub fn spawn(cmd: &mut Command) -> Child {
    cmd.spawn()
        .unwrap_or_else(|e| panic!("{}", spawn_failure(cmd.get_program(), &e)))
}

/// Runs `cmd` to completion and returns its output; a failed start is reported as by `spawn`.
pub fn output_of(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{}", spawn_failure(cmd.get_program(), &e)))
}

/// Fails the test, as `spawn` would, unless `program` is on PATH: for programs started
/// through another one (`ip netns exec NS ping ...`), whose failure to start would otherwise
/// look like the program failing.
pub fn require_program(program: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join(program).is_file());
    if !found {
        let err = std::io::Error::from_raw_os_error(libc::ENOENT);
        panic!("{}", spawn_failure(program.as_ref(), &err));
    }
}

/// Whether `qemu-system-x86_64` runs here (the peer VMM); when not, the caller returns after a
/// SKIP line, or the test fails where the environment is required.
pub fn qemu_available() -> bool {
    let found = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip_unless_required("qemu-system-x86_64 not installed (Debian package qemu-system-x86)");
    }
    found
}

/// Builds the test guests (once per test binary, serialised across binaries with a lock file)
/// and returns the path of guest `name`.
pub fn test_guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let out = BUILT.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-guests");
        std::fs::create_dir_all(&out).expect("create test-guest dir");
        let lock = std::fs::File::create(out.join(".lock")).expect("lock file");
        lock.lock().expect("lock test-guest build");
        let status = spawn(
            Command::new("make")
                .arg("-s")
                .arg("-C")
                .arg(repo_root().join("guest-images/test-guests"))
                .arg(format!("OUT={}", out.display())),
        )
        .wait()
        .expect("wait for make");
        assert!(status.success(), "building the test guests failed");
        out
    });
    let path = out.join(name);
    assert!(path.exists(), "test guest {name} was not built");
    path
}

/// Arguments for one `ember` run.
#[derive(Clone, Debug, Default)]
pub struct VmArgs {
    args: Vec<String>,
    netns: Option<String>,
}

impl VmArgs {
    /// Boots test guest `name`.
    pub fn guest(name: &str) -> Self {
        VmArgs::kernel(&test_guest(name))
    }

    /// Boots test guest `name` that drives a virtio device (`blk`, `net`, `exits`): these
    /// guests find their device on the command line, so it is announced there
    /// (`--virtio-discovery cmdline`; by default Ember announces devices in the DSDT).
    pub fn device_guest(name: &str) -> Self {
        VmArgs::guest(name).arg("--virtio-discovery", "cmdline")
    }

    /// Boots the kernel at `path`.
    pub fn kernel(path: &Path) -> Self {
        VmArgs {
            args: vec!["--kernel".into(), path.display().to_string()],
            netns: None,
        }
    }

    /// Restores a snapshot: `--restore SPEC` (`snapshot=PATH,mem=PATH[,resume=on]`).
    pub fn restore(spec: &str) -> Self {
        VmArgs {
            args: vec!["--restore".into(), spec.to_string()],
            netns: None,
        }
    }

    /// Adds a flag without a value.
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.to_string());
        self
    }

    /// Adds `--flag value`.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }

    /// Runs `ember` inside network namespace `name` (`ip netns exec`, same process id).
    pub fn in_netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    /// The argument list.
    pub fn to_vec(&self) -> Vec<String> {
        self.args.clone()
    }
}

/// A running `ember` process with its console.
pub struct TestVm {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    console: Arc<Mutex<Vec<String>>>,
    log: Arc<Mutex<String>>,
}

impl TestVm {
    /// Starts `ember` with `args` and `--serial stdio`; the log level is info unless `args`
    /// set one.
    pub fn start(args: VmArgs) -> Self {
        let mut cmd = match &args.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(ember_bin());
                cmd
            }
            None => Command::new(ember_bin()),
        };
        let args = args.to_vec();
        cmd.args(&args);
        if !args.iter().any(|a| a == "--log-level") {
            cmd.args(["--log-level", "info"]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd);
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = channel();
        let console = Arc::new(Mutex::new(Vec::new()));
        let console_writer = console.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                console_writer
                    .lock()
                    .expect("console lock")
                    .push(text.clone());
                if tx.send(text).is_err() {
                    // Keep draining so the guest never blocks on a full pipe.
                    continue;
                }
            }
        });
        let log = Arc::new(Mutex::new(String::new()));
        let log_writer = log.clone();
        std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log_writer
                    .lock()
                    .expect("log lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        TestVm {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            console,
            log,
        }
    }

    /// Waits for a console line containing `needle`; panics with the console so far on time-out.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no console line containing {needle:?} within {timeout:?}\n{}",
                        self.describe()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "ember closed its console before printing {needle:?}\n{}",
                        self.describe()
                    )
                }
            }
        }
    }

    /// Writes `bytes` to the guest's serial input.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).expect("write serial input");
        stdin.flush().expect("flush serial input");
    }

    /// Sends a signal to the `ember` process.
    pub fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill -{sig}: {}", std::io::Error::last_os_error());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for `ember` to exit; kills it and panics on time-out.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.stdin.take();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Give the reader threads a moment to drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("ember did not exit within {timeout:?}\n{}", self.describe());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit and returns the exit code (panics if killed by a signal).
    pub fn exit_code(&mut self, timeout: Duration) -> i32 {
        let status = self.wait_exit(timeout);
        status
            .code()
            .unwrap_or_else(|| panic!("ember died by a signal: {status:?}\n{}", self.describe()))
    }

    /// Every console line so far.
    pub fn console(&self) -> Vec<String> {
        self.console.lock().expect("console lock").clone()
    }

    /// Console lines starting with `prefix`.
    pub fn lines_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.console()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// Ember's log (stderr) so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// What a failing test shows: the last lines of the console and of Ember's log (where a
    /// guest panic or a VMM error shows up, and short enough to survive CI's truncation), and
    /// the path of a file with both whole.
    fn describe(&self) -> String {
        const CONSOLE_TAIL: usize = 60;
        const LOG_TAIL: usize = 25;
        let console = self.console();
        let log = self.log();
        let whole = format!(
            "--- console ---\n{}\n--- ember log ---\n{log}",
            console.join("\n")
        );
        let path = scratch_dir().join(format!("failure-{}.log", self.child.id()));
        let saved = match std::fs::write(&path, &whole) {
            Ok(()) => format!("whole console and log: {}", path.display()),
            Err(e) => format!("(could not save the whole console and log: {e})"),
        };
        let tail = |lines: Vec<&str>, n: usize| lines[lines.len().saturating_sub(n)..].join("\n");
        format!(
            "{saved}\n--- console (last {CONSOLE_TAIL} of {} lines) ---\n{}\n--- ember log (last {LOG_TAIL} lines) ---\n{}",
            console.len(),
            tail(console.iter().map(String::as_str).collect(), CONSOLE_TAIL),
            tail(log.lines().collect(), LOG_TAIL)
        )
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `ember` to completion with `args` (no console), returning (exit code, stderr).
pub fn run_ember(args: &[&str], timeout: Duration) -> (i32, String) {
    let mut child = spawn(
        Command::new(ember_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ember {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let code = status
        .code()
        .expect("ember exited normally, not by a signal");
    (code, stderr)
}

/// Time-out for Linux boots: generous, since guest kernel code is emulated on software-nested
/// hosts (~30-90 s to init for one guest, double when two boot at once).
pub const LINUX_TIMEOUT: Duration = Duration::from_secs(600);

/// A reference guest image from `guest-images/out`. When it is missing the test skips with a
/// SKIP line, or fails when the environment is required (scripts/test).
pub fn linux_image(name: &str) -> Option<PathBuf> {
    let path = repo_root().join("guest-images/out").join(name);
    if path.exists() {
        return Some(path);
    }
    skip_unless_required(&format!(
        "{} not built (run scripts/build-guest-images)",
        path.display()
    ));
    None
}

/// FNV-1a 64 of `bytes`, as the bootinfo guest computes it.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
