//! The command line (clap), turned into a `VmConfig`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use super::ConfigError;
use super::boot::DEFAULT_CMDLINE;
use super::machine::{DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use super::{
    BootConfig, DriveConfig, MachineConfig, NetConfig, SerialConfig, VirtioDiscovery, VmConfig,
};
use crate::arch::kernel::ProtocolChoice;
use crate::host::CompatMode;

const AFTER_HELP: &str = "\
Examples:
  ember --kernel vmlinux --initrd initramfs.cpio
  ember --kernel bzImage --vcpus 2 --memory 512 --cmdline 'console=ttyS0 reboot=k panic=1 quiet'
  ember --kernel vmlinux --serial file:/tmp/console.log --log-level debug

Console: with --serial stdio on a terminal, the terminal is in raw mode while the guest runs;
press Ctrl-A x to stop the VM, Ctrl-A Ctrl-A to send Ctrl-A.

Exit status:
  0    the guest shut down: reboot/reset (i8042 reboot=k, ACPI reset) or power-off (ACPI S5)
  1    VMM error (KVM unavailable, kernel could not be loaded, I/O failure)
  2    bad usage: invalid flag or configuration value
  3    the guest crashed: triple fault, KVM internal (emulation) error, failed VM entry
  130  stopped by SIGINT or Ctrl-A x;  143  stopped by SIGTERM";

/// Log verbosity.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings (default).
    Warn,
    /// Rare state changes too.
    Info,
    /// Everything useful for debugging.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
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
}

/// Ember: a KVM microVM monitor. Boots a Linux kernel (ELF vmlinux or bzImage) with its console
/// on your terminal.
#[derive(Parser, Debug)]
#[command(name = "ember", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a bzImage.
    /// Example: --kernel guest-images/out/vmlinux
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initrd or initramfs, loaded at the top of low guest memory.
    /// Example: --initrd guest-images/out/initramfs.cpio
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line. On software-nested hosts Ember appends its compatibility switches.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
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

    /// Log level of Ember's own messages (on stderr).
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = LogLevel::Warn)]
    pub log_level: LogLevel,

    /// Kernel entry protocol.
    #[arg(long, value_name = "PROTOCOL", value_enum, default_value_t = BootProtocolArg::Auto)]
    pub boot_protocol: BootProtocolArg,

    /// Workarounds for software-nested KVM (see docs/usage.md): auto-detected by default.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = CompatArg::Auto)]
    pub pvm_compat: CompatArg,

    /// Where the guest learns about its virtio devices: the kernel command line
    /// (virtio_mmio.device=), the ACPI DSDT (stock distribution kernels), or both (auto).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = VirtioDiscovery::Auto)]
    pub virtio_discovery: VirtioDiscovery,
}

impl Cli {
    /// The `VmConfig` these flags describe (not yet validated).
    pub fn to_config(&self) -> Result<VmConfig, ConfigError> {
        let mut drives = self.disk.clone();
        super::drive::finalize_drives(&mut drives)?;
        let mut nets = self.net.clone();
        super::net::finalize_nets(&mut nets)?;
        Ok(VmConfig {
            machine: MachineConfig {
                vcpus: self.vcpus,
                memory_mib: self.memory,
            },
            boot: BootConfig {
                kernel: self.kernel.clone(),
                initrd: self.initrd.clone(),
                cmdline: self.cmdline.clone(),
                protocol: match self.boot_protocol {
                    BootProtocolArg::Auto => ProtocolChoice::Auto,
                    BootProtocolArg::Pvh => ProtocolChoice::Pvh,
                    BootProtocolArg::Linux => ProtocolChoice::Linux,
                },
            },
            serial: self.serial.clone(),
            drives,
            nets,
            pvm_compat: match self.pvm_compat {
                CompatArg::Auto => CompatMode::Auto,
                CompatArg::On => CompatMode::On,
                CompatArg::Off => CompatMode::Off,
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
}
