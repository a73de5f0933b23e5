//! vCPUs: per-vCPU setup, the thread that runs KVM_RUN and dispatches exits, the kick that
//! gets a thread out of KVM_RUN, and the Running / Paused / Exited state machine that pause and
//! resume drive over a channel (its protocol in vcpu_control.rs).

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_run};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::arch::cpuid::{self, CpuidTopology};
use crate::arch::kernel::BootProtocol;
use crate::arch::{lapic, msr, regs};
use crate::devices::bus::Bus;
use crate::host::{EmulationFixup, HostPolicy, KVM_ENOSYS_RETURN, VMCALL};
use crate::metrics::VcpuExitCounters;
use crate::seccomp::{StartGate, ThreadKind};
use crate::vstate::syscall_repair::{self, DebugOutcome, RepairCounters, SyscallRepair};
use crate::vstate::vcpu_control::{Action, PARK_POLL, RunState, transition};
pub use crate::vstate::vcpu_control::{VcpuAck, VcpuControlError, VcpuRequest};
use crate::vstate::vcpu_state::{VcpuState, VcpuStateError};

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("Failed to create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("Failed to read the host's supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// The normalised CPUID does not fit KVM's table.
    #[error("Failed to build the CPUID table")]
    BuildCpuid,
    /// KVM_SET_CPUID2 failed.
    #[error("Failed to set CPUID on vCPU {0}")]
    SetCpuid(u8, #[source] kvm_ioctls::Error),
    /// KVM_SET_MSRS failed or set fewer MSRs than asked.
    #[error("Failed to set the boot MSRs on vCPU {0}")]
    SetMsrs(u8),
    /// Register setup failed.
    #[error("Failed to set up the registers of vCPU {0}")]
    Regs(u8, #[source] regs::RegsError),
    /// LAPIC setup failed.
    #[error("Failed to set up the local APIC of vCPU {0}")]
    Lapic(u8, #[source] lapic::LapicError),
    /// The kick signal handler could not be installed.
    #[error("Failed to install the vCPU kick signal handler")]
    SignalHandler(#[source] vmm_sys_util::errno::Error),
    /// The vCPU thread could not be spawned.
    #[error("Failed to spawn the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
}

/// Why a vCPU thread ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuExitReason {
    /// The VMM asked it to stop.
    Stopped,
    /// The guest asked for a reset (KVM system event).
    Reset,
    /// The guest powered off (KVM system event).
    PowerOff,
    /// The guest crashed: triple fault, unrecoverable emulation failure, failed entry.
    Crash(String),
    /// KVM_RUN itself failed.
    Error(String),
}

/// What the VMM and a vCPU thread share.
#[derive(Default)]
pub struct VcpuShared {
    stop: AtomicBool,
    sample: AtomicBool,
    exits: VcpuExitCounters,
}

thread_local! {
    /// This thread's kvm_run mapping, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by the vCPU thread before
        // its first KVM_RUN and valid while the thread lives; a volatile byte store is
        // async-signal-safe. KVM reads immediate_exit on entry, so a kick that lands just before
        // KVM_RUN still makes it return at once.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick signal handler; call once before any vCPU thread starts.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::SignalHandler)
}

/// The host's supported CPUID table (KVM_GET_SUPPORTED_CPUID). Fetch it once per VM: on a
/// software-nested host every CPUID the host kernel executes traps to the outer hypervisor, and
/// the ioctl took ~0.3-0.4 ms here, each time.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VcpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VcpuError::SupportedCpuid)
}

/// A configured vCPU, before its thread starts.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `index` on `vm`.
    pub fn new(vm: &VmFd, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        Ok(Vcpu { index, fd })
    }

    /// Sets CPUID (from `supported`, the host's table from `supported_cpuid`), MSRs, FPU and
    /// LAPIC; for the boot vCPU also the entry registers.
    pub fn configure(
        &self,
        supported: &CpuId,
        mem: &GuestMemoryMmap,
        num_cpus: u8,
        policy: HostPolicy,
        boot: Option<(u64, BootProtocol)>,
    ) -> Result<(), VcpuError> {
        let i = self.index;
        let topo = CpuidTopology {
            cpu_id: i,
            num_cpus,
        };
        let entries = cpuid::normalize(supported.as_slice(), topo, policy.hide_kvm_leaves());
        let cpuid = CpuId::from_entries(&entries).map_err(|_| VcpuError::BuildCpuid)?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::SetCpuid(i, e))?;

        let msrs = msr::boot_msrs();
        let set = self.fd.set_msrs(&msrs).map_err(|_| VcpuError::SetMsrs(i))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::SetMsrs(i));
        }
        regs::setup_fpu(&self.fd).map_err(|e| VcpuError::Regs(i, e))?;
        if let Some((entry, protocol)) = boot {
            regs::setup_regs(&self.fd, entry, protocol).map_err(|e| VcpuError::Regs(i, e))?;
            regs::setup_sregs(mem, &self.fd, protocol).map_err(|e| VcpuError::Regs(i, e))?;
        }
        lapic::set_lint(&self.fd).map_err(|e| VcpuError::Lapic(i, e))?;
        Ok(())
    }

    /// The whole state of this vCPU (not running yet, or parked); `msrs` from
    /// `vcpu_state::saveable_msrs`.
    pub fn save_state(&self, msrs: &[u32]) -> Result<VcpuState, VcpuStateError> {
        VcpuState::save(&self.fd, msrs)
    }

    /// The vCPU index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Puts `state` into this vCPU, configured (CPUID set) and not started.
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), VcpuStateError> {
        state.restore(&self.fd)
    }

    /// Starts the vCPU thread `ember_vcpu{index}`. Its exit reason goes to `exits`, then
    /// `exit_evt` is written so the event loop wakes up.
    pub fn start(
        self,
        ctx: VcpuContext,
        exits: Sender<(u8, VcpuExitReason)>,
        exit_evt: EventFd,
        seccomp: bool,
        gate: Arc<StartGate>,
    ) -> Result<VcpuHandle, VcpuError> {
        let index = self.index;
        let shared = Arc::new(VcpuShared::default());
        let thread_shared = shared.clone();
        let (requests_tx, requests) = channel();
        let (acks, acks_rx) = channel();
        let repair = ctx
            .syscall_repair
            .clone()
            .map(|counters| SyscallRepair::new(index, counters));
        let thread = std::thread::Builder::new()
            .name(format!("ember_vcpu{index}"))
            .spawn(move || {
                let installed = if seccomp {
                    crate::seccomp::install(ThreadKind::Vcpu).map_err(|e| e.to_string())
                } else {
                    Ok(())
                };
                if !gate.arrive_and_wait(installed) {
                    let _ = exits.send((index, VcpuExitReason::Stopped));
                    let _ = exit_evt.write(1);
                    return;
                }
                let mut runner = VcpuRunner {
                    index,
                    fd: self.fd,
                    ctx,
                    shared: thread_shared,
                    requests,
                    acks,
                    last_vmcall_rip: None,
                    repair,
                };
                let reason = runner.run();
                log::debug!("vCPU {index} exited: {reason:?}");
                // The receiver only disappears when the VMM is already tearing down.
                let _ = exits.send((index, reason));
                let _ = exit_evt.write(1);
            })
            .map_err(|e| VcpuError::Spawn(index, e))?;
        Ok(VcpuHandle {
            index,
            thread: Some(thread),
            shared,
            requests: requests_tx,
            acks: acks_rx,
        })
    }
}

/// What a running vCPU needs from the VM.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Guest memory (for decoding the instruction at an emulation failure).
    pub mem: GuestMemoryMmap,
    /// The host compatibility policy.
    pub policy: HostPolicy,
    /// The SYSCALL repair's counters, when the VM traps the system-call MSRs for it
    /// (software-nested hosts only; see `syscall_repair`).
    pub syscall_repair: Option<Arc<RepairCounters>>,
    /// The MSRs a `SaveState` request reads (`vcpu_state::saveable_msrs`).
    pub saveable_msrs: Arc<[u32]>,
}

/// The VMM's handle on a running vCPU thread.
pub struct VcpuHandle {
    index: u8,
    thread: Option<JoinHandle<()>>,
    shared: Arc<VcpuShared>,
    requests: Sender<VcpuRequest>,
    acks: Receiver<VcpuAck>,
}

impl VcpuHandle {
    /// vCPU index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The exits this vCPU's thread counted (for the metrics).
    pub fn exit_counters(&self) -> &VcpuExitCounters {
        &self.shared.exits
    }

    fn signal(&self) {
        if let Some(thread) = &self.thread {
            // SAFETY: the pthread handle belongs to a thread we spawned and have not joined;
            // the kick signal has a handler installed before any vCPU started.
            unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
        }
    }

    /// Asks the vCPU to stop. The flag is set before the signal so that the thread, woken by
    /// the signal (or about to enter KVM_RUN, which immediate_exit makes return at once), finds
    /// it when it checks.
    pub fn request_stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // A parked thread sleeps on its channel, where the signal does not reach it.
        let _ = self.requests.send(VcpuRequest::Stop);
        self.signal();
    }

    /// Asks the vCPU to leave KVM_RUN and park. The request is queued before the signal, so the
    /// thread finds it whether the signal interrupts KVM_RUN or lands just before it (then
    /// immediate_exit makes KVM_RUN return at once). Wait for the answer with `wait_ack`.
    pub fn request_pause(&self) -> Result<(), VcpuControlError> {
        self.drain_acks();
        self.requests
            .send(VcpuRequest::Pause)
            .map_err(|_| VcpuControlError::Exited(self.index))?;
        self.signal();
        Ok(())
    }

    /// Lets a parked vCPU continue. No signal is needed: a parked thread waits on the channel.
    pub fn request_resume(&self) -> Result<(), VcpuControlError> {
        self.drain_acks();
        self.requests
            .send(VcpuRequest::Resume)
            .map_err(|_| VcpuControlError::Exited(self.index))
    }

    /// Drops answers left over from an earlier request that timed out.
    fn drain_acks(&self) {
        while self.acks.try_recv().is_ok() {}
    }

    /// Waits (at most `timeout`) for the thread to answer `expected`.
    pub fn wait_ack(&self, expected: VcpuAck, timeout: Duration) -> Result<(), VcpuControlError> {
        let what = match expected {
            VcpuAck::Paused => "pause",
            VcpuAck::Resumed => "resume",
            VcpuAck::State(_) => "a state request",
        };
        let got = self.recv_ack(what, timeout)?;
        if std::mem::discriminant(&got) == std::mem::discriminant(&expected) {
            Ok(())
        } else {
            Err(VcpuControlError::Unexpected {
                index: self.index,
                got: got.name(),
            })
        }
    }

    fn recv_ack(&self, what: &'static str, timeout: Duration) -> Result<VcpuAck, VcpuControlError> {
        self.acks.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => VcpuControlError::Timeout {
                index: self.index,
                what,
                timeout_ms: timeout.as_millis(),
            },
            RecvTimeoutError::Disconnected => VcpuControlError::Exited(self.index),
        })
    }

    /// Asks a paused vCPU for its whole state and waits (at most `timeout`) for it. No signal:
    /// a paused thread waits on its channel.
    pub fn save_state(&self, timeout: Duration) -> Result<VcpuState, VcpuControlError> {
        self.drain_acks();
        self.requests
            .send(VcpuRequest::SaveState)
            .map_err(|_| VcpuControlError::Exited(self.index))?;
        match self.recv_ack("a state request", timeout)? {
            VcpuAck::State(result) => (*result).map_err(|reason| VcpuControlError::SaveState {
                index: self.index,
                reason,
            }),
            other => Err(VcpuControlError::Unexpected {
                index: self.index,
                got: other.name(),
            }),
        }
    }

    /// Asks the vCPU to look at where it is (the VMCALL spin guard).
    pub fn request_sample(&self) {
        self.shared.sample.store(true, Ordering::SeqCst);
        self.signal();
    }

    /// Waits for the thread to end.
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("vCPU {} thread panicked", self.index);
        }
    }
}

struct VcpuRunner {
    index: u8,
    fd: VcpuFd,
    ctx: VcpuContext,
    shared: Arc<VcpuShared>,
    requests: Receiver<VcpuRequest>,
    acks: Sender<VcpuAck>,
    last_vmcall_rip: Option<u64>,
    repair: Option<SyscallRepair>,
}

enum Step {
    Continue,
    Exit(VcpuExitReason),
    InternalError,
    Interrupted,
    Debug(kvm_bindings::kvm_debug_exit_arch),
    WriteMsr(u32, u64),
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;
const BREAKPOINT_VECTOR: u8 = 3;
const MAX_INSN_LEN: usize = 15;
/// Stack words logged at a guest crash.
const STACK_WORDS: usize = 24;

impl VcpuRunner {
    fn run(&mut self) -> VcpuExitReason {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|r| r.set(run_ptr));
        // A restored vCPU may already run a guest kernel with its system calls set up: the
        // repair arms from the MSRs and IDT now rather than at the first sample tick (a vCPU
        // at its boot entry is not in long mode yet, and this does nothing).
        if let Some(repair) = self.repair.as_mut() {
            repair.refresh(&mut self.fd, &self.ctx.mem);
        }
        let reason = self.run_loop();
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
        reason
    }

    /// Handles queued requests; parks while paused. Returns `Exited` when the thread must end.
    fn handle_requests(&mut self) -> RunState {
        let mut state = RunState::Running;
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return RunState::Exited;
            }
            let request = match state {
                RunState::Running => match self.requests.try_recv() {
                    Ok(request) => request,
                    Err(_) => return RunState::Running,
                },
                RunState::Paused => match self.requests.recv_timeout(PARK_POLL) {
                    Ok(request) => request,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return RunState::Exited,
                },
                RunState::Exited => return RunState::Exited,
            };
            let ack = match transition(request, state) {
                Action::Go(next, ack) => {
                    if next != state {
                        log::debug!("vCPU {}: {state:?} -> {next:?}", self.index);
                    }
                    state = next;
                    match next {
                        RunState::Paused if ack => Some(VcpuAck::Paused),
                        RunState::Running if ack => Some(VcpuAck::Resumed),
                        _ => None,
                    }
                }
                Action::SaveState => Some(VcpuAck::State(Box::new(self.save_state()))),
                Action::Refuse(why) => Some(VcpuAck::State(Box::new(Err(why.to_string())))),
            };
            if let Some(ack) = ack {
                // The VMM only goes away when it is tearing down; the stop flag follows.
                let _ = self.acks.send(ack);
            }
        }
    }

    /// The whole state of this (parked) vCPU. An exit the thread handled last (a port or MMIO
    /// read, say) is finished first: KVM completes that instruction only on the next KVM_RUN,
    /// which `immediate_exit` makes return before any guest instruction runs.
    fn save_state(&mut self) -> Result<VcpuState, String> {
        self.fd.set_kvm_immediate_exit(1);
        let completed = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Ok(exit) => Err(format!("KVM_RUN did not complete the last exit: {exit:?}")),
            Err(e) => Err(format!(
                "KVM_RUN failed while completing the last exit: {e}"
            )),
        };
        self.fd.set_kvm_immediate_exit(0);
        completed?;
        VcpuState::save(&self.fd, &self.ctx.saveable_msrs).map_err(|e| crate::error_chain(&e))
    }

    fn run_loop(&mut self) -> VcpuExitReason {
        loop {
            if self.handle_requests() == RunState::Exited {
                return VcpuExitReason::Stopped;
            }
            if self.shared.sample.swap(false, Ordering::SeqCst) {
                self.check_vmcall_spin();
                if let Some(repair) = self.repair.as_mut() {
                    repair.refresh(&mut self.fd, &self.ctx.mem);
                }
            }
            let step = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    VcpuExitCounters::count(&self.shared.exits.io_in);
                    self.ctx.pio.read(u64::from(port), data);
                    Step::Continue
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    VcpuExitCounters::count(&self.shared.exits.io_out);
                    self.ctx.pio.write(u64::from(port), data);
                    Step::Continue
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    VcpuExitCounters::count(&self.shared.exits.mmio_read);
                    self.ctx.mmio.read(addr, data);
                    Step::Continue
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    VcpuExitCounters::count(&self.shared.exits.mmio_write);
                    self.ctx.mmio.write(addr, data);
                    Step::Continue
                }
                Ok(VcpuExit::Shutdown) => Step::Exit(VcpuExitReason::Crash(
                    "triple fault (KVM_EXIT_SHUTDOWN)".into(),
                )),
                Ok(VcpuExit::SystemEvent(kind, _)) => Step::Exit(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExitReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => VcpuExitReason::Reset,
                    KVM_SYSTEM_EVENT_CRASH => VcpuExitReason::Crash("guest crash event".into()),
                    other => VcpuExitReason::Crash(format!("unknown system event {other}")),
                }),
                Ok(VcpuExit::FailEntry(reason, cpu)) => Step::Exit(VcpuExitReason::Crash(format!(
                    "KVM entry failure, hardware reason {reason:#x} on CPU {cpu}"
                ))),
                Ok(VcpuExit::InternalError) => Step::InternalError,
                Ok(VcpuExit::Hlt) => Step::Exit(VcpuExitReason::Crash(
                    "vCPU halted with no way to wake up".into(),
                )),
                Ok(VcpuExit::IoapicEoi(_) | VcpuExit::Intr | VcpuExit::IrqWindowOpen) => {
                    VcpuExitCounters::count(&self.shared.exits.other);
                    Step::Continue
                }
                Ok(VcpuExit::Debug(arch)) => Step::Debug(arch),
                Ok(VcpuExit::X86Wrmsr(exit)) => Step::WriteMsr(exit.index, exit.data),
                Ok(other) => Step::Exit(VcpuExitReason::Crash(format!(
                    "unexpected KVM exit {other:?}"
                ))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    Step::Interrupted
                }
                Err(e) => Step::Exit(VcpuExitReason::Error(format!("KVM_RUN failed: {e}"))),
            };
            match step {
                Step::Continue => {}
                Step::Interrupted => self.fd.set_kvm_immediate_exit(0),
                Step::InternalError => {
                    if let Err(reason) = self.handle_internal_error() {
                        return reason;
                    }
                }
                Step::Exit(reason) => return reason,
                Step::Debug(arch) => {
                    let outcome = match self.repair.as_mut() {
                        Some(repair) => repair.on_debug(&mut self.fd, &self.ctx.mem, &arch),
                        None => DebugOutcome::Foreign,
                    };
                    if outcome == DebugOutcome::Foreign {
                        return VcpuExitReason::Crash(format!(
                            "unexpected debug exit at {:#x} (DR6 {:#x})",
                            arch.pc, arch.dr6
                        ));
                    }
                }
                Step::WriteMsr(index, data) => self.write_trapped_msr(index, data),
            }
        }
    }

    /// A guest WRMSR that the SYSCALL repair's MSR filter sent here: applied by the repair, or
    /// refused with #GP as the CPU would refuse it.
    fn write_trapped_msr(&mut self, index: u32, data: u64) {
        let applied = match self.repair.as_mut() {
            Some(repair) if syscall_repair::is_trapped_msr(index) => {
                repair.on_msr_write(&mut self.fd, &self.ctx.mem, index, data)
            }
            _ => false,
        };
        if !applied {
            log::debug!(
                "vCPU {}: guest WRMSR {index:#x} <- {data:#x} refused (#GP)",
                self.index
            );
            // The last exit was KVM_EXIT_X86_WRMSR, so `msr` is the member of the union KVM
            // filled in; `error` tells it to inject #GP on the next KVM_RUN.
            self.fd.get_kvm_run().__bindgen_anon_1.msr.error = 1;
        }
    }

    /// The bytes at the guest's current RIP (up to 15), and RIP.
    fn instruction_at_rip(&self) -> Option<(kvm_bindings::kvm_regs, Vec<u8>)> {
        let regs = self.fd.get_regs().ok()?;
        let translation = self.fd.translate_gva(regs.rip).ok()?;
        if translation.valid == 0 {
            return None;
        }
        let mut bytes = vec![0u8; MAX_INSN_LEN];
        let mut got = 0;
        // Read byte by byte so an instruction near the end of RAM still decodes.
        while got < MAX_INSN_LEN
            && self
                .ctx
                .mem
                .read_obj::<u8>(GuestAddress(translation.physical_address + got as u64))
                .map(|b| bytes[got] = b)
                .is_ok()
        {
            got += 1;
        }
        bytes.truncate(got);
        Some((regs, bytes))
    }

    fn handle_internal_error(&mut self) -> Result<(), VcpuExitReason> {
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the union is the one
        // KVM filled in.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let Some((mut regs, bytes)) = self.instruction_at_rip() else {
            return Err(VcpuExitReason::Crash(format!(
                "KVM internal error (suberror {suberror}), instruction unreadable"
            )));
        };
        let fixup = self.ctx.policy.emulation_fixup(&bytes);
        let description = format!(
            "KVM internal error (suberror {suberror}) at RIP {:#x}, instruction bytes {:02x?}",
            regs.rip,
            &bytes[..bytes.len().min(8)]
        );
        let crash = || VcpuExitReason::Crash(description.clone());
        match fixup {
            None => {
                self.log_guest_stack(&regs);
                Err(crash())
            }
            Some(EmulationFixup::Skip(len)) => {
                log::debug!(
                    "vCPU {}: skipping unemulated instruction {:02x?} at {:#x}",
                    self.index,
                    &bytes[..len as usize],
                    regs.rip
                );
                regs.rip += len;
                self.fd.set_regs(&regs).map_err(|_| crash())
            }
            Some(EmulationFixup::Breakpoint) => {
                log::debug!(
                    "vCPU {}: INT3 at {:#x} failed to emulate, injecting #BP",
                    self.index,
                    regs.rip
                );
                regs.rip += 1;
                self.fd.set_regs(&regs).map_err(|_| crash())?;
                let mut events = self.fd.get_vcpu_events().map_err(|_| crash())?;
                events.exception.injected = 1;
                events.exception.nr = BREAKPOINT_VECTOR;
                events.exception.has_error_code = 0;
                events.exception.error_code = 0;
                self.fd.set_vcpu_events(&events).map_err(|_| crash())
            }
        }
    }

    /// Logs (debug) the top of the guest stack at a crash: the return addresses there name the
    /// kernel path that reached the failing instruction (map them through System.map).
    fn log_guest_stack(&self, regs: &kvm_bindings::kvm_regs) {
        let Ok(sregs) = self.fd.get_sregs() else {
            return;
        };
        let mut raw = [0u8; 8 * STACK_WORDS];
        if !syscall_repair::read_virt(&self.ctx.mem, &self.fd, &sregs, regs.rsp, &mut raw) {
            return;
        }
        let words: Vec<String> = raw
            .chunks_exact(8)
            .map(|w| {
                let mut q = [0u8; 8];
                q.copy_from_slice(w);
                format!("{:#x}", u64::from_le_bytes(q))
            })
            .collect();
        log::debug!(
            "vCPU {}: guest stack at {:#x} (CS {:#x}): {}",
            self.index,
            regs.rsp,
            sregs.cs.selector,
            words.join(" ")
        );
    }

    /// The VMCALL spin guard: a VMCALL that KVM never completes leaves RIP on it. Seen twice in
    /// a row at the same RIP, it is completed by hand with -KVM_ENOSYS.
    fn check_vmcall_spin(&mut self) {
        if !self.ctx.policy.vmcall_guard() {
            return;
        }
        let Some((mut regs, bytes)) = self.instruction_at_rip() else {
            self.last_vmcall_rip = None;
            return;
        };
        // Where each vCPU is, twice a second: `--log-level trace` shows where a slow or stuck
        // emulated boot spends its time (map the RIP through the kernel's System.map).
        log::trace!("vCPU {} at RIP {:#x}", self.index, regs.rip);
        if !bytes.starts_with(&VMCALL) {
            self.last_vmcall_rip = None;
            return;
        }
        if self.last_vmcall_rip == Some(regs.rip) {
            log::warn!(
                "Software-nested KVM: vCPU {} spun on VMCALL (nr {}) at {:#x}; returning -KVM_ENOSYS",
                self.index,
                regs.rax,
                regs.rip
            );
            regs.rip += VMCALL.len() as u64;
            regs.rax = KVM_ENOSYS_RETURN;
            if let Err(e) = self.fd.set_regs(&regs) {
                log::error!("vCPU {}: failed to skip VMCALL: {e}", self.index);
            }
            self.last_vmcall_rip = None;
        } else {
            self.last_vmcall_rip = Some(regs.rip);
        }
    }
}
