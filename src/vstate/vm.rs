//! The KVM VM: creation, memory slots, the in-kernel irqchip and PIT, and irqfds.

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::KVM_TSS_ADDRESS;

/// Errors while setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error("Cannot open /dev/kvm (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("Unsupported KVM API version {0}")]
    ApiVersion(i32),
    /// A capability Ember needs is missing.
    #[error("The host KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
    /// KVM_CREATE_VM failed.
    #[error("Failed to create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// KVM_SET_TSS_ADDR failed.
    #[error("Failed to set the TSS address")]
    SetTss(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("Failed to create the in-kernel irqchip")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("Failed to create the in-kernel PIT")]
    CreatePit(#[source] kvm_ioctls::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("Failed to register guest memory slot {slot} at {guest_addr:#x} ({size} bytes)")]
    SetMemory {
        /// Slot number.
        slot: u32,
        /// Guest-physical start.
        guest_addr: u64,
        /// Size in bytes.
        size: u64,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_IRQFD failed.
    #[error("Failed to register an irqfd for GSI {gsi}")]
    Irqfd {
        /// The interrupt line.
        gsi: u32,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The placeholder memory slot of a prepared VM (`prepared.rs`) could not be made.
    #[error("Failed to register and delete a placeholder memory slot")]
    Placeholder(#[source] std::io::Error),
}

/// Capabilities without which Ember cannot run a guest.
const REQUIRED_CAPS: [Cap; 6] = [
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
];

/// An open KVM system handle: the capability checks and the vCPU limit.
pub struct KvmHost {
    /// The /dev/kvm handle.
    pub kvm: Kvm,
}

impl KvmHost {
    /// Opens /dev/kvm and checks the API version and required capabilities.
    pub fn open() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::ApiVersion(version));
        }
        for cap in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(cap));
            }
        }
        Ok(KvmHost { kvm })
    }

    /// The most vCPUs a VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }
}

/// The VM: its fd, with memory registered and the interrupt controllers created.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates the VM with an in-kernel irqchip (PIC + I/O APIC + local APICs) and PIT.
    pub fn new(host: &KvmHost) -> Result<Self, VmError> {
        let fd = host.kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(VmError::SetTss)?;
        fd.create_irq_chip().map_err(VmError::CreateIrqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::CreatePit)?;
        Ok(Vm { fd })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let guest_addr = region.start_addr().0;
            let size = region.len();
            let host_addr = region.as_ptr() as u64;
            let entry = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: guest_addr,
                memory_size: size,
                userspace_addr: host_addr,
            };
            // SAFETY: the region stays mapped for as long as the VM exists: the Vmm owns both
            // the guest memory and the VM, and drops the VM first.
            unsafe { self.fd.set_user_memory_region(entry) }.map_err(|source| {
                VmError::SetMemory {
                    slot,
                    guest_addr,
                    size,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Routes writes to `evt` to interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }
}
