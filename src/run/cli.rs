//! `ember run [OPTIONS] -- CMD [ARGS...]`: the command line of `Run`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use super::{Console, EXIT_FAILED, Run, RunError, SnapshotMode, Stdin, Volume};

const AFTER_HELP: &str = "\
Examples:
  ember run -- uname -a
  echo hello | ember run -- tr a-z A-Z
  ember run --volume .:/src --workdir /src -- sh -c 'make test'
  ember run --timeout 60 --cpus 2 --memory 512 -- ./ci.sh

The first run with a given kernel, initrd and VM shape boots and saves a snapshot of the idle
VM in the cache; later runs restore it. The console goes to a temporary log (kept and named
when the VM fails) unless --console or --console-log.

Exit status: the command's (128+N when signal N killed it); 124 the command ran past
--timeout; 125 ember run failed (bad usage, no KVM, the VM or its agent failed).";

/// Runs a command in a fresh microVM: its stdout and stderr come back separately and its exit
/// status becomes ember's.
#[derive(Parser, Debug)]
#[command(name = "ember run", after_help = AFTER_HELP)]
pub struct RunCli {
    /// Copy a host directory into the guest; a writable one is copied back (new, changed and
    /// deleted files) when the command exits 0. Repeatable. Example: --volume ./src:/src:ro
    #[arg(short = 'v', long, value_name = "HOST_DIR:GUEST_DIR[:ro]", value_parser = Volume::parse)]
    pub volume: Vec<Volume>,

    /// An environment variable of the command. Repeatable. Example: --env RUST_LOG=debug
    #[arg(short = 'e', long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// The command's working directory in the guest [default: /]. Example: --workdir /src
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// vCPUs. Example: --cpus 2
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u8,

    /// Guest memory in MiB (volumes are copied into it). Example: --memory 512
    #[arg(short = 'm', long, value_name = "MIB", default_value_t = super::DEFAULT_MEMORY_MIB)]
    pub memory: u64,

    /// A virtio-net interface on an existing host TAP, as `ember --net` takes it (the guest
    /// sees eth0, ...; configuring it is the command's business). Example: --net tap=tap0
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<String>,

    /// Stop the VM and exit 124 when the command runs longer. Example: --timeout 600
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,

    /// Give up (exit 125) when the guest's agent has not answered this long after the start.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    pub boot_timeout: f64,

    /// Guest kernel [default: guest-images/out/vmlinux, or $EMBER_KERNEL].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initramfs that starts ember-agent on `ember.agent` [default: guest-images/out/
    /// initramfs.cpio, or $EMBER_INITRD].
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// An ext4 image mounted read-only; the command runs chrooted into it (/proc, /sys, /dev
    /// and a tmpfs /tmp mounted there). Such runs always boot.
    #[arg(long, value_name = "IMAGE")]
    pub rootfs: Option<PathBuf>,

    /// Appended to the guest kernel command line.
    #[arg(long, value_name = "TEXT")]
    pub append: Option<String>,

    /// The guest console (and Ember's messages) on stderr.
    #[arg(long, conflicts_with = "console_log")]
    pub console: bool,

    /// Keep the guest console in this file.
    #[arg(long, value_name = "PATH")]
    pub console_log: Option<PathBuf>,

    /// Always boot; neither use nor save a snapshot.
    #[arg(long, conflicts_with = "from_snapshot")]
    pub no_snapshot: bool,

    /// Use this directory for the snapshot (restored when it holds one for these settings,
    /// else made there).
    #[arg(long, value_name = "DIR")]
    pub from_snapshot: Option<PathBuf>,

    /// The snapshot cache [default: ~/.cache/ember/run, or $EMBER_CACHE_DIR/run].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Print how the run went (restored or booted, and when the agent answered, the first
    /// output came and the command ended) on stderr at the end.
    #[arg(long)]
    pub timings: bool,

    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

fn parse_env(spec: &str) -> Result<(String, String), String> {
    spec.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{spec}: expected KEY=VALUE"))
}

fn seconds(flag: &str, value: f64) -> Result<Duration, RunError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| RunError::Usage(format!("{flag} {value}: expected a positive number")))
}

impl RunCli {
    /// The `Run` these flags describe.
    pub fn to_run(&self) -> Result<Run, RunError> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| RunError::Usage("no command to run".into()))?;
        let mut run = Run::new(program)
            .args(args)
            .cpus(self.cpus)
            .memory_mib(self.memory)
            .boot_timeout(seconds("--boot-timeout", self.boot_timeout)?)
            .stdin(Stdin::Inherit);
        for (k, v) in &self.env {
            run = run.env(k, v);
        }
        for v in &self.volume {
            run = run.volume(v.clone());
        }
        for n in &self.net {
            run = run.net(n);
        }
        if let Some(dir) = &self.workdir {
            run = run.workdir(dir);
        }
        if let Some(t) = self.timeout {
            run = run.timeout(seconds("--timeout", t)?);
        }
        if let Some(p) = &self.kernel {
            run = run.kernel(p);
        }
        if let Some(p) = &self.initrd {
            run = run.initrd(p);
        }
        if let Some(p) = &self.rootfs {
            run = run.rootfs(p);
        }
        if let Some(a) = &self.append {
            run = run.append(a);
        }
        if self.console {
            run = run.console(Console::Stderr);
        } else if let Some(p) = &self.console_log {
            run = run.console(Console::Log(p.clone()));
        }
        if self.no_snapshot {
            run = run.snapshot(SnapshotMode::Off);
        } else if let Some(dir) = &self.from_snapshot {
            run = run.snapshot(SnapshotMode::Dir(dir.clone()));
        }
        if let Some(dir) = &self.cache_dir {
            run = run.cache_dir(dir);
        }
        Ok(run)
    }
}

/// `ember run ...`: `args` are the arguments after `run`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match RunCli::try_parse_from(std::iter::once(OsString::from("ember run")).chain(args))
    {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("bad usage");
            eprintln!(
                "ember run: {} (see ember run --help)",
                line.strip_prefix("error: ").unwrap_or(line)
            );
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = cli.to_run().and_then(|run| run.status());
    match result {
        Ok(out) => {
            if cli.timings {
                eprintln!("ember run: {}", out.report);
            }
            ExitCode::from(u8::try_from(out.code).unwrap_or(255))
        }
        Err(e) => {
            eprintln!("ember run: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunCli, clap::Error> {
        RunCli::try_parse_from(std::iter::once("ember run").chain(args.iter().copied()))
    }

    #[test]
    fn test_run_cli_flags_and_trailing_command() {
        let cli = parse(&[
            "-v",
            "/a:/b:ro",
            "-e",
            "K=V=W",
            "-w",
            "/b",
            "--cpus",
            "2",
            "--timeout",
            "1.5",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .expect("parses");
        assert_eq!(cli.command, ["sh", "-c", "exit 3"]);
        assert!(cli.volume[0].read_only);
        assert_eq!(cli.env, [("K".to_string(), "V=W".to_string())]);
        let run = cli.to_run().expect("run");
        assert_eq!(run.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(run.cpus, 2);
        // Without `--`, the command's own flags still belong to it.
        let cli = parse(&["ls", "-la", "/"]).expect("parses");
        assert_eq!(cli.command, ["ls", "-la", "/"]);
    }

    #[test]
    fn test_run_cli_refusals() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["-e", "novalue", "--", "x"]).is_err());
        assert!(parse(&["-v", "/a", "--", "x"]).is_err());
        assert!(parse(&["--no-snapshot", "--from-snapshot", "/d", "--", "x"]).is_err());
        let cli = parse(&["--timeout", "-1", "--", "x"]).expect("parses");
        assert!(cli.to_run().is_err());
    }
}
