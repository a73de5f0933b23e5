//! The full architectural state of one vCPU as KVM holds it, saved into a plain serializable
//! struct and restored into a fresh vCPU (of a new VM): the ground for snapshots.
//!
//! Restore order follows what KVM needs: CPUID must already be set (the caller's
//! `Vcpu::configure` does it; MSRs and XSAVE are checked against it), then special registers
//! (mode, paging), general registers, XSAVE/XCRs, debug registers, LAPIC, MSRs, MP state, and
//! the pending events last (they may refer to all of the above).

use kvm_bindings::{
    Msrs, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// MSRs KVM's index list leaves out although they hold state (measured on this project's
/// hosts: MTRRdefType was lost without them): SPEC_CTRL, the MTRRs, TSC_AUX.
const EXTRA_MSRS: [u32; 20] = [
    0x48,
    0x2ff,
    0x200,
    0x201,
    0x202,
    0x203,
    0x204,
    0x205,
    0x206,
    0x207,
    0x208,
    0x209,
    0x20a,
    0x20b,
    0x250,
    0x258,
    0x259,
    0x268,
    0x269,
    0xc000_0103,
];

/// Why a vCPU's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM get or set ioctl failed.
    #[error("Failed to {what} the vCPU state")]
    Ioctl {
        /// The operation ("get the registers", ...).
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM applied fewer MSRs than the state holds.
    #[error("KVM restored {set} of the {total} saved MSRs (first refused: {refused:#x})")]
    Msrs {
        /// How many were applied.
        set: usize,
        /// How many were saved.
        total: usize,
        /// The first MSR KVM refused.
        refused: u32,
    },
    /// The state comes from another version of Ember.
    #[error("vCPU state version {found} is not {expected}")]
    Version {
        /// The version in the state.
        found: u16,
        /// The version this build writes.
        expected: u16,
    },
}

/// One vCPU's state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// Format version (`VcpuState::VERSION`).
    pub version: u16,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state (the 4 KiB KVM_GET_XSAVE layout).
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// DR0-DR3, DR6, DR7.
    pub debugregs: kvm_debugregs,
    /// The local APIC's register page.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM can save (its index list plus `EXTRA_MSRS` it accepts).
    pub msrs: Vec<kvm_msr_entry>,
    /// Running, halted, waiting for SIPI, ...
    pub mp_state: kvm_mp_state,
    /// Pending exception, interrupt, NMI and SMI state.
    pub events: kvm_vcpu_events,
    /// The guest TSC frequency, where KVM reports one.
    pub tsc_khz: Option<u32>,
}

fn ioctl<T>(what: &'static str, result: Result<T, kvm_ioctls::Error>) -> Result<T, VcpuStateError> {
    result.map_err(|source| VcpuStateError::Ioctl { what, source })
}

/// The MSRs to save on this host: KVM's list plus the stateful ones it leaves out.
pub fn saveable_msrs(kvm: &Kvm) -> Result<Vec<u32>, VcpuStateError> {
    let list = ioctl("list the MSRs of", kvm.get_msr_index_list())?;
    let mut indices: Vec<u32> = list.as_slice().to_vec();
    for extra in EXTRA_MSRS {
        if !indices.contains(&extra) {
            indices.push(extra);
        }
    }
    Ok(indices)
}

/// Reads the MSRs in `indices` that this vCPU has; KVM stops a KVM_GET_MSRS at the first one it
/// does not know, which is then left out.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut wanted: Vec<u32> = indices.to_vec();
    loop {
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let Ok(mut msrs) = Msrs::from_entries(&entries) else {
            return Ok(Vec::new());
        };
        let read = ioctl("read the MSRs of", fd.get_msrs(&mut msrs))?;
        if read == wanted.len() {
            return Ok(msrs.as_slice().to_vec());
        }
        wanted.remove(read);
    }
}

impl VcpuState {
    /// The format version this build writes and reads.
    pub const VERSION: u16 = 1;

    /// Reads the whole state of a vCPU that is not running (its thread is parked or not
    /// started); `msrs` from `saveable_msrs`.
    pub fn save(fd: &VcpuFd, msrs: &[u32]) -> Result<Self, VcpuStateError> {
        Ok(VcpuState {
            version: Self::VERSION,
            // Pending events first: reading the registers must not be the thing that changes them.
            events: ioctl("get the events of", fd.get_vcpu_events())?,
            mp_state: ioctl("get the MP state of", fd.get_mp_state())?,
            regs: ioctl("get the registers of", fd.get_regs())?,
            sregs: ioctl("get the special registers of", fd.get_sregs())?,
            xsave: ioctl("get the XSAVE area of", fd.get_xsave())?,
            xcrs: ioctl("get the XCRs of", fd.get_xcrs())?,
            debugregs: ioctl("get the debug registers of", fd.get_debug_regs())?,
            lapic: ioctl("get the LAPIC of", fd.get_lapic())?,
            msrs: read_msrs(fd, msrs)?,
            tsc_khz: fd.get_tsc_khz().ok(),
        })
    }

    /// Writes this state into `fd`, a vCPU whose CPUID is already set.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        if self.version != Self::VERSION {
            return Err(VcpuStateError::Version {
                found: self.version,
                expected: Self::VERSION,
            });
        }
        if let Some(khz) = self.tsc_khz {
            // Hosts without TSC scaling refuse a different rate; the guest then runs on the
            // host's (docs: a restored guest sees the time that passed).
            if let Err(e) = fd.set_tsc_khz(khz) {
                log::debug!("vCPU TSC rate {khz} kHz not set: {e}");
            }
        }
        ioctl("set the special registers of", fd.set_sregs(&self.sregs))?;
        ioctl("set the registers of", fd.set_regs(&self.regs))?;
        // SAFETY: KVM_SET_XSAVE reads exactly `size_of::<kvm_xsave>()` bytes, which `self.xsave`
        // is; only KVM_SET_XSAVE2 could read past it.
        ioctl("set the XSAVE area of", unsafe {
            fd.set_xsave(&self.xsave)
        })?;
        ioctl("set the XCRs of", fd.set_xcrs(&self.xcrs))?;
        ioctl(
            "set the debug registers of",
            fd.set_debug_regs(&self.debugregs),
        )?;
        ioctl("set the LAPIC of", fd.set_lapic(&self.lapic))?;
        if !self.msrs.is_empty() {
            let msrs = Msrs::from_entries(&self.msrs).map_err(|_| VcpuStateError::Msrs {
                set: 0,
                total: self.msrs.len(),
                refused: self.msrs[0].index,
            })?;
            let set = ioctl("set the MSRs of", fd.set_msrs(&msrs))?;
            if set != self.msrs.len() {
                return Err(VcpuStateError::Msrs {
                    set,
                    total: self.msrs.len(),
                    refused: self.msrs[set].index,
                });
            }
        }
        ioctl("set the MP state of", fd.set_mp_state(self.mp_state))?;
        ioctl("set the events of", fd.set_vcpu_events(&self.events))?;
        Ok(())
    }
}
