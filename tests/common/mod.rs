//! The `TestVm` fixture: builds the test guests once, starts the real `ember` binary, captures
//! its serial output and log, feeds serial input, and waits for lines and the exit status.
#![allow(dead_code)]

pub mod dhcp;
pub mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
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

/// Builds the test guests (once per test binary, serialised across binaries with a lock file)
/// and returns the path of guest `name`.
pub fn test_guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let out = BUILT.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-guests");
        std::fs::create_dir_all(&out).expect("create test-guest dir");
        let lock = std::fs::File::create(out.join(".lock")).expect("lock file");
        lock.lock().expect("lock test-guest build");
        let status = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(repo_root().join("guest-images/test-guests"))
            .arg(format!("OUT={}", out.display()))
            .status()
            .expect("run make for the test guests");
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
    /// Starts `ember` with `args` and `--serial stdio`; the log level is info.
    pub fn start(args: VmArgs) -> Self {
        let mut cmd = match &args.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(ember_bin());
                cmd
            }
            None => Command::new(ember_bin()),
        };
        cmd.args(args.to_vec())
            .args(["--log-level", "info"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ember");
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
        let rc = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(rc.success(), "kill -{sig} failed");
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

    fn describe(&self) -> String {
        format!(
            "--- console ---\n{}\n--- ember log ---\n{}",
            self.console().join("\n"),
            self.log()
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
    let mut child = Command::new(ember_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
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
/// message, or fails when `EMBER_REQUIRE_LINUX` is set (scripts/test sets it).
pub fn linux_image(name: &str) -> Option<PathBuf> {
    let path = repo_root().join("guest-images/out").join(name);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("EMBER_REQUIRE_LINUX").is_some() {
        panic!("{} missing: run scripts/build-guest-images", path.display());
    }
    eprintln!(
        "SKIP: {} not built (run scripts/build-guest-images)",
        path.display()
    );
    None
}

/// FNV-1a 64 of `bytes`, as the bootinfo guest computes it.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
