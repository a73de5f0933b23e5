//! A VM made before it is needed. Creating a VM costs little, but on the hosts measured the
//! first memory slot of every new VM costs 3-12 ms whatever its size (later slots 0.1-0.3 ms),
//! the irqchip and PIT up to 7 ms, and the SYSCALL repair's MSR filter 3-24 ms (an SRCU grace
//! period). A thread started with the process pays for all of it while Ember parses its
//! arguments, reads a snapshot or waits on its API socket, and the build or restore takes the
//! ready VM (`PreparedVm::take`). If the thread failed, the caller builds a VM as before.

use std::thread::JoinHandle;

use kvm_bindings::kvm_userspace_memory_region;

use super::syscall_repair;
use super::vm::{KvmHost, Vm, VmError};
use crate::host::HostKind;

/// Where the placeholder page goes: far above any guest RAM or MMIO window, and deleted before
/// the real slots are registered anyway.
const PLACEHOLDER_GPA: u64 = 1 << 40;
const PLACEHOLDER_SLOT: u32 = 0;
const PAGE: usize = 4096;

/// A VM with its irqchip and PIT, KVM's first-slot set-up already paid, and (on
/// software-nested hosts) the system-call MSRs already trapped.
pub struct PreparedVm {
    /// The /dev/kvm handle the VM came from.
    pub host: KvmHost,
    /// The VM, without memory slots.
    pub vm: Vm,
    /// Whether the SYSCALL repair's MSR filter is set (see `syscall_repair`).
    pub msr_filter: bool,
}

impl PreparedVm {
    /// Makes one on this thread.
    pub fn new() -> Result<Self, VmError> {
        let host = KvmHost::open()?;
        let vm = Vm::new(&host)?;
        warm_memory_slots(&vm)?;
        let msr_filter = HostKind::detect().is_software_nested()
            && syscall_repair::trap_syscall_msr_writes(vm.fd()).is_ok();
        Ok(PreparedVm {
            host,
            vm,
            msr_filter,
        })
    }
}

/// Registers a placeholder page as a memory slot and deletes it again: KVM's per-VM memory-slot
/// set-up happens now instead of at the first real slot.
fn warm_memory_slots(vm: &Vm) -> Result<(), VmError> {
    // SAFETY: a fresh anonymous private mapping; checked below and unmapped at the end.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(VmError::Placeholder(std::io::Error::last_os_error()));
    }
    let mut region = kvm_userspace_memory_region {
        slot: PLACEHOLDER_SLOT,
        flags: 0,
        guest_phys_addr: PLACEHOLDER_GPA,
        memory_size: PAGE as u64,
        userspace_addr: page as u64,
    };
    // SAFETY: the page stays mapped until the slot is deleted just below.
    let added = unsafe { vm.fd().set_user_memory_region(region) };
    region.memory_size = 0;
    // SAFETY: deleting the slot (size 0) refers to no memory.
    let deleted = added.and_then(|()| unsafe { vm.fd().set_user_memory_region(region) });
    // SAFETY: `page` is the mapping made above, no longer in any slot.
    unsafe { libc::munmap(page, PAGE) };
    deleted.map_err(|e| VmError::Placeholder(e.into()))
}

/// Whether this process has a finite address-space limit.
fn address_space_limited() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the one struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) };
    rc != 0 || limit.rlim_cur != libc::RLIM_INFINITY
}

/// A `PreparedVm` being made on its own thread.
#[derive(Default)]
pub struct Preparing(Option<JoinHandle<Result<PreparedVm, VmError>>>);

impl Preparing {
    /// Starts making one. Start it before the process's seccomp filters are installed: the
    /// thread makes system calls (open, mmap) that the VMM thread's filter forbids.
    ///
    /// A new thread maps its signal stack in the standard library's start-up, where a failure
    /// aborts the process: under an address-space limit (RLIMIT_AS) no VM is prepared (it is
    /// only a head start), and this returns once the thread is past its start-up, so that a
    /// limit set on Ember from outside afterwards (prlimit) cannot catch it there.
    pub fn start() -> Self {
        if address_space_limited() {
            log::debug!("No VM prepared ahead: the address space is limited (RLIMIT_AS)");
            return Preparing(None);
        }
        let (started, running) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("ember_prepare".into())
            .spawn(move || {
                let _ = started.send(());
                PreparedVm::new()
            })
            .map_err(|e| log::debug!("No VM prepared ahead: cannot start its thread: {e}"))
            .ok();
        if handle.is_some() {
            let _ = running.recv();
        }
        Preparing(handle)
    }

    /// Whether `take` was called (or the thread never started).
    pub fn is_taken(&self) -> bool {
        self.0.is_none()
    }

    /// The prepared VM, waiting for the thread if it is still at work; `None` (said at debug
    /// level) when it failed or was already taken: the caller then makes its own.
    pub fn take(&mut self) -> Option<PreparedVm> {
        match self.0.take()?.join() {
            Ok(Ok(prepared)) => Some(prepared),
            Ok(Err(e)) => {
                log::debug!("No VM prepared ahead: {}", crate::error_chain(&e));
                None
            }
            Err(_) => {
                log::debug!("No VM prepared ahead: its thread panicked");
                None
            }
        }
    }
}
