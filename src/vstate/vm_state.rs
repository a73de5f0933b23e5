//! The VM-wide state KVM holds outside the vCPUs: the in-kernel irqchip (both 8259 PICs and the
//! I/O APIC), the PIT and the KVM clock, saved into a plain serializable struct and restored
//! into a new VM (created by `Vm::new`, so with its irqchip and PIT) before its vCPUs run.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_irqchip,
    kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use crate::devices::state::{StateError, check_version};

/// Why the VM state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    /// A KVM get or set ioctl failed.
    #[error("Failed to {what}")]
    Ioctl {
        /// The operation ("get the I/O APIC", ...).
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The state comes from another version of Ember.
    #[error(transparent)]
    Version(#[from] StateError),
}

/// The in-kernel interrupt controllers, PIT and clock of a VM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// Format version (`VmState::VERSION`).
    pub version: u16,
    /// The master 8259 PIC.
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC.
    pub pic_slave: kvm_irqchip,
    /// The I/O APIC (redirection table, IRR).
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT (three channels, speaker flags).
    pub pit: kvm_pit_state2,
    /// The KVM clock (kvmclock's nanoseconds).
    pub clock: kvm_clock_data,
}

fn ioctl<T>(what: &'static str, result: Result<T, kvm_ioctls::Error>) -> Result<T, VmStateError> {
    result.map_err(|source| VmStateError::Ioctl { what, source })
}

fn get_chip(fd: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    ioctl(what, fd.get_irqchip(&mut chip))?;
    Ok(chip)
}

impl VmState {
    /// The format version this build writes and reads.
    pub const VERSION: u16 = 1;

    /// Reads the state of a VM whose vCPUs are not running.
    pub fn save(fd: &VmFd) -> Result<Self, VmStateError> {
        let mut clock = ioctl("get the KVM clock", fd.get_clock())?;
        // Only the time goes back in: KVM_SET_CLOCK takes no TSC_STABLE (or host TSC) flag.
        clock.flags = 0;
        Ok(VmState {
            version: Self::VERSION,
            pic_master: get_chip(fd, KVM_IRQCHIP_PIC_MASTER, "get the master PIC")?,
            pic_slave: get_chip(fd, KVM_IRQCHIP_PIC_SLAVE, "get the slave PIC")?,
            ioapic: get_chip(fd, KVM_IRQCHIP_IOAPIC, "get the I/O APIC")?,
            pit: ioctl("get the PIT", fd.get_pit2())?,
            clock,
        })
    }

    /// Writes this state into `fd`, a VM with an irqchip and a PIT and no running vCPU.
    pub fn restore(&self, fd: &VmFd) -> Result<(), VmStateError> {
        check_version("VM", self.version, Self::VERSION)?;
        for (chip, id, what) in [
            (
                &self.pic_master,
                KVM_IRQCHIP_PIC_MASTER,
                "set the master PIC",
            ),
            (&self.pic_slave, KVM_IRQCHIP_PIC_SLAVE, "set the slave PIC"),
            (&self.ioapic, KVM_IRQCHIP_IOAPIC, "set the I/O APIC"),
        ] {
            if chip.chip_id != id {
                return Err(StateError::Mismatch {
                    what: "VM".into(),
                    field: "the irqchip ids",
                }
                .into());
            }
            ioctl(what, fd.set_irqchip(chip))?;
        }
        ioctl("set the PIT", fd.set_pit2(&self.pit))?;
        ioctl("set the KVM clock", fd.set_clock(&self.clock))?;
        Ok(())
    }
}
