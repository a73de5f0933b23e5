//! The SYSCALL repair of the software-nested (PVM) policy: lets guest userspace make system
//! calls on hosts where a `syscall` from ring 3 is misdelivered.
//!
//! What the host does (measured, see docs/usage.md): a 64-bit `syscall` from CPL 3 sets RCX,
//! R11, RFLAGS &= ~SFMASK and RIP = LSTAR as the architecture says, but leaves CS/SS at the user
//! selectors. The fetch at LSTAR, a supervisor page in any real kernel, then raises #PF "from
//! user mode" with RIP = CR2 = LSTAR and IF clear in the frame (#GP at LSTAR if the page were
//! user-executable). Native ring 3 is invisible to the VMM, but hardware breakpoints set with
//! KVM_SET_GUEST_DEBUG fire in the guest's (emulated) ring 0. So:
//!
//! - **Arming.** Guest writes to STAR, LSTAR and SFMASK are trapped (KVM MSR filter, one exit
//!   per write, a handful per vCPU at boot): the VMM applies the write, reads the guest's IDT and
//!   puts DR0/DR1 on its #PF and #GP handler entries. The event loop's 500 ms sample tick
//!   re-reads the IDT as a backstop (a kernel that moves its IDT later).
//! - **At a breakpoint.** The exception frame on the guest kernel stack tells a misdelivered
//!   SYSCALL from a genuine fault: user CS and SS, RIP == LSTAR (and CR2 == LSTAR, user-mode
//!   error code for #PF), the SFMASK bits clear in RFLAGS and RFLAGS == R11 & ~SFMASK. Such a
//!   SYSCALL is finished by hand: RIP = LSTAR, RSP = the user RSP from the frame, RFLAGS from the
//!   frame, CS/SS the kernel selectors from STAR. RCX and R11 are already right.
//! - **A genuine fault** continues past the breakpoint: RIP moves past the handler's first
//!   instruction when that is a NOP (Linux's ASM_CLAC without SMAP, ENDBR64), else one
//!   instruction is single-stepped with the breakpoints off.
//!
//! Why a guest cannot use it to gain privilege: user mode cannot clear IF (Linux never grants
//! IOPL 3), and the repair is armed only when SFMASK clears IF, so a frame with IF clear and a
//! user CS comes only from a real SYSCALL. A user program that jumps to LSTAR itself faults with
//! IF set and gets the #PF (SIGSEGV) the architecture gives it. Even a forged match would enter
//! the kernel exactly as the `syscall` instruction does.
//!
//! Registers travel through kvm_run's sync area (each vCPU ioctl costs ~9 us on these hosts).
//! The guest's own hardware breakpoints (ptrace, perf) do not work while the repair is armed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_MSR_EXIT_REASON_FILTER, Msrs, kvm_debug_exit_arch, kvm_enable_cap, kvm_guest_debug,
    kvm_msr_entry, kvm_regs, kvm_sregs,
};
use kvm_ioctls::{
    Cap, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, SyncReg, VcpuFd, VmFd,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// IA32_STAR: SYSCALL/SYSRET selectors.
pub const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR: the 64-bit SYSCALL entry point.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_FMASK: the RFLAGS bits SYSCALL clears.
pub const MSR_SFMASK: u32 = 0xc000_0084;

/// IA32_KERNEL_GS_BASE: the GS base `swapgs` exchanges.
const MSR_GS_BASE: u32 = 0xc000_0101;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Canonical user-half addresses end here (4-level paging).
const USER_HALF_END: u64 = 1 << 47;

const EFER_LMA: u64 = 1 << 10;
const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_FIXED: u64 = 1 << 1;
const GP_VECTOR: u64 = 13;
const PF_VECTOR: u64 = 14;
/// #PF error code bit: the access came from user mode.
const PF_USER: u64 = 1 << 2;
const PTE_PRESENT: u64 = 1;
const PTE_HUGE: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
const PAGE_SIZE: u64 = 0x1000;
/// An IDT gate's present bit (in its type byte).
const GATE_PRESENT: u8 = 0x80;
/// DR7 bit 10 is reserved as 1.
const DR7_FIXED: u64 = 1 << 10;

/// Which handler a breakpoint slot watches.
const SLOTS: [u64; 2] = [PF_VECTOR, GP_VECTOR];
/// The breakpoint slot on the kernel's `sysretq`.
const SYSRET_SLOT: usize = 2;
/// Bytes of `swapgs` (0f 01 f8).
const SWAPGS_LEN: u64 = 3;
/// How far past LSTAR the SYSCALL exit's `swapgs; sysretq` is looked for.
const SYSRET_SCAN: usize = 0x400;

/// Counters of one VM's repair, shared by its vCPUs (and read by the VMM for its log).
#[derive(Debug, Default)]
pub struct RepairCounters {
    /// Misdelivered system calls finished by hand.
    pub repaired: AtomicU64,
    /// Genuine #PF/#GP that passed the breakpoint.
    pub passed: AtomicU64,
    /// Of those, the ones that needed a single step.
    pub stepped: AtomicU64,
    /// Times a vCPU (re)armed its breakpoints.
    pub armed: AtomicU64,
    /// Breakpoint hits left alone because KVM was delivering an event (see `event_in_flight`).
    pub deferred: AtomicU64,
    /// SYSCALL exits done by the repair (`finish_sysret`).
    pub sysrets: AtomicU64,
    /// SYSCALL entry prologues run by the repair (`run_prologue`).
    pub prologues: AtomicU64,
}

/// Turns on the trap of guest writes to STAR, LSTAR and SFMASK (a `KVM_EXIT_X86_WRMSR` each).
/// Called once per VM, before its vCPUs run, only where the repair applies.
pub fn trap_syscall_msr_writes(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    let cap = kvm_enable_cap {
        cap: Cap::X86UserSpaceMsr as u32,
        args: [u64::from(KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)?;
    // One bit per MSR from STAR: 0 = writes denied (they exit to us), 1 = allowed (CSTAR).
    let bitmap = [0b0100u8];
    let range = MsrFilterRange {
        flags: MsrFilterRangeFlags::WRITE,
        base: MSR_STAR,
        msr_count: MSR_SFMASK - MSR_STAR + 1,
        bitmap: &bitmap,
    };
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])
}

/// Takes `trap_syscall_msr_writes`'s filter off again (a prepared VM whose guest turned out
/// not to want the repair).
pub fn untrap_syscall_msr_writes(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[])
}

/// Whether a trapped MSR write is one the repair handles.
pub fn is_trapped_msr(index: u32) -> bool {
    matches!(index, MSR_STAR | MSR_LSTAR | MSR_SFMASK)
}

/// What a debug exit turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum DebugOutcome {
    /// The repair handled it: run on.
    Handled,
    /// Not one of the repair's breakpoints.
    Foreign,
}

/// The guest's system-call MSRs as the repair last saw them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallMsrs {
    /// IA32_STAR.
    pub star: u64,
    /// IA32_LSTAR.
    pub lstar: u64,
    /// IA32_FMASK.
    pub sfmask: u64,
}

impl SyscallMsrs {
    /// The kernel CS selector SYSCALL loads (STAR[47:32]); SS is the next descriptor.
    fn kernel_cs(&self) -> u16 {
        // Bits 47:32 fit 16 bits; the RPL bits are forced to 0 as SYSCALL does.
        ((self.star >> 32) as u16) & 0xfffc
    }

    /// Whether a kernel that set these can be repaired safely: an entry point, and IF among
    /// the flags SYSCALL clears (what tells a real SYSCALL from a user jump to LSTAR).
    fn repairable(&self) -> bool {
        self.lstar != 0 && self.kernel_cs() != 0 && self.sfmask & RFLAGS_IF != 0
    }
}

/// The hardware exception frame at a #PF/#GP handler entry: error code, RIP, CS, RFLAGS, RSP, SS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExceptionFrame {
    /// Error code pushed by the CPU.
    pub error: u64,
    /// Faulting RIP.
    pub rip: u64,
    /// CS at the fault.
    pub cs: u64,
    /// RFLAGS at the fault.
    pub rflags: u64,
    /// RSP at the fault.
    pub rsp: u64,
    /// SS at the fault.
    pub ss: u64,
}

impl ExceptionFrame {
    fn from_bytes(raw: &[u8; 48]) -> Self {
        let q = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        ExceptionFrame {
            error: q(0),
            rip: q(1),
            cs: q(2),
            rflags: q(3),
            rsp: q(4),
            ss: q(5),
        }
    }
}

/// Whether the frame at the entry of handler `vector` is a SYSCALL the host misdelivered.
/// `cr2` and `r11` are the vCPU's at the breakpoint.
pub fn is_misdelivered_syscall(
    msrs: &SyscallMsrs,
    vector: u64,
    frame: &ExceptionFrame,
    cr2: u64,
    r11: u64,
) -> bool {
    if !msrs.repairable() || frame.cs & 3 != 3 || frame.ss & 3 != 3 || frame.rip != msrs.lstar {
        return false;
    }
    let fault_matches = match vector {
        PF_VECTOR => frame.error & PF_USER != 0 && cr2 == msrs.lstar,
        GP_VECTOR => true,
        _ => false,
    };
    // SYSCALL cleared the SFMASK bits (IF among them, which user mode cannot clear) and saved
    // the flags it found in R11. RF is set in a fault frame and cleared by SYSCALL in R11.
    let flags = frame.rflags & !RFLAGS_RF;
    fault_matches && flags & msrs.sfmask == 0 && flags == r11 & !msrs.sfmask & !RFLAGS_RF
}

/// Length of the instruction at the start of `bytes` when it is one that can be skipped without
/// effect (a NOP, or ENDBR64 with no CET in the guest); 0 otherwise.
pub fn skippable_len(bytes: &[u8]) -> u8 {
    match bytes {
        [0x90, ..] => 1,
        [0x66, 0x90, ..] => 2,
        [0x0f, 0x1f, 0x00, ..] => 3,
        [0x0f, 0x1f, 0x40, _, ..] => 4,
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => 4,
        [0x0f, 0x1f, 0x44, 0x00, _, ..] => 5,
        [0x66, 0x0f, 0x1f, 0x44, 0x00, _, ..] => 6,
        [0x0f, 0x1f, 0x80, _, _, _, _, ..] => 7,
        [0x0f, 0x1f, 0x84, 0x00, _, _, _, _, ..] => 8,
        _ => 0,
    }
}

/// The handler address in a 64-bit IDT gate, if the gate is present.
pub fn gate_handler(gate: &[u8; 16]) -> Option<u64> {
    if gate[5] & GATE_PRESENT == 0 {
        return None;
    }
    let low = u64::from(u16::from_le_bytes([gate[0], gate[1]]));
    let mid = u64::from(u16::from_le_bytes([gate[6], gate[7]]));
    let high = u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]));
    Some(low | mid << 16 | high << 32)
}

/// Guest-virtual to guest-physical through 4-level page tables rooted at `cr3`; `None` when
/// unmapped or when the tables point outside guest memory.
pub fn translate(mem: &GuestMemoryMmap, cr3: u64, gva: u64) -> Option<u64> {
    let mut table = cr3 & PTE_ADDR;
    for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let index = (gva >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        // A 1 GiB (PDPTE) or 2 MiB (PDE) page ends the walk.
        if (level == 1 || level == 2) && entry & PTE_HUGE != 0 {
            let size = 1u64 << shift;
            return Some((entry & PTE_ADDR & !(size - 1)) | (gva & (size - 1)));
        }
        table = entry & PTE_ADDR;
    }
    Some(table | (gva & (PAGE_SIZE - 1)))
}

/// Reads guest-virtual memory, page by page (5-level paging goes through KVM_TRANSLATE).
pub(crate) fn read_virt(
    mem: &GuestMemoryMmap,
    fd: &VcpuFd,
    sregs: &kvm_sregs,
    gva: u64,
    buf: &mut [u8],
) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let addr = gva.wrapping_add(done as u64);
        let gpa = if sregs.cr4 & CR4_LA57 != 0 {
            match fd.translate_gva(addr) {
                Ok(t) if t.valid != 0 => Some(t.physical_address),
                _ => None,
            }
        } else {
            translate(mem, sregs.cr3, addr)
        };
        let Some(gpa) = gpa else { return false };
        let n = ((PAGE_SIZE - (addr & (PAGE_SIZE - 1))) as usize).min(buf.len() - done);
        if mem
            .read_slice(&mut buf[done..done + n], GuestAddress(gpa))
            .is_err()
        {
            return false;
        }
        done += n;
    }
    true
}

/// One MSR of the vCPU, for the log.
fn read_msr(fd: &VcpuFd, index: u32) -> Option<u64> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .ok()?;
    (fd.get_msrs(&mut msrs).ok()? == 1).then(|| msrs.as_slice()[0].data)
}

/// Writes one MSR of the vCPU; false if KVM refused it.
fn write_msr(fd: &VcpuFd, index: u32, data: u64) -> bool {
    Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .is_ok_and(|msrs| fd.set_msrs(&msrs).ok() == Some(1))
}

/// Sets the GS base and KERNEL_GS_BASE of the vCPU in one KVM_SET_MSRS: what `swapgs` does,
/// without writing the system registers (see `finish_syscall`). False if KVM refused either.
fn write_gs_bases(fd: &VcpuFd, gs_base: u64, kernel_gs_base: u64) -> bool {
    Msrs::from_entries(&[
        kvm_msr_entry {
            index: MSR_GS_BASE,
            data: gs_base,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_KERNEL_GS_BASE,
            data: kernel_gs_base,
            ..Default::default()
        },
    ])
    .is_ok_and(|msrs| fd.set_msrs(&msrs).ok() == Some(2))
}

/// Runs a SYSCALL entry prologue for the guest: `swapgs` (the kernel GS base from
/// KERNEL_GS_BASE, which gets the user's), the user RSP stored in its per-CPU slot, the kernel
/// stack top read from its own. Returns the kernel stack; `None`, with nothing changed, when
/// the MSRs or the per-CPU slots cannot be reached.
fn run_prologue(
    fd: &VcpuFd,
    mem: &GuestMemoryMmap,
    sregs: &kvm_sregs,
    prologue: &EntryPrologue,
    user_rsp: u64,
) -> Option<u64> {
    let kernel_gs = read_msr(fd, MSR_KERNEL_GS_BASE)?;
    let slot = |offset: u64| -> Option<u64> {
        let gva = kernel_gs.wrapping_add(offset);
        // Each slot is a u64 inside one page (Linux's saved-RSP slot, in the TSS, is only
        // 4-aligned).
        if gva & (PAGE_SIZE - 1) > PAGE_SIZE - 8 || sregs.cr4 & CR4_LA57 != 0 {
            return None;
        }
        translate(mem, sregs.cr3, gva)
    };
    let save = slot(prologue.save_rsp)?;
    let top = slot(prologue.stack_top)?;
    let stack: u64 = mem.read_obj(GuestAddress(top)).ok()?;
    if !canonical(stack) || stack < USER_HALF_END {
        return None;
    }
    if !write_gs_bases(fd, kernel_gs, sregs.gs.base) {
        return None;
    }
    if mem.write_obj(user_rsp, GuestAddress(save)).is_err() {
        // Put the bases back: the guest then runs the prologue itself.
        write_gs_bases(fd, sregs.gs.base, kernel_gs);
        return None;
    }
    Some(stack)
}

/// The event KVM is delivering to the vCPU (an exception, interrupt or NMI injected or pending at
/// this instruction boundary), described for the log; `None` when there is none or the events
/// cannot be read.
fn event_in_flight(fd: &VcpuFd) -> Option<String> {
    let ev = fd.get_vcpu_events().ok()?;
    let mut what = Vec::new();
    if ev.exception.injected != 0 || ev.exception.pending != 0 {
        what.push(format!("exception {}", ev.exception.nr));
    }
    if ev.interrupt.injected != 0 {
        what.push(format!("interrupt {:#x}", ev.interrupt.nr));
    }
    if ev.nmi.injected != 0 || ev.nmi.pending != 0 {
        what.push("NMI".to_string());
    }
    (!what.is_empty()).then(|| what.join(", "))
}

/// The offset of the `swapgs` (0f 01 f8) that begins the SYSCALL exit's last two instructions
/// in `code` (the guest's entry text from LSTAR): followed by `sysretq` (48 0f 07) directly,
/// after a VERW with a RIP-relative operand (0f 00 2d disp32), or after a two-byte jump over
/// that VERW (eb 07), as Linux lays out `entry_SYSRETQ_unsafe_stack` with and without its
/// mitigation.
pub fn find_sysret(code: &[u8]) -> Option<usize> {
    const SWAPGS: [u8; 3] = [0x0f, 0x01, 0xf8];
    const SYSRETQ: [u8; 3] = [0x48, 0x0f, 0x07];
    let at = |i: usize, bytes: &[u8]| code.get(i..i + bytes.len()) == Some(bytes);
    (0..code.len()).find(|&i| {
        let next = i + SWAPGS.len();
        let verw = |j: usize| at(j, &[0x0f, 0x00, 0x2d]);
        at(i, &SWAPGS)
            && (at(next, &SYSRETQ)
                || (verw(next) && at(next + 7, &SYSRETQ))
                || (at(next, &[0xeb, 0x07]) && verw(next + 2) && at(next + 9, &SYSRETQ)))
    })
}

/// The first instructions of a Linux SYSCALL entry, which Ember runs itself: `swapgs`, the user
/// RSP saved to a per-CPU slot, the kernel stack loaded from another (`entry_SYSCALL_64` up to
/// `entry_SYSCALL_64_safe_stack`, without page-table isolation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPrologue {
    /// Per-CPU offset (from the kernel GS base) where the user RSP is saved.
    pub save_rsp: u64,
    /// Per-CPU offset of the kernel stack top.
    pub stack_top: u64,
    /// Bytes from LSTAR to the first instruction after the prologue.
    pub len: u64,
}

/// Recognises the entry prologue at the start of `code` (from LSTAR): an optional ENDBR64,
/// `swapgs`, `mov %rsp,%gs:disp32`, `mov %gs:disp32,%rsp`. Anything else (page-table isolation's
/// CR3 switch among it) is not recognised, and the guest runs its entry itself.
pub fn entry_prologue(code: &[u8]) -> Option<EntryPrologue> {
    let mut i = 0;
    if code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        i += 4;
    }
    let disp = |at: usize, opcode: &[u8; 5]| -> Option<u64> {
        let bytes = code.get(at..at + 9)?;
        if bytes[..5] != opcode[..] {
            return None;
        }
        // A 32-bit displacement, sign-extended as the CPU does.
        let d = i32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        Some(i64::from(d) as u64)
    };
    if code.get(i..i + 3)? != [0x0f, 0x01, 0xf8] {
        return None;
    }
    i += 3;
    let save_rsp = disp(i, &[0x65, 0x48, 0x89, 0x24, 0x25])?;
    i += 9;
    let stack_top = disp(i, &[0x65, 0x48, 0x8b, 0x24, 0x25])?;
    i += 9;
    Some(EntryPrologue {
        save_rsp,
        stack_top,
        len: i as u64,
    })
}

/// Whether `addr` is canonical with 4-level paging (SYSRET faults in ring 0 otherwise).
fn canonical(addr: u64) -> bool {
    let top = addr >> 47;
    top == 0 || top == (1 << 17) - 1
}

/// One vCPU's repair: where its breakpoints are and what it knows of the guest.
#[derive(Debug)]
pub struct SyscallRepair {
    index: u8,
    msrs: SyscallMsrs,
    /// #PF and #GP handler entries and the SYSCALL exit's `sysretq` the breakpoints are on
    /// (0: none).
    handlers: [u64; 3],
    armed: bool,
    stepping: bool,
    warned_unreadable: bool,
    logged_repairs: u8,
    /// The guest's SYSCALL entry prologue, when Ember runs it (see `entry_prologue`).
    prologue: Option<EntryPrologue>,
    counters: Arc<RepairCounters>,
}

impl SyscallRepair {
    /// The repair of vCPU `index`, counting into `counters`.
    pub fn new(index: u8, counters: Arc<RepairCounters>) -> Self {
        SyscallRepair {
            index,
            msrs: SyscallMsrs::default(),
            handlers: [0; 3],
            armed: false,
            stepping: false,
            warned_unreadable: false,
            logged_repairs: 0,
            prologue: None,
            counters,
        }
    }

    fn debug_control(&self, single_step: bool) -> kvm_guest_debug {
        let mut dbg = kvm_guest_debug::default();
        if single_step {
            dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
            return dbg;
        }
        dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
        let mut dr7 = DR7_FIXED;
        for (i, &handler) in self.handlers.iter().enumerate() {
            if handler != 0 {
                dbg.arch.debugreg[i] = handler;
                // Li: local enable; R/W and LEN 0: instruction breakpoint.
                dr7 |= 1 << (2 * i);
            }
        }
        dbg.arch.debugreg[7] = dr7;
        dbg
    }

    /// A guest write of a system-call MSR trapped by the filter: applies it (as the CPU would)
    /// and re-arms. Returns false when KVM refused the value (the guest then gets #GP).
    pub fn on_msr_write(
        &mut self,
        fd: &mut VcpuFd,
        mem: &GuestMemoryMmap,
        index: u32,
        data: u64,
    ) -> bool {
        if !write_msr(fd, index, data) {
            return false;
        }
        match index {
            MSR_STAR => self.msrs.star = data,
            MSR_LSTAR => self.msrs.lstar = data,
            MSR_SFMASK => self.msrs.sfmask = data,
            _ => {}
        }
        self.refresh(fd, mem);
        true
    }

    /// Reads the guest's system-call MSRs and IDT, and (re)arms the breakpoints when the
    /// handlers moved. Cheap enough for the 500 ms sample tick.
    pub fn refresh(&mut self, fd: &mut VcpuFd, mem: &GuestMemoryMmap) {
        if self.stepping {
            return;
        }
        let Ok(sregs) = fd.get_sregs() else { return };
        if sregs.efer & EFER_LMA == 0
            || sregs.cr0 & CR0_PG == 0
            || u64::from(sregs.idt.limit) < 16 * (PF_VECTOR + 1) - 1
        {
            return;
        }
        let Ok(mut entries) = Msrs::from_entries(&[
            kvm_msr_entry {
                index: MSR_STAR,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_LSTAR,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_SFMASK,
                ..Default::default()
            },
        ]) else {
            return;
        };
        if fd.get_msrs(&mut entries).ok() != Some(3) {
            return;
        }
        let m = entries.as_slice();
        self.msrs = SyscallMsrs {
            star: m[0].data,
            lstar: m[1].data,
            sfmask: m[2].data,
        };
        if !self.msrs.repairable() {
            if self.armed {
                // The guest turned SYSCALL off or stopped masking IF: nothing to repair safely.
                self.disarm(fd);
            }
            return;
        }
        let mut handlers = [0u64; 3];
        for (slot, vector) in SLOTS.into_iter().enumerate() {
            let mut gate = [0u8; 16];
            if !read_virt(mem, fd, &sregs, sregs.idt.base + 16 * vector, &mut gate) {
                return;
            }
            let Some(handler) = gate_handler(&gate) else {
                return;
            };
            handlers[slot] = handler;
        }
        let mut code = vec![0u8; SYSRET_SCAN];
        if read_virt(mem, fd, &sregs, self.msrs.lstar, &mut code) {
            handlers[SYSRET_SLOT] = find_sysret(&code).map_or(0, |at| self.msrs.lstar + at as u64);
            self.prologue = entry_prologue(&code);
        }
        if self.armed && handlers == self.handlers {
            return;
        }
        self.handlers = handlers;
        if let Err(e) = fd.set_guest_debug(&self.debug_control(false)) {
            log::warn!(
                "Software-nested KVM: vCPU {}: cannot set the SYSCALL repair breakpoints: {e}",
                self.index
            );
            return;
        }
        if !self.armed {
            fd.set_sync_valid_reg(SyncReg::Register);
            fd.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        self.armed = true;
        let times = self.counters.armed.fetch_add(1, Ordering::Relaxed);
        let line = format!(
            "Software-nested KVM: vCPU {}: SYSCALL repair armed (LSTAR {:#x}, #PF handler {:#x}, #GP handler {:#x}, entry prologue {}, exit {})",
            self.index,
            self.msrs.lstar,
            handlers[0],
            handlers[1],
            if self.prologue.is_some() {
                "run by Ember"
            } else {
                "not recognised: the kernel's own"
            },
            match handlers[SYSRET_SLOT] {
                0 => "not found: the kernel's own".to_string(),
                at => format!("`swapgs` at {at:#x} run by Ember"),
            }
        );
        // One info line per VM; the other vCPUs and later re-arms at debug level.
        if times == 0 {
            log::info!("{line}");
        } else {
            log::debug!("{line}");
        }
    }

    /// Takes the breakpoints off.
    fn disarm(&mut self, fd: &mut VcpuFd) {
        if let Err(e) = fd.set_guest_debug(&kvm_guest_debug::default()) {
            log::warn!(
                "vCPU {}: cannot take the SYSCALL repair breakpoints off: {e}",
                self.index
            );
        }
        self.armed = false;
        self.handlers = [0; 3];
        log::debug!(
            "Software-nested KVM: vCPU {}: SYSCALL repair disarmed",
            self.index
        );
    }

    /// Handles a KVM_EXIT_DEBUG.
    pub fn on_debug(
        &mut self,
        fd: &mut VcpuFd,
        mem: &GuestMemoryMmap,
        arch: &kvm_debug_exit_arch,
    ) -> DebugOutcome {
        if !self.armed {
            return DebugOutcome::Foreign;
        }
        if self.stepping {
            self.stepping = false;
            if let Err(e) = fd.set_guest_debug(&self.debug_control(false)) {
                log::warn!("vCPU {}: cannot re-arm the SYSCALL repair: {e}", self.index);
                self.disarm(fd);
            }
            return DebugOutcome::Handled;
        }
        let Some(slot) = self.handlers.iter().position(|&h| h != 0 && h == arch.pc) else {
            return DebugOutcome::Foreign;
        };
        let sync = fd.sync_regs();
        let (regs, sregs) = (sync.regs, sync.sregs);
        if slot == SYSRET_SLOT {
            let done = sregs.cs.selector & 3 == 0
                && canonical(regs.rcx)
                && self.finish_sysret(fd, regs, &sregs);
            if !done {
                // Not the state the exit path runs in: let the instructions do what they do.
                self.pass_fault(fd, mem, &sregs, arch.pc);
            }
            return DebugOutcome::Handled;
        }
        let mut raw = [0u8; 48];
        if read_virt(mem, fd, &sregs, regs.rsp, &mut raw) {
            let frame = ExceptionFrame::from_bytes(&raw);
            if regs.rsp < USER_HALF_END {
                // The guest kernel took an exception on a user stack: a fault in the window
                // where SYSCALL's entry or SYSRET's exit runs in ring 0 with the user's RSP.
                log::warn!(
                    "Software-nested KVM: vCPU {}: #{} in ring 0 on the user stack (frame {frame:x?}, CR2 {:#x}, GS base {:#x}, KERNEL_GS_BASE {:#x}, RAX {:#x}, RCX {:#x}, R11 {:#x})",
                    self.index,
                    SLOTS[slot],
                    sregs.cr2,
                    sregs.gs.base,
                    read_msr(fd, MSR_KERNEL_GS_BASE).unwrap_or(u64::MAX),
                    regs.rax,
                    regs.rcx,
                    regs.r11
                );
                // Linux's entry code leaves the previous entry's pt_regs in RAX: its vector
                // (orig_ax) and hardware frame tell where the first entry on this stack hit.
                let mut prev = [0u8; 48];
                if regs.rax >= 0x78 && read_virt(mem, fd, &sregs, regs.rax + 0x78, &mut prev) {
                    log::warn!(
                        "Software-nested KVM: vCPU {}: the entry before (if RAX is its pt_regs): orig_ax/frame {:x?}",
                        self.index,
                        ExceptionFrame::from_bytes(&prev)
                    );
                }
            }
            if is_misdelivered_syscall(&self.msrs, SLOTS[slot], &frame, sregs.cr2, regs.r11) {
                if let Some(events) = event_in_flight(fd) {
                    // An event KVM is injecting at this boundary would be delivered at LSTAR,
                    // before `swapgs`, with the user's GS: let it be delivered at the handler
                    // entry first. Its IRET comes back here and the breakpoint fires again.
                    let n = self.counters.deferred.fetch_add(1, Ordering::Relaxed);
                    if n < 8 {
                        log::debug!(
                            "Software-nested KVM: vCPU {}: system call repair waits for an event in flight ({events})",
                            self.index
                        );
                    }
                    return DebugOutcome::Handled;
                }
                self.finish_syscall(fd, mem, regs, &sregs, &frame);
                return DebugOutcome::Handled;
            }
            if frame.rip == self.msrs.lstar && frame.cs & 3 == 3 {
                // A user-mode fault at LSTAR goes to the guest: a forged jump (IF set, the
                // guest's SIGSEGV is right) or a SYSCALL this check failed to recognise, which
                // kills the process: say which, with what was compared.
                let level = if frame.rflags & RFLAGS_IF == 0 {
                    log::Level::Warn
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "Software-nested KVM: vCPU {}: user-mode fault at LSTAR passed to the guest (vector {}, frame {frame:x?}, CR2 {:#x}, R11 {:#x}, SFMASK {:#x})",
                    self.index,
                    SLOTS[slot],
                    sregs.cr2,
                    regs.r11,
                    self.msrs.sfmask
                );
            }
        } else if !std::mem::replace(&mut self.warned_unreadable, true) {
            log::warn!(
                "Software-nested KVM: vCPU {}: exception frame at {:#x} unreadable at the #{} handler (said once)",
                self.index,
                regs.rsp,
                if SLOTS[slot] == PF_VECTOR { "PF" } else { "GP" }
            );
        }
        self.pass_fault(fd, mem, &sregs, arch.pc);
        DebugOutcome::Handled
    }

    /// Completes a misdelivered SYSCALL: the state the instruction should have produced. The
    /// host has already delivered the #PF in ring 0 (kernel CS, on the kernel stack), so only
    /// general registers and, for the prologue, GS bases change. The system registers are
    /// never written back (KVM_SET_SREGS): on this host doing that at every system call
    /// corrupted user memory of freshly exec'd processes on SMP guests (a static busybox read
    /// zero from its TLS block in about one of 20 fork+exec).
    fn finish_syscall(
        &mut self,
        fd: &mut VcpuFd,
        mem: &GuestMemoryMmap,
        mut regs: kvm_regs,
        sregs: &kvm_sregs,
        frame: &ExceptionFrame,
    ) {
        regs.rip = self.msrs.lstar;
        regs.rsp = frame.rsp;
        regs.rflags = (frame.rflags & !RFLAGS_RF) | RFLAGS_FIXED;
        if let Some(prologue) = self.prologue {
            // The host sometimes fails to emulate the entry's `swapgs` and raises #UD at LSTAR,
            // in ring 0 on the user stack: the guest kernel dies of a double fault. Ember does
            // the prologue itself and the guest starts on its kernel stack.
            if let Some(rsp) = run_prologue(fd, mem, sregs, &prologue, frame.rsp) {
                regs.rsp = rsp;
                regs.rip = self.msrs.lstar + prologue.len;
                self.counters.prologues.fetch_add(1, Ordering::Relaxed);
            }
        }
        fd.sync_regs_mut().regs = regs;
        fd.set_sync_dirty_reg(SyncReg::Register);
        let n = self.counters.repaired.fetch_add(1, Ordering::Relaxed);
        if self.logged_repairs < 2 {
            self.logged_repairs += 1;
            log::debug!(
                "Software-nested KVM: vCPU {}: repair: frame {frame:x?}, GS base {:#x}, KERNEL_GS_BASE {:#x}, CS {:#x}, RAX {:#x}, RCX {:#x}, R11 {:#x}",
                self.index,
                read_msr(fd, MSR_GS_BASE).unwrap_or(u64::MAX),
                read_msr(fd, MSR_KERNEL_GS_BASE).unwrap_or(u64::MAX),
                sregs.cs.selector,
                regs.rax,
                regs.rcx,
                regs.r11
            );
        }
        if n == 0 {
            log::info!(
                "Software-nested KVM: first guest system call repaired (vCPU {}, nr {}, returns to {:#x})",
                self.index,
                regs.rax,
                regs.rcx
            );
        }
    }

    /// Does the `swapgs` of the kernel's SYSCALL exit (at `regs.rip`) and leaves the guest at
    /// the next instruction, so that it runs `sysretq` (or VERW first) itself. The host
    /// emulates `swapgs` and `sysretq` in pieces, and a fault or interrupt between them runs in
    /// ring 0 with the user's GS base, which the guest kernel does not survive. False (nothing
    /// changed) when the GS bases cannot be exchanged.
    fn finish_sysret(&mut self, fd: &mut VcpuFd, mut regs: kvm_regs, sregs: &kvm_sregs) -> bool {
        let Some(user_gs) = read_msr(fd, MSR_KERNEL_GS_BASE) else {
            return false;
        };
        if !write_gs_bases(fd, user_gs, sregs.gs.base) {
            return false;
        }
        regs.rip += SWAPGS_LEN;
        fd.sync_regs_mut().regs = regs;
        fd.set_sync_dirty_reg(SyncReg::Register);
        self.counters.sysrets.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Lets a genuine fault continue past the breakpoint at `pc`.
    fn pass_fault(&mut self, fd: &mut VcpuFd, mem: &GuestMemoryMmap, sregs: &kvm_sregs, pc: u64) {
        self.counters.passed.fetch_add(1, Ordering::Relaxed);
        // Read the bytes now: alternatives patching may rewrite them after arming.
        let mut insn = [0u8; 8];
        let skip = if read_virt(mem, fd, sregs, pc, &mut insn) {
            skippable_len(&insn)
        } else {
            0
        };
        if skip != 0 {
            fd.sync_regs_mut().regs.rip = pc + u64::from(skip);
            fd.set_sync_dirty_reg(SyncReg::Register);
            return;
        }
        self.counters.stepped.fetch_add(1, Ordering::Relaxed);
        match fd.set_guest_debug(&self.debug_control(true)) {
            Ok(()) => self.stepping = true,
            Err(e) => {
                // Without the step the breakpoint would fire again forever: disarm.
                log::warn!(
                    "vCPU {}: cannot single-step past the SYSCALL repair breakpoint ({e}); repair off",
                    self.index
                );
                self.disarm(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX: SyscallMsrs = SyscallMsrs {
        star: 0x0023_0010_0000_0000,
        lstar: 0xffff_ffff_8140_0040,
        // TF DF IF IOPL AC NT
        sfmask: 0x47700,
    };
    const USER_FLAGS: u64 = 0x246;

    fn misdelivered_frame() -> ExceptionFrame {
        ExceptionFrame {
            error: 0x15,
            rip: LINUX.lstar,
            cs: 0x33,
            rflags: (USER_FLAGS & !LINUX.sfmask) | RFLAGS_RF,
            rsp: 0x7ffc_0000_1000,
            ss: 0x2b,
        }
    }

    #[test]
    fn test_misdelivered_pf_is_recognised() {
        let frame = misdelivered_frame();
        assert!(is_misdelivered_syscall(
            &LINUX,
            PF_VECTOR,
            &frame,
            LINUX.lstar,
            USER_FLAGS
        ));
        let gp = ExceptionFrame { error: 0, ..frame };
        assert!(is_misdelivered_syscall(
            &LINUX, GP_VECTOR, &gp, 0, USER_FLAGS
        ));
    }

    #[test]
    fn test_user_jump_to_lstar_with_if_set_is_genuine() {
        // What a user program that jumps to LSTAR itself produces: IF cannot be cleared in
        // ring 3, whatever it put in R11.
        let frame = ExceptionFrame {
            rflags: USER_FLAGS | RFLAGS_RF,
            ..misdelivered_frame()
        };
        for r11 in [USER_FLAGS, USER_FLAGS & !LINUX.sfmask, 0, u64::MAX] {
            assert!(!is_misdelivered_syscall(
                &LINUX,
                PF_VECTOR,
                &frame,
                LINUX.lstar,
                r11
            ));
        }
    }

    #[test]
    fn test_kernel_mode_or_other_address_faults_are_genuine() {
        let frame = misdelivered_frame();
        let kernel = ExceptionFrame {
            cs: 0x10,
            ss: 0x18,
            ..frame
        };
        assert!(!is_misdelivered_syscall(
            &LINUX,
            PF_VECTOR,
            &kernel,
            LINUX.lstar,
            USER_FLAGS
        ));
        let elsewhere = ExceptionFrame {
            rip: 0x40_1000,
            ..frame
        };
        assert!(!is_misdelivered_syscall(
            &LINUX,
            PF_VECTOR,
            &elsewhere,
            LINUX.lstar,
            USER_FLAGS
        ));
        // CR2 elsewhere: a data fault at LSTAR's RIP is not a fetch of LSTAR.
        assert!(!is_misdelivered_syscall(
            &LINUX, PF_VECTOR, &frame, 0x1000, USER_FLAGS
        ));
        // Supervisor-mode error code.
        let sup = ExceptionFrame {
            error: 0x11,
            ..frame
        };
        assert!(!is_misdelivered_syscall(
            &LINUX,
            PF_VECTOR,
            &sup,
            LINUX.lstar,
            USER_FLAGS
        ));
        // R11 that does not match the frame's flags.
        assert!(!is_misdelivered_syscall(
            &LINUX,
            PF_VECTOR,
            &frame,
            LINUX.lstar,
            0x202
        ));
        // Other vectors never match.
        assert!(!is_misdelivered_syscall(
            &LINUX,
            6,
            &frame,
            LINUX.lstar,
            USER_FLAGS
        ));
    }

    #[test]
    fn test_kernel_without_if_in_sfmask_is_not_repaired() {
        let msrs = SyscallMsrs {
            sfmask: LINUX.sfmask & !RFLAGS_IF,
            ..LINUX
        };
        let frame = ExceptionFrame {
            rflags: USER_FLAGS & !msrs.sfmask,
            ..misdelivered_frame()
        };
        assert!(!is_misdelivered_syscall(
            &msrs,
            PF_VECTOR,
            &frame,
            LINUX.lstar,
            USER_FLAGS
        ));
        assert!(!SyscallMsrs::default().repairable());
    }

    #[test]
    fn test_kernel_cs_comes_from_star() {
        assert_eq!(LINUX.kernel_cs(), 0x10);
        let rpl = SyscallMsrs {
            star: 0x0023_0013_0000_0000,
            ..LINUX
        };
        assert_eq!(rpl.kernel_cs(), 0x10);
    }

    #[test]
    fn test_find_sysret_knows_linux_exit_layouts() {
        // Linux 6.1 with the VERW alternative jumped over (the reference kernel).
        let mut code = vec![0x90u8; 0x120];
        code[0x102..0x111].copy_from_slice(&[
            0x0f, 0x01, 0xf8, 0xeb, 0x07, 0x0f, 0x00, 0x2d, 0xb2, 0xfe, 0xff, 0xff, 0x48, 0x0f,
            0x07,
        ]);
        assert_eq!(find_sysret(&code), Some(0x102));
        // VERW executed, and no mitigation at all.
        let verw = [
            0x0f, 0x01, 0xf8, 0x0f, 0x00, 0x2d, 1, 2, 3, 4, 0x48, 0x0f, 0x07,
        ];
        assert_eq!(find_sysret(&verw), Some(0));
        assert_eq!(
            find_sysret(&[0x90, 0x0f, 0x01, 0xf8, 0x48, 0x0f, 0x07]),
            Some(1)
        );
        // A `swapgs` elsewhere (the entry's) and a lone `sysretq` are not the exit.
        assert_eq!(find_sysret(&[0x0f, 0x01, 0xf8, 0x65, 0x48, 0x89]), None);
        assert_eq!(find_sysret(&[0x90, 0x48, 0x0f, 0x07]), None);
    }

    #[test]
    fn test_entry_prologue_is_recognised_exactly() {
        // Linux 6.1's entry_SYSCALL_64 without page-table isolation (the reference kernel).
        let code = [
            0x0f, 0x01, 0xf8, 0x65, 0x48, 0x89, 0x24, 0x25, 0x14, 0x60, 0x00, 0x00, 0x65, 0x48,
            0x8b, 0x24, 0x25, 0xd0, 0xab, 0x01, 0x00, 0x6a, 0x2b,
        ];
        let p = entry_prologue(&code).expect("recognised");
        assert_eq!((p.save_rsp, p.stack_top, p.len), (0x6014, 0x1abd0, 0x15));
        let mut endbr = vec![0xf3, 0x0f, 0x1e, 0xfa];
        endbr.extend_from_slice(&code);
        assert_eq!(entry_prologue(&endbr).map(|p| p.len), Some(0x19));
        // A CR3 switch (page-table isolation) between the two moves, or no swapgs: not ours.
        let mut pti = code.to_vec();
        pti.splice(12..12, [0x0f, 0x20, 0xdc]);
        assert_eq!(entry_prologue(&pti), None);
        assert_eq!(entry_prologue(&code[3..]), None);
    }

    #[test]
    fn test_canonical_addresses() {
        assert!(canonical(0x7fff_ffff_f000) && canonical(LINUX.lstar));
        assert!(!canonical(0x8000_0000_0000));
    }

    #[test]
    fn test_skippable_len_knows_nops_only() {
        assert_eq!(skippable_len(&[0x0f, 0x1f, 0x00, 0xfc]), 3);
        assert_eq!(skippable_len(&[0xf3, 0x0f, 0x1e, 0xfa]), 4);
        assert_eq!(skippable_len(&[0x90]), 1);
        assert_eq!(skippable_len(&[0x0f, 0x1f, 0x44, 0x00, 0x00]), 5);
        assert_eq!(skippable_len(&[0x0f, 0x01, 0xca]), 0); // CLAC
        assert_eq!(skippable_len(&[0xfc]), 0); // CLD
        assert_eq!(skippable_len(&[0x0f, 0x1f]), 0); // truncated
        assert_eq!(skippable_len(&[]), 0);
    }

    #[test]
    fn test_gate_handler_decodes_present_gates() {
        let handler = 0xffff_ffff_8100_1234u64;
        let mut gate = [0u8; 16];
        gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
        gate[2..4].copy_from_slice(&0x10u16.to_le_bytes());
        gate[5] = 0x8e;
        gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
        gate[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
        assert_eq!(gate_handler(&gate), Some(handler));
        gate[5] = 0x0e;
        assert_eq!(gate_handler(&gate), None);
    }

    #[test]
    fn test_translate_walks_4k_and_2m_pages_and_rejects_bad_tables() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)])
            .expect("1 MiB of test memory");
        let (pml4, pdpt, pd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
        let gva = 0xffff_8000_0040_5123u64;
        let idx = |shift: u32| (gva >> shift) & 0x1ff;
        mem.write_obj(pdpt | 3, GuestAddress(pml4 + idx(39) * 8))
            .expect("in memory");
        mem.write_obj(pd | 3, GuestAddress(pdpt + idx(30) * 8))
            .expect("in memory");
        mem.write_obj(pt | 3, GuestAddress(pd + idx(21) * 8))
            .expect("in memory");
        mem.write_obj(0x7_0003u64, GuestAddress(pt + idx(12) * 8))
            .expect("in memory");
        assert_eq!(translate(&mem, pml4, gva), Some(0x7_0123));
        // Turn the PDE into a 2 MiB page at 0x200000.
        mem.write_obj(0x20_0083u64, GuestAddress(pd + idx(21) * 8))
            .expect("in memory");
        assert_eq!(translate(&mem, pml4, gva), Some(0x20_5123));
        // Not present.
        mem.write_obj(0u64, GuestAddress(pd + idx(21) * 8))
            .expect("in memory");
        assert_eq!(translate(&mem, pml4, gva), None);
        // A table pointer outside guest memory.
        mem.write_obj(0xdead_0000_0003u64, GuestAddress(pd + idx(21) * 8))
            .expect("in memory");
        assert_eq!(translate(&mem, pml4, gva), None);
    }
}
