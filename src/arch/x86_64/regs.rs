//! Initial register state of the boot vCPU: general registers, segments, paging and the FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{self, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::kernel::BootProtocol;
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

/// Errors while setting up the boot vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// KVM_SET_REGS failed.
    #[error("Failed to set general registers")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// KVM_GET_SREGS failed.
    #[error("Failed to get special registers")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_SREGS failed.
    #[error("Failed to set special registers")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_FPU failed.
    #[error("Failed to set FPU state")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// Writing the GDT, IDT or page tables into guest memory failed.
    #[error("Failed to write {what} into guest memory")]
    WriteGuest {
        /// Which boot structure.
        what: &'static str,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Page-table entry flags: present, writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page-directory entry flags: present, writable, 2 MiB page.
const PDE_HUGE: u64 = 0x83;

/// General registers at entry: RIP at the kernel entry, the boot-info pointer where the protocol
/// wants it (RSI for Linux, RBX for PVH).
pub fn boot_regs(entry: u64, protocol: BootProtocol) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootProtocol::Pvh => {
            regs.rbx = PVH_INFO_START;
        }
    }
    regs
}

/// Sets the general registers of the boot vCPU.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64, protocol: BootProtocol) -> Result<(), RegsError> {
    vcpu.set_regs(&boot_regs(entry, protocol))
        .map_err(RegsError::SetRegs)
}

/// Sets the FPU to its power-on state (x87 control word and MXCSR defaults).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)
}

/// Writes the boot GDT, an empty IDT and (for the Linux protocol) identity page tables into
/// guest memory, and loads the matching segment and control registers into `sregs`.
pub fn configure_sregs(
    mem: &GuestMemoryMmap,
    protocol: BootProtocol,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let table = match protocol {
        BootProtocol::Linux64 => gdt::LONG_MODE_GDT,
        BootProtocol::Pvh => gdt::PROTECTED_MODE_GDT,
    };
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|_| RegsError::WriteGuest { what: "the GDT" })?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| RegsError::WriteGuest { what: "the IDT" })?;

    let code = gdt::segment_from_gdt(table[CODE_INDEX as usize], CODE_INDEX);
    let data = gdt::segment_from_gdt(table[DATA_INDEX as usize], DATA_INDEX);
    let tss = gdt::segment_from_gdt(table[TSS_INDEX as usize], TSS_INDEX);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match protocol {
        BootProtocol::Linux64 => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// Identity-maps the first 1 GiB with 2 MiB pages (PML4 -> PDPT -> PD).
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let err = |_| RegsError::WriteGuest {
        what: "the page tables",
    };
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(err)?;
    mem.write_obj(PDE_START | PTE_PRESENT_RW, GuestAddress(PDPTE_START))
        .map_err(err)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | PDE_HUGE, GuestAddress(PDE_START + i * 8))
            .map_err(err)?;
    }
    Ok(())
}

/// Sets the special registers of the boot vCPU for `protocol`.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    protocol: BootProtocol,
) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    configure_sregs(mem, protocol, &mut sregs)?;
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("1 MiB of memory")
    }

    #[test]
    fn test_boot_regs_linux_points_rsi_at_zero_page() {
        let regs = boot_regs(0x100_0000, BootProtocol::Linux64);
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(regs.rsp, BOOT_STACK_POINTER);
        assert_eq!(regs.rflags, 2);
    }

    #[test]
    fn test_boot_regs_pvh_points_rbx_at_start_info() {
        let regs = boot_regs(0x100_0000, BootProtocol::Pvh);
        assert_eq!(regs.rbx, PVH_INFO_START);
        assert_eq!(regs.rsi, 0);
    }

    #[test]
    fn test_configure_sregs_linux_enables_long_mode_paging() {
        let mem = memory();
        let mut sregs = kvm_sregs::default();
        configure_sregs(&mem, BootProtocol::Linux64, &mut sregs).expect("sregs");
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_eq!(sregs.cs.l, 1);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).expect("pml4");
        assert_eq!(pml4, PDPTE_START | PTE_PRESENT_RW);
        let last_pde: u64 = mem
            .read_obj(GuestAddress(PDE_START + 511 * 8))
            .expect("pde");
        assert_eq!(last_pde, (511 << 21) | PDE_HUGE);
    }

    #[test]
    fn test_configure_sregs_pvh_is_protected_mode_without_paging() {
        let mem = memory();
        let mut sregs = kvm_sregs::default();
        configure_sregs(&mem, BootProtocol::Pvh, &mut sregs).expect("sregs");
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PE, 0);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(sregs.cs.l, 0);
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).expect("gdt");
        assert_eq!(gdt1, gdt::PROTECTED_MODE_GDT[1]);
    }
}
