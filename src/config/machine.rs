//! vCPU count and memory size.

use super::HostLimits;

/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Smallest guest memory Ember accepts, in MiB: room for the boot structures and a kernel.
pub const MIN_MEMORY_MIB: u64 = 2;
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

/// Invalid machine settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    /// Memory larger than the host has.
    #[error("memory: {requested} MiB is more than the host's {host} MiB of RAM")]
    MemoryTooLarge {
        /// Asked for, MiB.
        requested: u64,
        /// Host RAM, MiB.
        host: u64,
    },
}

impl MachineConfig {
    /// Guest memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
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
        Ok(())
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
}
