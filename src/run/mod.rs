//! `ember run -- CMD [ARGS...]`: runs a command in a fresh microVM and hands back its output and
//! exit status, like `docker run` or `std::process::Command` (docs/run.md).
//!
//! The VM is an `ember` child process: the reference kernel and initramfs (or `--kernel`,
//! `--initrd`), a vsock device, `ember.agent` on the command line so that init starts
//! `ember-agent`, the console in a log file. `Run` waits until the agent answers `PING`, copies
//! the volumes in, has the agent run the command (`EXEC`, a shell script built from the arguments,
//! environment and working directory), streams the command's stdout and stderr as they come,
//! copies writable volumes back when it exited 0, and kills the VM.
//!
//! A booted VM whose agent answers is also saved as a snapshot (`cache`), keyed by kernel,
//! initrd, command line, VM shape and the Ember build, and the next run with the same key
//! restores it (`--restore ...,vsock=PATH`) instead of booting: a restore, not a 20-100 s boot on
//! a software-nested host.

pub mod agent;
pub mod cache;
pub mod cli;
pub mod volume;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::{AgentError, Frame, Session};
use cache::Entry;
pub use volume::Volume;

/// Exit status of `ember run` when the command did not finish within `--timeout`.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status of `ember run` when it failed itself: bad usage, no KVM, the VM failed.
pub const EXIT_FAILED: u8 = 125;

/// The guest context id of `ember run`'s VMs (each has its own vsock device and socket).
const GUEST_CID: u32 = 3;
/// How long one exchange with the agent may stay silent before the VM counts as failed (the
/// command itself runs as long as `timeout` allows).
const AGENT_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The guest kernel command line of a booted run VM (the user's `append` follows):
/// `quiet` because every console byte is a VM exit, `ember.agent` to start the agent.
const RUN_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 quiet rcu_cpu_stall_suppress=1 ember.agent";
/// Where the guest mounts `rootfs` (read-only) and the command runs chrooted.
const GUEST_ROOTFS: &str = "/run/ember-rootfs";

/// What the command reads on stdin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Stdin {
    /// Nothing: stdin is at its end at once.
    #[default]
    Null,
    /// These bytes, then the end.
    Bytes(Vec<u8>),
    /// This process's stdin, unless it is a terminal (then nothing).
    Inherit,
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Console {
    /// A log file in the run's temporary directory, removed unless the VM fails.
    #[default]
    Discard,
    /// This file (kept).
    Log(PathBuf),
    /// This process's stderr, with Ember's own messages.
    Stderr,
}

/// Whether the VM comes from a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SnapshotMode {
    /// From the cache entry for this kernel, initrd and VM shape when there is one; else boot
    /// and save one there.
    #[default]
    Auto,
    /// Always boot; save nothing.
    Off,
    /// Like `Auto` with this directory as the entry (refused when it holds a snapshot made with
    /// other settings).
    Dir(PathBuf),
}

/// Why a run failed before the command's exit status was known.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad input.
    #[error("{0}")]
    Usage(String),
    /// This host cannot run the VM.
    #[error("cannot run a microVM on this host: {0}")]
    Host(String),
    /// The VM or its agent failed.
    #[error("{0}")]
    Vm(String),
    /// The command did not finish in time.
    #[error("the command did not finish within {0:?}; the VM was stopped")]
    Timeout(Duration),
}

impl RunError {
    /// `ember run`'s exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Timeout(_) => EXIT_TIMEOUT,
            _ => EXIT_FAILED,
        }
    }
}

/// How a run went, for people and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The VM was restored from a snapshot (else booted).
    pub restored: bool,
    /// A snapshot was saved by this run.
    pub saved: bool,
    /// From the start of the run to a VM ready for the command: a booted agent's first
    /// answer, or a restored VM's vsock socket.
    pub vm_ready: Duration,
    /// From the start of the run to the command's first output byte.
    pub first_output: Option<Duration>,
    /// From the start of the run to the command's exit status.
    pub finished: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        write!(
            f,
            "{}; VM ready after {}",
            if self.restored {
                "restored from a snapshot"
            } else if self.saved {
                "booted, snapshot saved"
            } else {
                "booted"
            },
            ms(self.vm_ready)
        )?;
        if let Some(first) = self.first_output {
            write!(f, "; first output after {}", ms(first))?;
        }
        write!(f, "; exit status after {}", ms(self.finished))
    }
}

/// What a finished command left: its exit status and, from `Run::output`, its output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The exit code, or 128 + N when signal N killed it.
    pub code: i32,
    /// Its stdout (empty from `Run::status`, which streams it).
    pub stdout: Vec<u8>,
    /// Its stderr (empty from `Run::status`).
    pub stderr: Vec<u8>,
    /// How the run went.
    pub report: Report,
}

impl Output {
    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// A command to run in a fresh microVM, built like `std::process::Command`:
///
/// ```no_run
/// let out = ember::run::Run::new("sh").arg("-c").arg("echo hi; exit 3").output()?;
/// assert_eq!((out.code, out.stdout.as_slice()), (3, &b"hi\n"[..]));
/// # Ok::<(), ember::run::RunError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Run {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    volumes: Vec<Volume>,
    cpus: u8,
    memory_mib: u64,
    nets: Vec<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    append: Option<String>,
    timeout: Option<Duration>,
    boot_timeout: Duration,
    console: Console,
    snapshot: SnapshotMode,
    cache_dir: Option<PathBuf>,
    ember: Option<PathBuf>,
    stdin: Stdin,
}

/// Default guest memory of a run VM, MiB (volumes live in it).
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Default limit on the boot, up to the agent's first answer.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(300);

impl Run {
    /// Runs `program` (looked up in the guest's PATH).
    pub fn new(program: impl AsRef<OsStr>) -> Run {
        Run {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            workdir: None,
            volumes: Vec::new(),
            cpus: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            nets: Vec::new(),
            kernel: None,
            initrd: None,
            rootfs: None,
            append: None,
            timeout: None,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            console: Console::default(),
            snapshot: SnapshotMode::default(),
            cache_dir: None,
            ember: None,
            stdin: Stdin::default(),
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Run {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Run {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable of the command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Run {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The command's working directory in the guest (default `/`).
    pub fn workdir(mut self, dir: impl Into<String>) -> Run {
        self.workdir = Some(dir.into());
        self
    }

    /// Copies a host directory in (and back, when writable and the command exits 0).
    pub fn volume(mut self, volume: Volume) -> Run {
        self.volumes.push(volume);
        self
    }

    /// vCPUs (default 1).
    pub fn cpus(mut self, cpus: u8) -> Run {
        self.cpus = cpus;
        self
    }

    /// Guest memory in MiB (default 256).
    pub fn memory_mib(mut self, mib: u64) -> Run {
        self.memory_mib = mib;
        self
    }

    /// A NIC, as `ember --net` takes it (`tap=NAME[,mac=MAC]`).
    pub fn net(mut self, spec: impl Into<String>) -> Run {
        self.nets.push(spec.into());
        self
    }

    /// The guest kernel (default: the reference `guest-images/out/vmlinux`).
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Run {
        self.kernel = Some(path.into());
        self
    }

    /// The initramfs, which must start `ember-agent` when `ember.agent` is on the command line
    /// (default: the reference `guest-images/out/initramfs.cpio`).
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Run {
        self.initrd = Some(path.into());
        self
    }

    /// An ext4 image mounted read-only in the guest; the command runs chrooted into it. Such a
    /// run always boots (no snapshot).
    pub fn rootfs(mut self, path: impl Into<PathBuf>) -> Run {
        self.rootfs = Some(path.into());
        self
    }

    /// Appended to the guest kernel command line.
    pub fn append(mut self, text: impl Into<String>) -> Run {
        self.append = Some(text.into());
        self
    }

    /// Stops the VM when the command runs longer (`RunError::Timeout`).
    pub fn timeout(mut self, limit: Duration) -> Run {
        self.timeout = Some(limit);
        self
    }

    /// Limit on the boot or restore, up to the agent's first answer (default 300 s).
    pub fn boot_timeout(mut self, limit: Duration) -> Run {
        self.boot_timeout = limit;
        self
    }

    /// Where the serial console goes.
    pub fn console(mut self, console: Console) -> Run {
        self.console = console;
        self
    }

    /// Snapshot use.
    pub fn snapshot(mut self, mode: SnapshotMode) -> Run {
        self.snapshot = mode;
        self
    }

    /// The snapshot cache (default `cache::default_dir()`).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Run {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The `ember` binary that runs the VM (default: this one when it is `ember`, else `ember`
    /// beside the running program or on PATH).
    pub fn ember(mut self, path: impl Into<PathBuf>) -> Run {
        self.ember = Some(path.into());
        self
    }

    /// The command's stdin (default: nothing).
    pub fn stdin(mut self, stdin: Stdin) -> Run {
        self.stdin = stdin;
        self
    }

    /// Runs the command and collects its stdout and stderr.
    pub fn output(&self) -> Result<Output, RunError> {
        let mut sink = Collect::default();
        let mut out = self.execute(&mut sink)?;
        out.stdout = sink.stdout;
        out.stderr = sink.stderr;
        Ok(out)
    }

    /// Runs the command with its stdout and stderr written to this process's as they come.
    pub fn status(&self) -> Result<Output, RunError> {
        self.execute(&mut Passthrough)
    }

    /// The whole run, the command's output going to `sink`.
    fn execute(&self, sink: &mut dyn Sink) -> Result<Output, RunError> {
        let started = Instant::now();
        let plan = self.plan()?;
        let mut vm = VmProcess::start(self, &plan)?;
        let ready = vm.wait_for_agent(started + self.boot_timeout, self.boot_timeout)?;
        let mut report = Report {
            restored: plan.restore,
            vm_ready: ready.duration_since(started),
            ..Report::default()
        };
        if let Some(entry) = plan.save.as_ref() {
            match vm.save_snapshot(entry) {
                Ok(()) => report.saved = true,
                Err(e) => eprintln!("ember run: warning: no snapshot saved: {e}"),
            }
            // Each entry is as big as guest memory: the cache keeps the most recent few.
            if report.saved
                && !matches!(self.snapshot, SnapshotMode::Dir(_))
                && let Some(cache) = entry.dir.parent()
            {
                let _ = cache::prune(cache, cache::KEEP, &entry.dir);
            }
        }
        if self.rootfs.is_some() {
            vm.setup(&rootfs_script(), None, "mounting the root file system")?;
        }
        let root = Path::new(if self.rootfs.is_some() {
            GUEST_ROOTFS
        } else {
            "/"
        });
        for v in &self.volumes {
            let mut tar = v
                .spawn_pack()
                .map_err(|e| RunError::Host(format!("cannot run tar: {e}")))?;
            let what = format!("copying {} in", v.host.display());
            let result = vm.setup(&v.unpack_script(root), tar.stdout.take(), &what);
            let tar_status = wait_tar(&mut tar);
            result?;
            tar_status
                .map_err(|e| RunError::Usage(format!("--volume {}: {e}", v.host.display())))?;
        }

        let mut session = vm.open(|uds| Session::argv(uds, &plan.request, AGENT_IO_TIMEOUT))?;
        let stdin = session.stdin().map_err(|e| vm.failure(e))?;
        let input = self.stdin.clone();
        std::thread::Builder::new()
            .name("ember-run-stdin".into())
            .spawn(move || feed_stdin(stdin, input))
            .map_err(|e| RunError::Host(format!("cannot start a thread: {e}")))?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let code = loop {
            match session.next_frame(deadline) {
                Ok(Frame::Stdout(data)) => {
                    report.first_output.get_or_insert_with(|| started.elapsed());
                    sink.stdout(&data);
                }
                Ok(Frame::Stderr(data)) => {
                    report.first_output.get_or_insert_with(|| started.elapsed());
                    sink.stderr(&data);
                }
                Ok(Frame::Exit(code)) => break code,
                Err(AgentError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(RunError::Timeout(self.timeout.unwrap_or_default()));
                }
                Err(e) => return Err(vm.failure(e)),
            }
        };
        report.finished = started.elapsed();
        if code == 0 {
            for v in self.volumes.iter().filter(|v| !v.read_only) {
                vm.copy_back(v, root)?;
            }
        }
        vm.stop();
        Ok(Output {
            code: i32::try_from(code).unwrap_or(i32::MAX),
            report,
            ..Output::default()
        })
    }

    /// Checks the input and works out the images, the script and the snapshot entry.
    fn plan(&self) -> Result<Plan, RunError> {
        let usage = |m: String| RunError::Usage(m);
        if self.program.is_empty() {
            return Err(usage("no command to run".into()));
        }
        if self.cpus == 0 {
            return Err(usage("--cpus must be at least 1".into()));
        }
        for (key, _) in &self.env {
            let ok = key
                .chars()
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && key.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
            if !ok {
                return Err(usage(format!("--env {key}=...: not a variable name")));
            }
        }
        if let Some(dir) = &self.workdir
            && !dir.starts_with('/')
        {
            return Err(usage(format!("--workdir {dir}: must be absolute")));
        }
        for v in &self.volumes {
            v.check().map_err(usage)?;
        }
        let request = self.request()?;
        let ember = match &self.ember {
            Some(path) => path.clone(),
            None => find_ember().ok_or_else(|| usage("cannot find the ember binary".into()))?,
        };
        let kernel = match &self.kernel {
            Some(path) => path.clone(),
            None => reference_image("vmlinux", "EMBER_KERNEL", &ember)?,
        };
        let initrd = match &self.initrd {
            Some(path) => path.clone(),
            None => reference_image("initramfs.cpio", "EMBER_INITRD", &ember)?,
        };
        for (flag, path) in [("--kernel", &kernel), ("--initrd", &initrd)]
            .into_iter()
            .chain(self.rootfs.as_ref().map(|r| ("--rootfs", r)))
        {
            if !path.is_file() {
                return Err(usage(format!("{flag} {}: no such file", path.display())));
            }
        }
        File::options()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| RunError::Host(format!("/dev/kvm: {e}")))?;

        let mut cmdline = RUN_CMDLINE.to_string();
        if let Some(extra) = &self.append {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        let entry = match (&self.snapshot, &self.rootfs) {
            (SnapshotMode::Off, _) | (_, Some(_)) => None,
            (mode, None) => {
                let key_text = self.key_text(&ember, &kernel, &initrd, &cmdline)?;
                let dir = match mode {
                    SnapshotMode::Dir(dir) => dir.clone(),
                    _ => self
                        .cache_dir
                        .clone()
                        .unwrap_or_else(cache::default_dir)
                        .join(cache::key_name(&key_text)),
                };
                Some(Entry { dir, key_text })
            }
        };
        let restore = match &entry {
            Some(e) => e.is_ready().map_err(usage)?,
            None => false,
        };
        if restore && let Some(e) = &entry {
            e.touch();
        }
        Ok(Plan {
            ember,
            kernel,
            initrd,
            cmdline,
            request,
            restore,
            save: entry.clone().filter(|_| !restore),
            entry,
        })
    }

    /// What a snapshot of this run's VM depends on.
    fn key_text(
        &self,
        ember: &Path,
        kernel: &Path,
        initrd: &Path,
        cmdline: &str,
    ) -> Result<String, RunError> {
        let hash = |p: &Path| {
            cache::hash_file(p).map_err(|e| RunError::Usage(format!("{}: {e}", p.display())))
        };
        let build = std::fs::metadata(ember)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                format!("{} {}.{}", m.len(), m.mtime(), m.mtime_nsec())
            })
            .unwrap_or_default();
        let nets: Vec<String> = self.nets.iter().map(|n| without_tap(n)).collect();
        Ok(format!(
            "ember-run 1\nember {} format {} build {build}\nkernel {:016x}\ninitrd {:016x}\n\
             cmdline {cmdline}\ncpus {} memory {}\nnets {}\n",
            env!("CARGO_PKG_VERSION"),
            crate::snapshot::format::FORMAT_VERSION,
            hash(kernel)?,
            hash(initrd)?,
            self.cpus,
            self.memory_mib,
            nets.join(" ")
        ))
    }

    /// The agent's `ARGV` request for the command: chrooted into the `rootfs` mount when there
    /// is one, in the working directory, with `HOME` and the environment.
    fn request(&self) -> Result<Vec<u8>, RunError> {
        let root = if self.rootfs.is_some() {
            GUEST_ROOTFS
        } else {
            ""
        };
        let mut env = vec![b"HOME=/root".to_vec()];
        env.extend(
            self.env
                .iter()
                .map(|(k, v)| format!("{k}={v}").into_bytes()),
        );
        let words: Vec<&[u8]> = std::iter::once(&self.program)
            .chain(&self.args)
            .map(|w| w.as_bytes())
            .collect();
        let dir = self.workdir.as_deref().unwrap_or("/");
        agent::argv_body(root.as_bytes(), dir.as_bytes(), &env, &words).ok_or_else(|| {
            let size: usize = words.iter().map(|w| w.len() + 1).sum::<usize>()
                + env.iter().map(|e| e.len() + 1).sum::<usize>();
            RunError::Usage(format!(
                "the command is too big for the agent ({} words, {} variables, {size} bytes; \
                 at most {}, {} and {} bytes)",
                words.len(),
                env.len(),
                agent::MAX_ARGS,
                agent::MAX_ENV - 1,
                agent::MAX_SCRIPT
            ))
        })
    }
}

/// A `--net` spec without its `tap=` part (the TAP is not part of a snapshot's key).
fn without_tap(spec: &str) -> String {
    spec.split(',')
        .filter(|p| !p.starts_with("tap="))
        .collect::<Vec<_>>()
        .join(",")
}

/// The TAP of a `--net` spec.
fn tap_of(spec: &str) -> Option<&str> {
    spec.split(',').find_map(|p| p.strip_prefix("tap="))
}

/// The guest script that mounts `--rootfs` (the first disk) for the chroot.
fn rootfs_script() -> Vec<u8> {
    format!(
        "set -e\nr={GUEST_ROOTFS}\nmkdir -p $r\nmount -o ro /dev/vda $r\n\
         [ ! -d $r/proc ] || mount -t proc proc $r/proc\n\
         [ ! -d $r/sys ] || mount -t sysfs sysfs $r/sys\n\
         [ ! -d $r/dev ] || mount -o bind /dev $r/dev\n\
         [ ! -d $r/tmp ] || mount -t tmpfs tmpfs $r/tmp\n"
    )
    .into_bytes()
}

/// What `Run::plan` worked out.
struct Plan {
    ember: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
    /// The `ARGV` request body of the command.
    request: Vec<u8>,
    /// Restore `entry` instead of booting.
    restore: bool,
    /// Save a snapshot into this entry once the agent answers.
    save: Option<Entry>,
    entry: Option<Entry>,
}

/// Where the command's output goes.
trait Sink {
    fn stdout(&mut self, data: &[u8]);
    fn stderr(&mut self, data: &[u8]);
}

#[derive(Default)]
struct Collect {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Sink for Collect {
    fn stdout(&mut self, data: &[u8]) {
        self.stdout.extend_from_slice(data);
    }
    fn stderr(&mut self, data: &[u8]) {
        self.stderr.extend_from_slice(data);
    }
}

/// This process's stdout and stderr, flushed per frame. A closed stdout (a pipe whose reader
/// went away) drops the output; the command still runs to its end.
struct Passthrough;

impl Sink for Passthrough {
    fn stdout(&mut self, data: &[u8]) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(data).and_then(|()| out.flush());
    }
    fn stderr(&mut self, data: &[u8]) {
        let _ = io::stderr().lock().write_all(data);
    }
}

fn feed_stdin(writer: agent::StdinWriter, input: Stdin) {
    // Errors mean the command ended or the VM went away: the reader sees to that.
    let _ = match input {
        Stdin::Null => writer.close(),
        Stdin::Bytes(bytes) => {
            let mut writer = writer;
            writer.write(&bytes).and_then(|()| writer.close())
        }
        Stdin::Inherit if io::stdin().is_terminal() => writer.close(),
        Stdin::Inherit => writer.copy_from(io::stdin().lock()),
    };
}

fn wait_tar(child: &mut Child) -> Result<(), String> {
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("tar failed ({status}): {}", err.trim())),
        Err(e) => Err(format!("tar: {e}")),
    }
}

/// The `ember` binary: this program when it is ember, else `ember` beside it (or one directory
/// up, for test binaries in target/*/deps), else on PATH.
fn find_ember() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if exe.file_name() == Some(OsStr::new("ember")) {
        return Some(exe);
    }
    let beside = exe.parent()?;
    for dir in [Some(beside), beside.parent()].into_iter().flatten() {
        let candidate = dir.join("ember");
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("ember"))
            .find(|p| p.is_file())
    })
}

/// A reference image: `$VAR`, else `guest-images/out/NAME` in the current directory or above
/// the ember binary (target/release/ember in a checkout).
fn reference_image(name: &str, var: &str, ember: &Path) -> Result<PathBuf, RunError> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let mut places = vec![PathBuf::from("guest-images/out")];
    if let Ok(ember) = std::fs::canonicalize(ember) {
        places.extend(
            ember
                .ancestors()
                .skip(1)
                .map(|d| d.join("guest-images/out")),
        );
    }
    places
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            RunError::Usage(format!(
                "no guest {name}: build the reference images (scripts/build-guest-images) or give \
                 --{} PATH (or set {var})",
                if name == "vmlinux" {
                    "kernel"
                } else {
                    "initrd"
                }
            ))
        })
}

/// The `ember` child that runs the VM, and the run's temporary directory.
struct VmProcess {
    child: Child,
    dir: PathBuf,
    uds: PathBuf,
    console: PathBuf,
    api: Option<PathBuf>,
    /// A restore (else a boot).
    restored: bool,
    /// Until when a refused connection is tried again.
    ready_by: Instant,
    keep_dir: bool,
}

impl VmProcess {
    /// Starts the VM: a restore of the plan's entry, or a boot.
    fn start(run: &Run, plan: &Plan) -> Result<VmProcess, RunError> {
        let dir = temp_dir().map_err(|e| RunError::Host(format!("temporary directory: {e}")))?;
        let uds = dir.join("vsock");
        let console = match &run.console {
            Console::Log(path) => path.clone(),
            Console::Discard | Console::Stderr => dir.join("console.log"),
        };
        let serial = match &run.console {
            Console::Stderr => "file:/dev/stderr".to_string(),
            _ => format!("file:{}", console.display()),
        };
        let mut cmd = Command::new(&plan.ember);
        let api = plan.save.as_ref().map(|_| dir.join("api.sock"));
        match (&plan.entry, plan.restore) {
            (Some(entry), true) => {
                let mut spec = format!(
                    "snapshot={},mem={},resume=on,vsock={}",
                    entry.snapshot().display(),
                    entry.memory().display(),
                    uds.display()
                );
                for (i, net) in run.nets.iter().enumerate() {
                    if let Some(tap) = tap_of(net) {
                        spec.push_str(&format!(",net={}:{tap}", net_id(net, i)));
                    }
                }
                cmd.arg("--restore").arg(spec);
            }
            _ => {
                cmd.arg("--kernel")
                    .arg(&plan.kernel)
                    .arg("--initrd")
                    .arg(&plan.initrd)
                    .arg("--cmdline")
                    .arg(&plan.cmdline)
                    .arg("--vcpus")
                    .arg(run.cpus.to_string())
                    .arg("--memory")
                    .arg(run.memory_mib.to_string())
                    .arg("--vsock")
                    .arg(format!("cid={GUEST_CID},uds={}", uds.display()));
                for net in &run.nets {
                    cmd.arg("--net").arg(net);
                }
                if let Some(rootfs) = &run.rootfs {
                    cmd.arg("--disk")
                        .arg(format!("path={},readonly=on,id=rootfs", rootfs.display()));
                }
                if let Some(api) = &api {
                    cmd.arg("--api-sock").arg(api);
                }
            }
        }
        cmd.arg("--serial").arg(serial);
        let log = File::create(dir.join("ember.log"))
            .map_err(|e| RunError::Host(format!("{}: {e}", dir.display())))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        if run.console == Console::Stderr {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(log);
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory: the VM
        // dies with this process (Ctrl-C on `ember run` leaves no VM behind).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| RunError::Host(format!("cannot start {}: {e}", plan.ember.display())))?;
        Ok(VmProcess {
            child,
            dir,
            uds,
            console,
            api,
            restored: plan.restore,
            ready_by: Instant::now(),
            keep_dir: false,
        })
    }

    /// Waits until a booted VM's agent answers `PING`, or a restored VM's vsock socket is there
    /// (its agent was listening when the snapshot was taken, and Ember holds connections until
    /// the guest has taken in the transport reset); returns when.
    fn wait_for_agent(&mut self, deadline: Instant, limit: Duration) -> Result<Instant, RunError> {
        self.ready_by = deadline;
        // A booting agent takes a minute or more on software-nested hosts, and each refused
        // attempt costs the guest some work.
        let longest = Duration::from_millis(if self.restored { 2 } else { 200 });
        let mut pause = Duration::from_millis(1);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.died(status));
            }
            if self.uds.exists()
                && (self.restored || agent::ping(&self.uds, Duration::from_secs(10)).is_ok())
            {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                self.keep_dir = true;
                return Err(RunError::Vm(format!(
                    "the guest's agent did not answer within {limit:?} (console: {})",
                    self.console.display()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(longest);
        }
    }

    /// Pauses the VM, writes a full snapshot into `entry`, resumes it.
    fn save_snapshot(&mut self, entry: &Entry) -> Result<(), String> {
        let api = self.api.clone().ok_or("no API socket")?;
        let staging = entry
            .staging()
            .map_err(|e| format!("{}: {e}", entry.dir.display()))?;
        let body = format!(
            r#"{{"snapshot_type": "Full", "snapshot_path": {}, "mem_file_path": {}}}"#,
            serde_json::Value::from(staging.join("vm.snap").to_string_lossy()),
            serde_json::Value::from(staging.join("vm.mem").to_string_lossy()),
        );
        let made = api_call(&api, "PATCH", "/vm", r#"{"state": "Paused"}"#)
            .and_then(|()| api_call(&api, "PUT", "/snapshot/create", &body));
        let resumed = api_call(&api, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
        let result = made.and(resumed).and_then(|()| {
            entry
                .commit(&staging)
                .map_err(|e| format!("{}: {e}", entry.dir.display()))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    /// Starts `script`, the agent's IO bounded by `AGENT_IO_TIMEOUT`.
    fn session(&mut self, script: &[u8]) -> Result<Session, RunError> {
        self.open(|uds| Session::exec(uds, script, AGENT_IO_TIMEOUT))
    }

    /// Starts a session with `start`; a restored VM's first connection is tried again while it
    /// is refused (the guest may still be taking in its transport reset), up to `ready_by`.
    fn open(
        &mut self,
        start: impl Fn(&Path) -> Result<Session, AgentError>,
    ) -> Result<Session, RunError> {
        loop {
            match start(&self.uds) {
                Ok(session) => return Ok(session),
                Err(AgentError::Refused(_)) if self.restored && Instant::now() < self.ready_by => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(self.died(status));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(self.failure(e)),
            }
        }
    }

    /// Runs a set-up script with `input` (or nothing) on its stdin; it must exit 0.
    fn setup(
        &mut self,
        script: &[u8],
        input: Option<std::process::ChildStdout>,
        what: &str,
    ) -> Result<(), RunError> {
        let mut session = self.session(script)?;
        let stdin = session.stdin().map_err(|e| self.failure(e))?;
        let feeder = std::thread::spawn(move || match input {
            Some(input) => stdin.copy_from(input),
            None => stdin.close(),
        });
        let (code, errors) = self.drain(&mut session, |_| {})?;
        let _ = feeder.join();
        if code != 0 {
            return Err(RunError::Vm(format!(
                "{what} failed in the guest (status {code}): {errors}"
            )));
        }
        Ok(())
    }

    /// Reads a helper session to its exit status: stdout to `out`, stderr kept; returns the
    /// status and the stderr text.
    fn drain(
        &mut self,
        session: &mut Session,
        mut out: impl FnMut(&[u8]),
    ) -> Result<(u32, String), RunError> {
        let mut errors = Vec::new();
        loop {
            match session.next_frame(Some(Instant::now() + AGENT_IO_TIMEOUT)) {
                Ok(Frame::Stdout(data)) => out(&data),
                Ok(Frame::Stderr(data)) => errors.extend_from_slice(&data),
                Ok(Frame::Exit(code)) => {
                    return Ok((code, String::from_utf8_lossy(&errors).trim().to_string()));
                }
                Err(e) => return Err(self.failure(e)),
            }
        }
    }

    /// Copies a writable volume back from the guest.
    fn copy_back(&mut self, v: &Volume, root: &Path) -> Result<(), RunError> {
        let failed = |e: String| RunError::Vm(format!("copying {} back: {e}", v.host.display()));
        let staging = v.staging().map_err(|e| failed(e.to_string()))?;
        let result = (|| {
            let mut tar = Volume::spawn_unpack(&staging).map_err(|e| failed(e.to_string()))?;
            let mut session = self.session(&v.pack_script(root))?;
            session
                .stdin()
                .and_then(|s| s.close().map_err(AgentError::Io))
                .map_err(|e| self.failure(e))?;
            let mut into = tar.stdin.take();
            let (code, errors) = self.drain(&mut session, |data| {
                // A host tar that stopped reading: its exit status says why.
                if let Some(pipe) = into.as_mut()
                    && pipe.write_all(data).is_err()
                {
                    into = None;
                }
            })?;
            drop(into);
            let unpacked = wait_tar(&mut tar);
            if code != 0 {
                return Err(failed(format!("tar in the guest exited {code}: {errors}")));
            }
            unpacked.map_err(failed)?;
            volume::mirror(&staging, &v.host).map_err(|e| failed(e.to_string()))
        })();
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    /// The error for a failed exchange with the agent: the VM's own exit when it died.
    fn failure(&mut self, e: AgentError) -> RunError {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(status)) = self.child.try_wait() {
            return self.died(status);
        }
        self.keep_dir = true;
        RunError::Vm(format!("{e} (console: {})", self.console.display()))
    }

    /// The error for a VM that exited: with the guest kernel's panic line when it panicked (its
    /// userspace could not start), else with Ember's last log line.
    fn died(&mut self, status: std::process::ExitStatus) -> RunError {
        self.keep_dir = true;
        let log = std::fs::read_to_string(self.dir.join("ember.log")).unwrap_or_default();
        let console = std::fs::read(&self.console).unwrap_or_default();
        let reason = match panic_line(&String::from_utf8_lossy(&console)) {
            Some(panic) => format!(": the guest's userspace did not start: {panic}"),
            None => log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!(": {}", l.trim()))
                .unwrap_or_default(),
        };
        RunError::Vm(format!(
            "the VM stopped ({status}){reason} (console: {})",
            self.console.display()
        ))
    }

    /// Stops the VM (it is thrown away: no clean shutdown needed).
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        self.stop();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The guest kernel's panic message in a console log, without the timestamp.
fn panic_line(console: &str) -> Option<&str> {
    console.lines().find_map(|l| {
        l.find("Kernel panic - not syncing")
            .map(|at| l[at..].trim_end())
    })
}

/// A NIC's id as ember names it: `id=` in the spec, else eth0, eth1, ... in order.
fn net_id(spec: &str, index: usize) -> String {
    spec.split(',')
        .find_map(|p| p.strip_prefix("id="))
        .map(str::to_string)
        .unwrap_or_else(|| format!("eth{index}"))
}

/// A new private directory for one run (short: the vsock socket path must fit 96 bytes).
fn temp_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "ember-run-{}-{:x}",
            std::process::id(),
            nanos ^ attempt
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free name"))
}

/// One request to Ember's API socket; Ok for a 2xx answer.
fn api_call(sock: &Path, method: &str, path: &str, body: &str) -> Result<(), String> {
    use std::os::unix::net::UnixStream;
    let fail = |e: io::Error| format!("{method} {path}: {e}");
    let mut stream = UnixStream::connect(sock).map_err(fail)?;
    stream
        .set_read_timeout(Some(AGENT_IO_TIMEOUT))
        .map_err(fail)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(fail)?;
    // The head (httparse), then as much body as its Content-Length says.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).map_err(fail)?;
        if n == 0 {
            return Err(format!("{method} {path}: the answer ended early"));
        }
        answer.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&answer) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(format!("{method} {path}: bad answer: {e}")),
        };
        let body_len = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        if answer.len() < head_len + body_len {
            continue;
        }
        let status = response.code.unwrap_or(0);
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = String::from_utf8_lossy(&answer[head_len..head_len + body_len]);
        return Err(format!("{method} {path}: {status} {}", body.trim()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_carries_words_env_workdir_and_root() {
        let run = Run::new("sh")
            .args(["-c", "echo 'x'", ""])
            .env("A", "b c")
            .workdir("/work");
        assert_eq!(
            run.request().expect("request"),
            b"\0/work\0HOME=/root\0A=b c\0\0sh\0-c\0echo 'x'\0\0"
        );
        let run = Run::new("ls").rootfs("/img.ext4");
        assert_eq!(
            run.request().expect("request"),
            b"/run/ember-rootfs\0/\0HOME=/root\0\0ls\0"
        );
    }

    #[test]
    fn test_plan_refuses_bad_input() {
        let err = |run: Run| match run.plan() {
            Err(RunError::Usage(m)) => m,
            other => panic!("{:?}", other.map(|p| p.cmdline)),
        };
        assert!(err(Run::new("")).contains("no command"));
        assert!(err(Run::new("x").env("1A", "b")).contains("not a variable"));
        assert!(err(Run::new("x").workdir("rel")).contains("absolute"));
        assert!(err(Run::new("x").cpus(0)).contains("--cpus"));
        let missing = Volume::parse("/nonexistent-ember:/w").expect("parse");
        assert!(err(Run::new("x").volume(missing)).contains("/nonexistent-ember"));
        assert!(err(Run::new("x").arg("y".repeat(70000))).contains("too big"));
        assert!(err(Run::new("x").args(vec!["y"; 300])).contains("too big"));
        let err = err(Run::new("x").ember("/bin/true").kernel("/nonexistent-k"));
        assert!(
            err.contains("--kernel /nonexistent-k: no such file"),
            "{err}"
        );
    }

    #[test]
    fn test_panic_line_from_a_console_log() {
        let log = "[    1.0] Run /init as init process\r\n[    1.2] Kernel panic - not syncing: \
                   Attempted to kill init! exitcode=0x0000000b\r\n[    1.3] CPU: 0 PID: 1\n";
        assert_eq!(
            panic_line(log),
            Some("Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b")
        );
        assert_eq!(panic_line("[ 0.1] all fine\n"), None);
    }

    #[test]
    fn test_net_spec_helpers() {
        assert_eq!(
            without_tap("tap=t0,mac=02:00:00:00:00:01"),
            "mac=02:00:00:00:00:01"
        );
        assert_eq!(tap_of("mac=x,tap=t1"), Some("t1"));
        assert_eq!(net_id("tap=t1", 2), "eth2");
        assert_eq!(net_id("tap=t1,id=lan", 0), "lan");
    }

    #[test]
    fn test_exit_codes_and_report_line() {
        assert_eq!(RunError::Timeout(Duration::from_secs(1)).exit_code(), 124);
        assert_eq!(RunError::Vm("x".into()).exit_code(), 125);
        assert_eq!(RunError::Usage("x".into()).exit_code(), 125);
        let report = Report {
            restored: true,
            vm_ready: Duration::from_millis(12),
            first_output: Some(Duration::from_millis(340)),
            finished: Duration::from_millis(400),
            ..Report::default()
        };
        assert_eq!(
            report.to_string(),
            "restored from a snapshot; VM ready after 12 ms; first output after 340 ms; exit status after 400 ms"
        );
    }
}
