//! The command line (clap), turned into a `VmConfig`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use super::ConfigError;
use super::boot::DEFAULT_CMDLINE;
use super::fc_flags::FirecrackerFlags;
use super::logger::LoggerBody;
use super::machine::{DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use super::{
    BootConfig, DriveConfig, EntropyConfig, MachineConfig, NetConfig, SerialConfig,
    VirtioDiscovery, VmConfig, VmConfigDraft, VsockConfig,
};
use crate::arch::kernel::ProtocolChoice;
use crate::host::CompatMode;
use crate::logger::LoggerSettings;
use crate::snapshot::params::{RestoreSpec, parse_restore_arg};

const AFTER_HELP: &str = "\
Examples:
  ember --kernel vmlinux --initrd initramfs.cpio
  ember --kernel bzImage --vcpus 2 --memory 512 --cmdline 'console=ttyS0 reboot=k panic=1 quiet'
  ember --kernel vmlinux --serial file:/tmp/console.log --log-level debug
  ember --config-file vm.json --events /tmp/ember-events.jsonl
  ember --api-sock /tmp/ember.sock     (then configure and start it over HTTP)

Console: with --serial stdio on a terminal, the terminal is in raw mode while the guest runs;
press Ctrl-A x to stop the VM, Ctrl-A Ctrl-A to send Ctrl-A.

Exit status:
  0    the guest shut down: reboot/reset (i8042 reboot=k, ACPI reset) or power-off (ACPI S5)
  1    VMM error (KVM unavailable, kernel could not be loaded, I/O failure)
  2    bad usage: invalid flag or configuration value
  3    the guest crashed: triple fault, KVM internal (emulation) error, failed VM entry
  130  stopped by SIGINT or Ctrl-A x;  143  stopped by SIGTERM";

/// Log verbosity. In JSON and on the command line: Firecracker's names (`"Off"`, `"Error"`,
/// `"Warning"`, `"Info"`, `"Debug"`, `"Trace"`) or the lower-case ones.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogLevel {
    /// Nothing.
    #[serde(alias = "off")]
    Off,
    /// Only errors.
    #[serde(alias = "error")]
    Error,
    /// Errors and warnings (default).
    #[serde(rename = "Warning", alias = "warning", alias = "warn", alias = "Warn")]
    #[value(alias = "warning")]
    Warn,
    /// Rare state changes too.
    #[serde(alias = "info")]
    Info,
    /// Everything useful for debugging.
    #[serde(alias = "debug")]
    Debug,
    /// Everything.
    #[serde(alias = "trace")]
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Off => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

impl From<log::LevelFilter> for LogLevel {
    fn from(level: log::LevelFilter) -> Self {
        match level {
            log::LevelFilter::Off => LogLevel::Off,
            log::LevelFilter::Error => LogLevel::Error,
            log::LevelFilter::Warn => LogLevel::Warn,
            log::LevelFilter::Info => LogLevel::Info,
            log::LevelFilter::Debug => LogLevel::Debug,
            log::LevelFilter::Trace => LogLevel::Trace,
        }
    }
}

/// Entry protocol as a flag value.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BootProtocolArg {
    /// PVH when the ELF kernel has the PVH note, else the 64-bit Linux entry.
    Auto,
    /// PVH only.
    Pvh,
    /// 64-bit Linux boot protocol, even when a PVH note exists.
    Linux,
}

/// Software-nested compatibility as a flag value.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum CompatArg {
    /// Detect software-nested KVM (kvm_pvm loaded, no vmx/svm).
    Auto,
    /// Always apply the workarounds.
    On,
    /// Never apply them.
    Off,
    /// Apply them without the SYSCALL repair (diagnosis).
    NoSyscallRepair,
}

/// Ember: a KVM microVM monitor. Boots a Linux kernel (ELF vmlinux or bzImage) with its console
/// on your terminal.
#[derive(Parser, Debug)]
#[command(name = "ember", about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a bzImage. Required
    /// unless --config-file or --api-sock is given. Example: --kernel guest-images/out/vmlinux
    #[arg(long, value_name = "PATH", required_unless_present_any = ["config_file", "api_sock", "version",
          "snapshot_version", "describe_snapshot", "seccomp_filter", "restore"])]
    pub kernel: Option<PathBuf>,

    /// Initrd or initramfs, loaded at the top of low guest memory.
    /// Example: --initrd guest-images/out/initramfs.cpio
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line. On software-nested hosts Ember appends its compatibility switches.
    /// Example: --cmdline 'console=ttyS0 reboot=k panic=1 quiet'
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE, requires = "kernel")]
    pub cmdline: String,

    /// Guest memory in MiB. Above 3072 the RAM is split around the 32-bit MMIO gap.
    /// Example: --memory 512
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB)]
    pub memory: u64,

    /// Number of vCPUs, each run by its own thread (ember_vcpuN). Example: --vcpus 2
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VCPUS)]
    pub vcpus: u8,

    /// Serial console: stdio, file:PATH (output only) or none. Example: --serial file:/tmp/con.log
    #[arg(long, value_name = "stdio|file:PATH|none", default_value = "stdio")]
    pub serial: SerialConfig,

    /// A virtio-blk disk backed by a file (repeatable; vda, vdb, ... in order). root=on makes it
    /// the root device. Example: --disk path=rootfs.ext4,root=on --disk path=data.img,readonly=on
    #[arg(long, value_name = "path=FILE[,readonly=on][,id=NAME][,root=on]")]
    pub disk: Vec<DriveConfig>,

    /// A virtio-net interface on an existing host TAP device (repeatable; eth0, eth1, ...).
    /// Example: --net tap=tap0,mac=02:00:00:00:00:01
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,id=NAME]")]
    pub net: Vec<NetConfig>,

    /// A virtio-rng entropy device fed from the host's getrandom(2). Example: --rng
    #[arg(long)]
    pub rng: bool,

    /// A virtio-vsock device with Firecracker's hybrid Unix-socket host side (docs/vsock.md):
    /// the guest's context id and the socket Ember listens on for host-initiated connections;
    /// guest-initiated ones go to PATH_<port>. Example: --vsock cid=3,uds=/tmp/ember.vsock
    #[arg(long, value_name = "cid=N,uds=PATH")]
    pub vsock: Option<VsockConfig>,

    /// Run without seccomp filters. For debugging only: it removes the system-call allowlists
    /// that contain a compromised VMM thread (see docs/security.md). Example: --no-seccomp
    #[arg(long)]
    pub no_seccomp: bool,

    /// Log level of Ember's own messages [default: warn]; --level is Firecracker's name for it
    /// and takes its level names too (Warning, Info, ...). Overrides the config file's logger
    /// level. Example: --log-level info
    #[arg(
        long,
        visible_alias = "level",
        value_name = "LEVEL",
        value_enum,
        ignore_case = true
    )]
    pub log_level: Option<LogLevel>,

    /// Kernel entry protocol. Example: --boot-protocol linux
    #[arg(long, value_name = "PROTOCOL", value_enum, default_value_t = BootProtocolArg::Auto,
          requires = "kernel")]
    pub boot_protocol: BootProtocolArg,

    /// Workarounds for software-nested KVM (see docs/usage.md): auto-detected by default.
    /// Example: --pvm-compat off
    #[arg(long, value_name = "MODE", value_enum, default_value_t = CompatArg::Auto)]
    pub pvm_compat: CompatArg,

    /// Read the whole VM configuration from a JSON file (Firecracker's resource names; see
    /// docs/usage.md). Cannot be combined with the flags that describe the VM.
    /// Example: --config-file vm.json
    #[arg(long, value_name = "FILE", conflicts_with_all = VM_FLAGS)]
    pub config_file: Option<PathBuf>,

    /// Serve Ember's HTTP API (Firecracker-compatible, docs/api.yaml) on this Unix socket. It
    /// must not exist yet; it is removed when Ember exits. Without --kernel or --config-file,
    /// Ember waits for the configuration and InstanceStart there. Example: --api-sock /tmp/ember.sock
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,

    /// Append one JSON line per lifecycle change (started, paused, resumed, reset, powered_off,
    /// crashed, stopped) to this file or FIFO. Example: --events /tmp/ember-events.jsonl
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,

    /// Where the guest learns about its virtio devices: the kernel command line
    /// (virtio_mmio.device=, kernels without ACPI), the ACPI DSDT (stock distribution kernels),
    /// or both. auto: the DSDT, or the command line when it has acpi=off; each device once.
    /// Example: --virtio-discovery cmdline
    #[arg(long, value_name = "MODE", value_enum, default_value_t = VirtioDiscovery::Auto)]
    pub virtio_discovery: VirtioDiscovery,

    /// Run the microVM of a snapshot (made with PUT /snapshot/create) instead of booting one:
    /// its state file, its memory file (mapped copy-on-write, never changed), resume=on to run
    /// at once (else it waits paused for PATCH /vm), net=ID:TAP to give an interface another
    /// TAP, disk=ID:PATH to give a disk another image (a clone's copy), vsock=PATH to give the
    /// vsock device another host socket. Example: --restore snapshot=vm.snap,mem=vm.mem,resume=on
    #[arg(long, value_name = "snapshot=PATH,mem=PATH[,resume=on][,net=ID:TAP][,disk=ID:PATH][,vsock=PATH]",
          value_parser = parse_restore_arg,
          conflicts_with_all = ["kernel", "config_file", "memory", "vcpus", "disk", "net"])]
    pub restore: Option<RestoreSpec>,

    /// Firecracker's flags (fc_flags.rs).
    #[command(flatten)]
    pub fc: FirecrackerFlags,
}

/// Flags that describe the VM, and so conflict with --config-file.
const VM_FLAGS: [&str; 12] = [
    "kernel",
    "initrd",
    "cmdline",
    "memory",
    "vcpus",
    "serial",
    "disk",
    "net",
    "rng",
    "vsock",
    "boot_protocol",
    "pvm_compat",
];

impl Cli {
    /// The logger settings: the config file's `logger`, then the flags (which win).
    pub fn logger_settings(&self, file: Option<&LoggerBody>) -> LoggerSettings {
        let mut settings = file.map(LoggerBody::settings).unwrap_or_default();
        settings.level = self.log_level.map(Into::into).or(settings.level);
        if let Some(path) = &self.fc.log_path {
            settings.log_path = Some(path.clone());
        }
        if self.fc.show_level {
            settings.show_level = Some(true);
        }
        if self.fc.show_log_origin {
            settings.show_log_origin = Some(true);
        }
        if let Some(module) = &self.fc.module {
            settings.module = Some(module.clone());
        }
        settings
    }

    /// The `VmConfig` these flags describe (not yet validated against the host).
    pub fn to_config(&self) -> Result<VmConfig, ConfigError> {
        self.to_draft()?.build()
    }

    /// What these flags describe; the boot source is `None` without --kernel (the API then
    /// supplies it).
    pub fn to_draft(&self) -> Result<VmConfigDraft, ConfigError> {
        let mut drives = self.disk.clone();
        super::drive::finalize_drives(&mut drives)?;
        let mut nets = self.net.clone();
        super::net::finalize_nets(&mut nets)?;
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        Ok(VmConfigDraft {
            machine: MachineConfig {
                vcpus: self.vcpus,
                memory_mib: self.memory,
            },
            boot: self.kernel.as_ref().map(|kernel| BootConfig {
                kernel: kernel.clone(),
                initrd: self.initrd.clone(),
                cmdline: self.cmdline.clone(),
                protocol: match self.boot_protocol {
                    BootProtocolArg::Auto => ProtocolChoice::Auto,
                    BootProtocolArg::Pvh => ProtocolChoice::Pvh,
                    BootProtocolArg::Linux => ProtocolChoice::Linux,
                },
            }),
            serial: self.serial.clone(),
            drives,
            nets,
            entropy: self.rng.then_some(EntropyConfig::default()),
            vsock: self.vsock.clone(),
            pvm_compat: match self.pvm_compat {
                CompatArg::Auto => CompatMode::Auto,
                CompatArg::On => CompatMode::On,
                CompatArg::Off => CompatMode::Off,
                CompatArg::NoSyscallRepair => CompatMode::NoSyscallRepair,
            },
            virtio_discovery: self.virtio_discovery,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cli_defaults() {
        let cli = Cli::try_parse_from(["ember", "--kernel", "k"]).expect("parses");
        let cfg = cli.to_config().expect("valid");
        assert_eq!(cfg.machine, MachineConfig::default());
        assert_eq!(cfg.boot.cmdline, DEFAULT_CMDLINE);
        assert_eq!(cfg.serial, SerialConfig::Stdio);
        assert_eq!(cfg.pvm_compat, CompatMode::Auto);
        assert_eq!(cfg.virtio_discovery, VirtioDiscovery::Auto);
    }

    #[test]
    fn test_cli_all_flags() {
        let cli = Cli::try_parse_from([
            "ember",
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--cmdline",
            "x=1",
            "--memory",
            "512",
            "--vcpus",
            "4",
            "--serial",
            "none",
            "--boot-protocol",
            "linux",
            "--pvm-compat",
            "off",
            "--virtio-discovery",
            "acpi",
        ])
        .expect("parses");
        let cfg = cli.to_config().expect("valid");
        assert_eq!(cfg.machine.vcpus, 4);
        assert_eq!(cfg.machine.memory_mib, 512);
        assert_eq!(cfg.boot.initrd, Some(PathBuf::from("i")));
        assert_eq!(cfg.boot.protocol, ProtocolChoice::Linux);
        assert_eq!(cfg.pvm_compat, CompatMode::Off);
        assert_eq!(cfg.virtio_discovery, VirtioDiscovery::Acpi);
    }

    #[test]
    fn test_cli_unknown_flag_rejected() {
        assert!(Cli::try_parse_from(["ember", "--kernel", "k", "--bogus"]).is_err());
        assert!(Cli::try_parse_from(["ember"]).is_err());
    }

    #[test]
    fn test_cli_kernel_optional_with_config_file_or_api_sock() {
        let cli = Cli::try_parse_from(["ember", "--config-file", "f.json"]).expect("parses");
        assert_eq!(cli.config_file, Some(PathBuf::from("f.json")));
        let cli =
            Cli::try_parse_from(["ember", "--api-sock", "s", "--memory", "64"]).expect("parses");
        let draft = cli.to_draft().expect("valid");
        assert_eq!(draft.boot, None);
        assert_eq!(draft.machine.memory_mib, 64);
        assert_eq!(cli.to_config(), Err(ConfigError::NoBootSource));
    }

    #[test]
    fn test_cli_config_file_conflicts_with_vm_flags() {
        for flag in [["--kernel", "k"], ["--memory", "64"], ["--serial", "none"]] {
            let args = ["ember", "--config-file", "f.json", flag[0], flag[1]];
            assert!(Cli::try_parse_from(args).is_err(), "{flag:?}");
        }
        let ok = [
            "ember",
            "--config-file",
            "f",
            "--log-level",
            "debug",
            "--api-sock",
            "s",
        ];
        assert!(Cli::try_parse_from(ok).is_ok());
    }

    #[test]
    fn test_cli_boot_flags_need_kernel() {
        let args = ["ember", "--api-sock", "s", "--cmdline", "x"];
        assert!(Cli::try_parse_from(args).is_err());
    }
}
