//! Local APIC setup: LINT0 delivers ExtINT (the legacy PIC) and LINT1 delivers NMI.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors while programming the local APIC.
#[derive(Debug, thiserror::Error)]
pub enum LapicError {
    /// KVM_GET_LAPIC failed.
    #[error("Failed to get the local APIC state")]
    Get(#[source] kvm_ioctls::Error),
    /// KVM_SET_LAPIC failed.
    #[error("Failed to set the local APIC state")]
    Set(#[source] kvm_ioctls::Error),
}

fn get_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| state.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *b as _;
    }
}

/// Sets the delivery mode field (bits 8..11) of an LVT entry.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI in `state`.
pub fn configure_lint(state: &mut kvm_lapic_state) {
    let lvt0 = get_reg(state, APIC_LVT0);
    set_reg(state, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(state, APIC_LVT1);
    set_reg(state, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Programs LINT0/LINT1 of `vcpu`'s in-kernel local APIC.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), LapicError> {
    let mut state = vcpu.get_lapic().map_err(LapicError::Get)?;
    configure_lint(&mut state);
    vcpu.set_lapic(&state).map_err(LapicError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_configure_lint_sets_extint_and_nmi() {
        let mut state = kvm_lapic_state::default();
        set_reg(&mut state, APIC_LVT0, 0x0001_0000);
        configure_lint(&mut state);
        assert_eq!(get_reg(&state, APIC_LVT0), 0x0001_0700);
        assert_eq!((get_reg(&state, APIC_LVT1) >> 8) & 0x7, APIC_MODE_NMI);
    }
}
