//! `VmConfig`: everything needed to start a microVM, one file per resource, validated in one
//! place before any resource is created.

pub mod boot;
pub mod cli;
pub mod discovery;
pub mod draft;
pub mod drive;
pub mod entropy;
pub mod fc_flags;
pub mod file;
pub mod logger;
pub mod machine;
pub mod metrics;
pub mod net;
pub mod rate_limiter;
pub mod serial;
pub mod vsock;

pub use boot::BootConfig;
pub use discovery::VirtioDiscovery;
pub use draft::VmConfigDraft;
pub use drive::DriveConfig;
pub use entropy::EntropyConfig;
pub use machine::MachineConfig;
pub use net::NetConfig;
pub use serial::SerialConfig;
pub use vsock::VsockConfig;

use serde::{Deserialize, Deserializer};

use crate::host::CompatMode;

/// A Firecracker resource or field Ember does not have: only `null` (which serde reads as
/// `None` without asking this type) is accepted; any value is an error naming the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Absent;

impl<'de> Deserialize<'de> for Absent {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "not supported by Ember (only null is accepted here)",
        ))
    }
}

/// A complete microVM configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct VmConfig {
    /// vCPUs and memory.
    pub machine: MachineConfig,
    /// Kernel, initrd, command line.
    pub boot: BootConfig,
    /// Serial console routing.
    pub serial: SerialConfig,
    /// virtio-blk disks, in guest order (vda, vdb, ...).
    pub drives: Vec<DriveConfig>,
    /// virtio-net interfaces, in guest order (eth0, eth1, ...).
    pub nets: Vec<NetConfig>,
    /// The entropy device (virtio-rng), if any.
    pub entropy: Option<EntropyConfig>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Software-nested KVM compatibility policy.
    pub pvm_compat: CompatMode,
    /// Where virtio-mmio devices are announced (default: command line and ACPI).
    pub virtio_discovery: VirtioDiscovery,
}

/// Host facts validation checks against.
#[derive(Clone, Copy, Debug)]
pub struct HostLimits {
    /// Most vCPUs KVM allows in one VM.
    pub max_vcpus: usize,
    /// Host physical memory in bytes.
    pub host_memory: u64,
}

impl HostLimits {
    /// Reads the host's total memory from /proc/meminfo; `max_vcpus` comes from KVM.
    pub fn read(max_vcpus: usize) -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let host_memory = parse_mem_total(&meminfo).unwrap_or_else(|| {
            log::warn!("Cannot read MemTotal from /proc/meminfo; guest memory is not checked against the host's");
            u64::MAX
        });
        HostLimits {
            max_vcpus,
            host_memory,
        }
    }
}

/// MemTotal from /proc/meminfo, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Machine settings out of range.
    #[error(transparent)]
    Machine(#[from] machine::MachineError),
    /// Boot source problems.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Serial routing problems.
    #[error(transparent)]
    Serial(#[from] serial::SerialError),
    /// Drive problems.
    #[error(transparent)]
    Drive(#[from] drive::DriveError),
    /// Network interface problems.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// Vsock problems.
    #[error(transparent)]
    Vsock(#[from] vsock::VsockError),
    /// No boot source was given.
    #[error(
        "boot-source: no kernel given (set --kernel, boot-source in the config file, or PUT /boot-source)"
    )]
    NoBootSource,
}

impl VmConfig {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self, limits: &HostLimits) -> Result<(), ConfigError> {
        self.boot.validate()?;
        self.validate_without_boot(limits)
    }

    /// Checks every field but the boot source (a restored VM does not load its kernel again).
    pub fn validate_without_boot(&self, limits: &HostLimits) -> Result<(), ConfigError> {
        self.machine.validate(limits)?;
        self.serial.validate()?;
        drive::validate_drives(&self.drives)?;
        for d in &self.drives {
            d.validate()?;
        }
        net::validate_nets(&self.nets)?;
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_mem_total_reads_kib() {
        let meminfo = "MemTotal:       24567890 kB\nMemFree: 1 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24_567_890 * 1024));
        assert_eq!(parse_mem_total("nothing"), None);
    }
}
