//! vCPU count and memory size.

use serde::{Deserialize, Serialize};

use super::HostLimits;
use crate::arch::layout::MMIO_GAP_SIZE;
use crate::host::CompatMode;

/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Smallest guest memory Ember accepts, in MiB: room for the boot structures and a kernel.
pub const MIN_MEMORY_MIB: u64 = 2;
/// Most guest memory Ember lays out, in MiB: 64 TiB (the physical address space of an x86_64
/// guest kernel with 4-level paging, 46 bits) less the 1 GiB MMIO gap that the RAM above 3 GiB
/// is moved past.
pub const MAX_MEMORY_MIB: u64 = ((1 << 46) - MMIO_GAP_SIZE) >> 20;
/// Most vCPUs the MP table can describe.
pub const MAX_VCPUS: usize = crate::arch::mptable::MAX_CPUS as usize;

/// The machine's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// Number of vCPUs (default 1).
    pub vcpus: u8,
    /// Guest memory in MiB (default 128).
    pub memory_mib: u64,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
        }
    }
}

/// `machine-config` in the JSON file and the API, with Firecracker's field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigBody {
    /// Number of vCPUs (required).
    pub vcpu_count: u8,
    /// Guest memory in MiB (required).
    pub mem_size_mib: u64,
    /// Simultaneous multithreading: Ember exposes none, so only `false` (the default) is valid.
    #[serde(default)]
    pub smt: bool,
    /// Ember extension: software-nested KVM workarounds, `auto` (default), `on` or `off`.
    #[serde(default)]
    pub pvm_compat: CompatMode,
    /// Firecracker's switch for diff snapshots: accepted and ignored (any VM restored from a
    /// snapshot can take diffs, docs/snapshots.md), never reported back.
    #[serde(default, skip_serializing)]
    pub track_dirty_pages: bool,
}

impl MachineConfigBody {
    /// The machine shape and the compatibility choice this body describes.
    pub fn to_config(&self) -> Result<(MachineConfig, CompatMode), MachineError> {
        if self.smt {
            return Err(MachineError::Smt);
        }
        Ok((
            MachineConfig {
                vcpus: self.vcpu_count,
                memory_mib: self.mem_size_mib,
            },
            self.pvm_compat,
        ))
    }

    /// The body describing `machine` and `pvm_compat`.
    pub fn from_config(machine: &MachineConfig, pvm_compat: CompatMode) -> Self {
        MachineConfigBody {
            vcpu_count: machine.vcpus,
            mem_size_mib: machine.memory_mib,
            smt: false,
            pvm_compat,
            track_dirty_pages: false,
        }
    }
}

/// Invalid machine settings.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MachineError {
    /// Zero vCPUs.
    #[error("vcpus: must be at least 1")]
    NoVcpus,
    /// More vCPUs than the host or Ember allows.
    #[error("vcpus: {requested} is more than this host allows ({max})")]
    TooManyVcpus {
        /// Asked for.
        requested: u8,
        /// The limit.
        max: usize,
    },
    /// Memory too small to boot anything.
    #[error("memory: {0} MiB is too small (at least {MIN_MEMORY_MIB} MiB)")]
    MemoryTooSmall(u64),
    /// SMT asked for.
    #[error("smt: Ember does not expose SMT; only false is accepted")]
    Smt,
    /// Memory larger than the host has.
    #[error("memory: {requested} MiB is more than the host's {host} MiB of RAM")]
    MemoryTooLarge {
        /// Asked for, MiB.
        requested: u64,
        /// Host RAM, MiB.
        host: u64,
    },
    /// Memory larger than a guest can address (checked also when the host size is unknown).
    #[error("memory: {requested} MiB is more than a guest can address (at most {max} MiB)")]
    MemoryBeyondGuestLimit {
        /// Asked for, MiB.
        requested: u64,
        /// The limit, MiB.
        max: u64,
    },
}

impl MachineConfig {
    /// Guest memory in bytes; an error past `MAX_MEMORY_MIB` (so never an overflow).
    pub fn memory_bytes(&self) -> Result<u64, MachineError> {
        let beyond = MachineError::MemoryBeyondGuestLimit {
            requested: self.memory_mib,
            max: MAX_MEMORY_MIB,
        };
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(beyond);
        }
        self.memory_mib.checked_mul(1 << 20).ok_or(beyond)
    }

    /// Checks the shape against the host.
    pub fn validate(&self, limits: &HostLimits) -> Result<(), MachineError> {
        if self.vcpus == 0 {
            return Err(MachineError::NoVcpus);
        }
        let max = limits.max_vcpus.min(MAX_VCPUS);
        if usize::from(self.vcpus) > max {
            return Err(MachineError::TooManyVcpus {
                requested: self.vcpus,
                max,
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(MachineError::MemoryTooSmall(self.memory_mib));
        }
        if self.memory_mib.saturating_mul(1 << 20) > limits.host_memory {
            return Err(MachineError::MemoryTooLarge {
                requested: self.memory_mib,
                host: limits.host_memory >> 20,
            });
        }
        self.memory_bytes()?;
        Ok(())
    }
}

/// The body of `PATCH /machine-config` (before the start): only the fields given change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    /// New vCPU count.
    #[serde(default)]
    pub vcpu_count: Option<u8>,
    /// New memory size in MiB.
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    /// SMT (only `false` is valid).
    #[serde(default)]
    pub smt: Option<bool>,
    /// Ember extension: software-nested KVM workarounds.
    #[serde(default)]
    pub pvm_compat: Option<CompatMode>,
}

impl MachineConfigPatch {
    /// `body` with this patch's fields put in.
    pub fn apply(&self, mut body: MachineConfigBody) -> MachineConfigBody {
        if let Some(vcpus) = self.vcpu_count {
            body.vcpu_count = vcpus;
        }
        if let Some(mib) = self.mem_size_mib {
            body.mem_size_mib = mib;
        }
        if let Some(smt) = self.smt {
            body.smt = smt;
        }
        if let Some(compat) = self.pvm_compat {
            body.pvm_compat = compat;
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HostLimits = HostLimits {
        max_vcpus: 8,
        host_memory: 4 << 30,
    };

    #[test]
    fn test_machine_default_is_valid() {
        assert_eq!(MachineConfig::default().validate(&LIMITS), Ok(()));
    }

    #[test]
    fn test_machine_zero_vcpus_rejected() {
        let cfg = MachineConfig {
            vcpus: 0,
            ..Default::default()
        };
        assert_eq!(cfg.validate(&LIMITS), Err(MachineError::NoVcpus));
    }

    #[test]
    fn test_machine_vcpus_above_host_limit_rejected() {
        let cfg = MachineConfig {
            vcpus: 9,
            ..Default::default()
        };
        assert!(matches!(
            cfg.validate(&LIMITS),
            Err(MachineError::TooManyVcpus { max: 8, .. })
        ));
    }

    #[test]
    fn test_machine_body_parses_firecracker_fields() {
        let body: MachineConfigBody =
            serde_json::from_str(r#"{"vcpu_count": 2, "mem_size_mib": 1024}"#).expect("parses");
        let (machine, compat) = body.to_config().expect("valid");
        assert_eq!(machine.vcpus, 2);
        assert_eq!(machine.memory_mib, 1024);
        assert_eq!(compat, CompatMode::Auto);
    }

    #[test]
    fn test_machine_body_track_dirty_pages_accepted_not_reported() {
        let body: MachineConfigBody = serde_json::from_str(
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "track_dirty_pages": true}"#,
        )
        .expect("parses");
        assert!(body.to_config().is_ok());
        let json = serde_json::to_string(&body).expect("serialize");
        assert!(!json.contains("track_dirty_pages"), "{json}");
    }

    #[test]
    fn test_machine_body_smt_true_rejected() {
        let body: MachineConfigBody =
            serde_json::from_str(r#"{"vcpu_count": 1, "mem_size_mib": 64, "smt": true}"#)
                .expect("parses");
        assert_eq!(body.to_config(), Err(MachineError::Smt));
    }

    #[test]
    fn test_machine_body_unknown_field_rejected() {
        let r: Result<MachineConfigBody, _> =
            serde_json::from_str(r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpus": 1}"#);
        assert!(r.expect_err("unknown").to_string().contains("cpus"));
    }

    #[test]
    fn test_machine_memory_bounds() {
        let zero = MachineConfig {
            memory_mib: 0,
            ..Default::default()
        };
        assert_eq!(zero.validate(&LIMITS), Err(MachineError::MemoryTooSmall(0)));
        let huge = MachineConfig {
            memory_mib: u64::MAX,
            ..Default::default()
        };
        assert!(matches!(
            huge.validate(&LIMITS),
            Err(MachineError::MemoryTooLarge { .. })
        ));
    }

    #[test]
    fn test_machine_memory_beyond_guest_limit_rejected_when_host_memory_unknown() {
        // /proc/meminfo unreadable: the host check passes everything.
        let unknown_host = HostLimits {
            max_vcpus: 8,
            host_memory: u64::MAX,
        };
        let huge = MachineConfig {
            memory_mib: u64::MAX >> 10,
            ..Default::default()
        };
        let beyond = MachineError::MemoryBeyondGuestLimit {
            requested: u64::MAX >> 10,
            max: MAX_MEMORY_MIB,
        };
        assert_eq!(huge.validate(&unknown_host), Err(beyond.clone()));
        assert_eq!(huge.memory_bytes(), Err(beyond));
    }

    #[test]
    fn test_machine_memory_bytes_at_limit_is_exact() {
        let top = MachineConfig {
            memory_mib: MAX_MEMORY_MIB,
            ..Default::default()
        };
        assert_eq!(top.memory_bytes(), Ok(MAX_MEMORY_MIB << 20));
    }

    #[test]
    fn test_machine_patch_changes_only_given_fields() {
        let body = MachineConfigBody::from_config(&MachineConfig::default(), CompatMode::Off);
        let patch: MachineConfigPatch =
            serde_json::from_str(r#"{"mem_size_mib": 256}"#).expect("parses");
        let patched = patch.apply(body.clone());
        assert_eq!(patched.mem_size_mib, 256);
        assert_eq!(patched.vcpu_count, body.vcpu_count);
        assert_eq!(patched.pvm_compat, CompatMode::Off);
        assert!(serde_json::from_str::<MachineConfigPatch>(r#"{"cpus": 2}"#).is_err());
    }
}
