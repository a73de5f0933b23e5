//! The running microVM: owns the VM, guest memory, devices and vCPU threads, runs the event
//! loop on the main thread, and turns what ends the VM into an outcome and an exit code.
//! API requests while the VM runs (pause, resume, Ctrl-Alt-Del) are answered in vmm/api.rs.

mod api;
mod snapshot;

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use crate::api::{ApiCall, ApiChannel, ApiResponse};
use crate::config::VmConfig;
use crate::device_manager::{ConsoleInput, Devices};
use crate::devices::legacy::console_output::ConsoleOutputError;
use crate::devices::legacy::serial::SerialInput;
use crate::devices::legacy::terminal::RawTerminal;
use crate::events::{EventSink, LifecycleEvent};
use crate::host::HostPolicy;
use crate::seccomp::{self, StartGate, ThreadKind};
use crate::signals::StopSignals;
use crate::vstate::syscall_repair::RepairCounters;
use crate::vstate::vcpu::{self, Vcpu, VcpuContext, VcpuExitReason, VcpuHandle};
use crate::vstate::vm::Vm;

/// Exit status: the guest shut down (reset or power-off).
pub const EXIT_OK: i32 = 0;
/// Exit status: Ember itself failed.
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit status: invalid command line or configuration.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: the guest crashed.
pub const EXIT_GUEST_CRASH: i32 = 3;
/// Exit status base for a host signal (128 + signal number).
pub const EXIT_SIGNAL_BASE: i32 = 128;

/// How long a stopping vCPU may take to leave KVM_RUN before Ember gives up on it.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the VMCALL spin guard samples the vCPUs on software-nested hosts.
const VMCALL_SAMPLE_PERIOD: Duration = Duration::from_millis(500);

/// What ended the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest reset (i8042 or KVM reset event): a reboot.
    Reset,
    /// The guest powered off.
    PowerOff,
    /// The guest crashed.
    Crash(String),
    /// A host signal stopped the VM.
    Signal(i32),
    /// The user typed Ctrl-A x.
    Quit,
    /// Ember failed while the guest ran.
    Error(String),
}

impl VmOutcome {
    /// The process exit status for this outcome (documented in `--help` and docs/usage.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            VmOutcome::Reset | VmOutcome::PowerOff => EXIT_OK,
            VmOutcome::Crash(_) => EXIT_GUEST_CRASH,
            VmOutcome::Signal(sig) => EXIT_SIGNAL_BASE + sig,
            VmOutcome::Quit => EXIT_SIGNAL_BASE + libc::SIGINT,
            VmOutcome::Error(_) => EXIT_VMM_ERROR,
        }
    }
}

/// Errors of the event loop itself.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The event manager failed.
    #[error("Event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    /// An eventfd, timerfd or signalfd could not be created.
    #[error("Failed to create {0}")]
    Io(&'static str, #[source] std::io::Error),
    /// A vCPU thread could not start.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// A seccomp filter could not be installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// The console output thread could not start.
    #[error(transparent)]
    ConsoleOutput(#[from] ConsoleOutputError),
    /// A vCPU of a VM started paused (a restore) did not park.
    #[error("A restored vCPU did not park")]
    PausedStart(#[source] vcpu::VcpuControlError),
}

/// A built microVM, ready to run.
pub struct Vmm {
    // Field order is drop order: the VM (and its memory slots) goes before guest memory.
    vcpus: Vec<Vcpu>,
    devices: Arc<Devices>,
    console: Option<ConsoleInput>,
    vm: Arc<Vm>,
    mem: GuestMemoryMmap,
    policy: HostPolicy,
    syscall_repair: Option<Arc<RepairCounters>>,
    saveable_msrs: Arc<[u32]>,
    diff_base: Option<Arc<File>>,
}

/// What a front end hands the running VMM besides the VM itself; all optional.
#[derive(Default)]
pub struct RunOptions {
    /// API requests from the `ember_api` thread.
    pub api: Option<ApiChannel>,
    /// An `InstanceStart` request to answer once the vCPUs run.
    pub start_call: Option<ApiCall>,
    /// Where lifecycle events go.
    pub events: EventSink,
    /// The stop-signal fd, when the front end blocked the signals before starting threads.
    pub signals: Option<StopSignals>,
    /// The configuration the VM was built from (for `GET /vm/config`).
    pub config: Option<VmConfig>,
    /// Install the seccomp filters on the main and vCPU threads before the guest runs.
    pub seccomp: bool,
    /// Start with every vCPU parked and every device quiesced (a restore without
    /// `resume_vm`): the guest runs from `PATCH /vm` Resumed on.
    pub start_paused: bool,
}

/// Why `Vmm::try_run` returned without an outcome.
pub enum RunError {
    /// Nothing of the guest ran: the options come back.
    NotStarted(Box<NotStarted>),
    /// The VM failed after its threads were set up.
    Failed(VmmError),
}

impl From<VmmError> for RunError {
    fn from(e: VmmError) -> Self {
        RunError::Failed(e)
    }
}

/// A start that failed before any guest instruction ran, and what the front end handed over.
pub struct NotStarted {
    /// Why.
    pub error: VmmError,
    /// The options, unused (`signals` set to the signal fd the VMM used).
    pub options: RunOptions,
}

#[repr(u32)]
enum Token {
    VcpuExit = 1,
    Reset = 2,
    Quit = 3,
    Signal = 4,
    Sample = 5,
    Api = 6,
    PowerOff = 7,
    AcpiReset = 8,
    Events = 9,
    Metrics = 10,
}

/// The event-loop subscriber that decides when the VM ends and answers API requests.
struct Controller {
    exit_evt: EventFd,
    exits: Receiver<(u8, VcpuExitReason)>,
    reset_evt: EventFd,
    poweroff_evt: EventFd,
    acpi_reset_evt: EventFd,
    quit_evt: EventFd,
    signals: StopSignals,
    sampler: Option<TimerFd>,
    /// Fires every 60 s when a metrics path is set.
    metrics_timer: Option<TimerFd>,
    handles: Vec<VcpuHandle>,
    exited: Vec<u8>,
    outcome: Option<VmOutcome>,
    api: Option<ApiChannel>,
    /// Every vCPU is parked and every device quiesced.
    paused: bool,
    // The VM goes before guest memory (drop order).
    vm: Arc<Vm>,
    mem: GuestMemoryMmap,
    devices: Arc<Devices>,
    /// `/proc/self/pagemap`, when the VM was restored (diff snapshots).
    diff_base: Option<Arc<File>>,
    config: Option<VmConfig>,
    events: EventSink,
}

impl Controller {
    fn finish(&mut self, outcome: VmOutcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }

    fn collect_exits(&mut self) {
        let _ = self.exit_evt.read();
        while let Ok((index, reason)) = self.exits.try_recv() {
            self.exited.push(index);
            let outcome = match reason {
                VcpuExitReason::Stopped => continue,
                VcpuExitReason::Reset => VmOutcome::Reset,
                VcpuExitReason::PowerOff => VmOutcome::PowerOff,
                VcpuExitReason::Crash(why) => VmOutcome::Crash(format!("vCPU {index}: {why}")),
                VcpuExitReason::Error(why) => VmOutcome::Error(format!("vCPU {index}: {why}")),
            };
            self.finish(outcome);
        }
    }
}

impl MutEventSubscriber for Controller {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            d if d == Token::VcpuExit as u32 => self.collect_exits(),
            d if d == Token::Reset as u32 => {
                let _ = self.reset_evt.read();
                log::info!("Guest requested a reset through the i8042");
                self.finish(VmOutcome::Reset);
            }
            d if d == Token::PowerOff as u32 => {
                let _ = self.poweroff_evt.read();
                log::info!("Guest powered off (ACPI S5)");
                self.finish(VmOutcome::PowerOff);
            }
            d if d == Token::AcpiReset as u32 => {
                let _ = self.acpi_reset_evt.read();
                log::info!("Guest requested a reset through the ACPI reset register");
                self.finish(VmOutcome::Reset);
            }
            d if d == Token::Quit as u32 => {
                let _ = self.quit_evt.read();
                self.finish(VmOutcome::Quit);
            }
            d if d == Token::Signal as u32 => {
                if let Some(sig) = self.signals.read() {
                    log::info!("Received signal {sig}, stopping the VM");
                    self.finish(VmOutcome::Signal(sig));
                }
            }
            d if d == Token::Sample as u32 => {
                if let Some(timer) = self.sampler.as_mut() {
                    let _ = timer.wait();
                }
                // A parked vCPU has nothing to sample.
                if !self.paused {
                    for handle in &self.handles {
                        handle.request_sample();
                    }
                }
            }
            d if d == Token::Api as u32 => self.serve_api(),
            d if d == Token::Events as u32 => self.events.flush(),
            d if d == Token::Metrics as u32 => {
                if let Some(timer) = self.metrics_timer.as_mut() {
                    let _ = timer.wait();
                }
                let answer = self.flush_metrics();
                if let Some(body) = answer.body.filter(|_| answer.status >= 400) {
                    log::warn!("Periodic metrics: {body}");
                }
            }
            other => log::warn!("Controller: unexpected event token {other}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd: &dyn std::os::fd::AsRawFd, token: Token| {
            if let Err(e) = ops.add(Events::with_data_raw(
                fd.as_raw_fd(),
                token as u32,
                EventSet::IN,
            )) {
                log::error!("Failed to register a VMM event: {e:?}");
            }
        };
        add(&self.exit_evt, Token::VcpuExit);
        add(&self.reset_evt, Token::Reset);
        add(&self.poweroff_evt, Token::PowerOff);
        add(&self.acpi_reset_evt, Token::AcpiReset);
        add(&self.quit_evt, Token::Quit);
        add(&self.signals, Token::Signal);
        if let Some(timer) = &self.sampler {
            add(timer, Token::Sample);
        }
        if let Some(timer) = &self.metrics_timer {
            add(timer, Token::Metrics);
        }
        if let Some(api) = &self.api {
            add(&api.notify, Token::Api);
        }
        // Edge-triggered: one wake-up each time the reader makes room, none while it does not.
        if let Some(fd) = self.events.fd()
            && let Err(e) = ops.add(Events::with_data_raw(
                fd,
                Token::Events as u32,
                EventSet::OUT | EventSet::EDGE_TRIGGERED,
            ))
        {
            // Regular files cannot be watched; their writes never wait.
            log::debug!("Lifecycle events file not watched: {e:?}");
        }
    }
}

type Subscriber = Rc<RefCell<dyn MutEventSubscriber>>;

impl Vmm {
    /// Assembles a VMM from the parts the builder made; `saveable_msrs` from
    /// `vcpu_state::saveable_msrs` (what a snapshot saves of each vCPU).
    pub fn new(
        vm: Vm,
        mem: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        mut devices: Devices,
        policy: HostPolicy,
        syscall_repair: Option<Arc<RepairCounters>>,
        saveable_msrs: Arc<[u32]>,
    ) -> Self {
        let console = devices.console.take();
        Vmm {
            vcpus,
            devices: Arc::new(devices),
            console,
            vm: Arc::new(vm),
            mem,
            policy,
            syscall_repair,
            saveable_msrs,
            diff_base: None,
        }
    }

    /// Lets `PUT /snapshot/create` write diff snapshots against the memory file this VM was
    /// restored from: `pagemap` is this process's `/proc/self/pagemap` (snapshot/diff.rs).
    pub fn set_diff_base(&mut self, pagemap: File) {
        self.diff_base = Some(Arc::new(pagemap));
    }

    /// The VM (for tests and tools that inspect it).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Runs the guest until something ends it; the terminal is restored before returning.
    pub fn run(self) -> Result<VmOutcome, VmmError> {
        self.run_with(RunOptions::default())
    }

    /// `run`, with an API channel, lifecycle events and the front end's signal fd.
    pub fn run_with(self, options: RunOptions) -> Result<VmOutcome, VmmError> {
        self.try_run(options).map_err(|e| match e {
            RunError::NotStarted(not_started) => not_started.error,
            RunError::Failed(e) => e,
        })
    }

    /// `run_with`, but a failure before any guest instruction ran (out of file descriptors or
    /// threads, say) gives the options back, so that an API front end can answer InstanceStart
    /// and keep waiting.
    pub fn try_run(mut self, mut options: RunOptions) -> Result<VmOutcome, RunError> {
        let signals = match options.signals.take() {
            Some(signals) => signals,
            None => StopSignals::new().map_err(|e| VmmError::Io("the signalfd", e))?,
        };
        // Not logged here: the front end reports it (exit message or API answer).
        let not_started = |error, mut options: RunOptions, signals| {
            options.signals = Some(signals);
            RunError::NotStarted(Box::new(NotStarted { error, options }))
        };
        macro_rules! or_give_back {
            ($result:expr) => {
                match $result {
                    Ok(value) => value,
                    Err(error) => return Err(not_started(VmmError::from(error), options, signals)),
                }
            };
        }
        or_give_back!(vcpu::install_kick_handler());
        let mut manager: EventManager<Subscriber> =
            or_give_back!(EventManager::new().map_err(VmmError::EventLoop));

        let eventfd_err = |e| VmmError::Io("an eventfd", e);
        let exit_evt = or_give_back!(EventFd::new(EFD_NONBLOCK).map_err(eventfd_err));
        let quit_evt = or_give_back!(EventFd::new(EFD_NONBLOCK).map_err(eventfd_err));
        let reset_evt = or_give_back!(self.devices.reset_evt.try_clone().map_err(eventfd_err));
        let poweroff_evt =
            or_give_back!(self.devices.poweroff_evt.try_clone().map_err(eventfd_err));
        let acpi_reset_evt =
            or_give_back!(self.devices.acpi_reset_evt.try_clone().map_err(eventfd_err));
        let sampler = if self.policy.vmcall_guard() {
            let mut timer =
                or_give_back!(TimerFd::new().map_err(|e| VmmError::Io("a timerfd", e.into())));
            or_give_back!(
                timer
                    .reset(VMCALL_SAMPLE_PERIOD, Some(VMCALL_SAMPLE_PERIOD))
                    .map_err(|e| VmmError::Io("a timerfd", e.into()))
            );
            log::info!("Software-nested KVM: VMCALL spin guard armed");
            Some(timer)
        } else {
            None
        };

        let metrics_timer = if crate::metrics::path().is_some() {
            let mut timer =
                or_give_back!(TimerFd::new().map_err(|e| VmmError::Io("a timerfd", e.into())));
            let period = crate::metrics::FLUSH_PERIOD;
            or_give_back!(
                timer
                    .reset(period, Some(period))
                    .map_err(|e| VmmError::Io("a timerfd", e.into()))
            );
            Some(timer)
        } else {
            None
        };

        // Raw mode only while the guest owns a terminal console; dropped (restored) on return.
        let mut _raw_terminal = None;
        if let Some(console) = self.console.take() {
            or_give_back!(console.serial.start_output(options.seccomp));
            let stdin = std::io::stdin();
            _raw_terminal = RawTerminal::enter(0);
            match stdin.as_fd().try_clone_to_owned() {
                Ok(fd) => {
                    let quit = or_give_back!(quit_evt.try_clone().map_err(eventfd_err));
                    let input = SerialInput::new(
                        console.serial,
                        File::from(fd),
                        console.space,
                        _raw_terminal.is_some(),
                        quit,
                    );
                    let sub: Subscriber = Rc::new(RefCell::new(input));
                    manager.add_subscriber(sub);
                }
                Err(e) => log::warn!("No serial input: cannot use standard input: {e}"),
            }
        }

        for device in self.devices.virtio.subscribers() {
            let sub: Subscriber = Rc::new(RefCell::new(device));
            manager.add_subscriber(sub);
        }

        let (tx, rx) = channel();
        let ctx = VcpuContext {
            pio: self.devices.pio.clone(),
            mmio: self.devices.mmio.clone(),
            mem: self.mem.clone(),
            policy: self.policy,
            syscall_repair: self.syscall_repair.clone(),
            saveable_msrs: self.saveable_msrs.clone(),
        };
        let started = Instant::now();
        let mut handles = Vec::new();
        let gate = Arc::new(StartGate::default());
        for vcpu in std::mem::take(&mut self.vcpus) {
            let spawned = exit_evt.try_clone().map_err(eventfd_err).and_then(|evt| {
                let handle =
                    vcpu.start(ctx.clone(), tx.clone(), evt, options.seccomp, gate.clone())?;
                Ok(handle)
            });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    // The threads started so far wait at the gate: they end without running.
                    gate.open(false);
                    stop_vcpu_threads(&mut handles, &rx, &mut Vec::new());
                    return Err(not_started(error, options, signals));
                }
            }
        }
        drop(tx);
        let controller_exit_evt = match exit_evt.try_clone() {
            Ok(evt) => evt,
            Err(e) => {
                gate.open(false);
                stop_vcpu_threads(&mut handles, &rx, &mut Vec::new());
                return Err(not_started(eventfd_err(e), options, signals));
            }
        };
        let controller = Rc::new(RefCell::new(Controller {
            exit_evt: controller_exit_evt,
            exits: rx,
            reset_evt,
            poweroff_evt,
            acpi_reset_evt,
            quit_evt,
            signals,
            sampler,
            metrics_timer,
            handles: Vec::new(),
            exited: Vec::new(),
            outcome: None,
            api: options.api,
            paused: false,
            vm: self.vm.clone(),
            mem: self.mem.clone(),
            devices: self.devices.clone(),
            diff_base: self.diff_base.clone(),
            config: options.config,
            events: options.events,
        }));
        manager.add_subscriber(controller.clone());

        let mut start_call = options.start_call;
        // Every thread has its filter before any guest instruction runs: the vCPU threads
        // installed theirs and wait at the gate until the main thread has its own.
        let filtered = gate
            .wait_arrivals(handles.len(), VCPU_STOP_TIMEOUT)
            .map_err(VmmError::Seccomp)
            .and_then(|()| {
                if options.seccomp {
                    seccomp::install(ThreadKind::Vmm).map_err(|e| VmmError::Seccomp(e.to_string()))
                } else {
                    Ok(())
                }
            });
        if options.start_paused {
            // Queued before the gate opens: each thread parks before its first KVM_RUN.
            self.devices.virtio.quiesce();
            for handle in &handles {
                let _ = handle.request_pause();
            }
        }
        gate.open(filtered.is_ok());
        if let Err(e) = filtered {
            controller.borrow_mut().handles = handles;
            Self::stop_vcpus(&mut controller.borrow_mut());
            if let Some(call) = start_call.take() {
                call.answer(ApiResponse::error(500, &crate::error_chain(&e)));
            }
            return Err(RunError::Failed(e));
        }
        if options.seccomp {
            log::info!("seccomp filters installed on the VMM and vCPU threads");
            seccomp::self_test_hook();
        }
        let vcpu_count = handles.len();
        controller.borrow_mut().handles = handles;
        if options.start_paused {
            let parked = controller
                .borrow()
                .handles
                .iter()
                .try_for_each(|h| h.wait_ack(vcpu::VcpuAck::Paused, VCPU_STOP_TIMEOUT));
            if let Err(e) = parked {
                Self::stop_vcpus(&mut controller.borrow_mut());
                let e = VmmError::PausedStart(e);
                if let Some(call) = start_call.take() {
                    call.answer(ApiResponse::error(500, &crate::error_chain(&e)));
                }
                return Err(RunError::Failed(e));
            }
            controller.borrow_mut().paused = true;
        }
        log::info!("Started {vcpu_count} vCPU thread(s)");
        crate::metrics::record_latency(
            "process_start_to_vcpus",
            crate::devices::legacy::boot_timer::since_process_start(),
        );
        controller
            .borrow_mut()
            .events
            .emit(LifecycleEvent::Started {
                vcpus: u8::try_from(vcpu_count).unwrap_or(u8::MAX),
            });
        if options.start_paused {
            log::info!("VM paused (restored without resume_vm)");
            controller.borrow_mut().events.emit(LifecycleEvent::Paused);
        }
        if let Some(call) = start_call {
            call.answer(ApiResponse::no_content());
        }

        let outcome = loop {
            if let Some(outcome) = controller.borrow().outcome.clone() {
                break outcome;
            }
            if let Err(e) = manager.run() {
                break VmOutcome::Error(format!("event loop failed: {e:?}"));
            }
        };
        Self::stop_vcpus(&mut controller.borrow_mut());
        log::debug!("VM ran for {:?}", started.elapsed());
        if crate::metrics::path().is_some() {
            // The last line, with everything since the previous one.
            let _ = controller.borrow().flush_metrics();
        }
        for device in self.devices.virtio.virtio() {
            log::debug!("{}: {}", device.name(), device.counters());
        }
        if let Some(counters) = &self.syscall_repair {
            log::debug!(
                "Software-nested KVM: SYSCALL repair: {} system calls repaired, {} faults passed ({} single-stepped), {} waited for an event in flight, {} entries and {} exits run by the repair, armed {} times",
                counters.repaired.load(Ordering::Relaxed),
                counters.passed.load(Ordering::Relaxed),
                counters.stepped.load(Ordering::Relaxed),
                counters.deferred.load(Ordering::Relaxed),
                counters.prologues.load(Ordering::Relaxed),
                counters.sysrets.load(Ordering::Relaxed),
                counters.armed.load(Ordering::Relaxed)
            );
        }
        match &outcome {
            VmOutcome::Reset => log::info!("Guest reset: the VM is done"),
            VmOutcome::PowerOff => log::info!("Guest powered off"),
            VmOutcome::Crash(why) => log::error!("Guest crashed: {why}"),
            VmOutcome::Signal(sig) => log::info!("Stopped by signal {sig}"),
            VmOutcome::Quit => log::info!("Stopped from the console"),
            VmOutcome::Error(why) => log::error!("VMM failure: {why}"),
        }
        let events = &mut controller.borrow_mut().events;
        events.emit(LifecycleEvent::from_outcome(&outcome));
        events.finish();
        Ok(outcome)
    }

    /// Stops every vCPU thread and waits (bounded) for each to leave KVM_RUN.
    fn stop_vcpus(controller: &mut Controller) {
        stop_vcpu_threads(
            &mut controller.handles,
            &controller.exits,
            &mut controller.exited,
        );
    }
}

/// Writes a metrics line now: the answer to `FlushMetrics` (400 when no metrics path is set,
/// or when the line could not be written whole).
pub fn flush_metrics(sources: &crate::metrics::Sources) -> ApiResponse {
    match crate::metrics::flush(sources) {
        Ok(()) => ApiResponse::no_content(),
        Err(e) => ApiResponse::bad_request(&format!("Cannot flush the metrics: {e}.")),
    }
}

/// Stops the vCPU threads of `handles` and waits (bounded) for each to report on `exits`;
/// `exited` lists those that already did.
fn stop_vcpu_threads(
    handles: &mut [VcpuHandle],
    exits: &Receiver<(u8, VcpuExitReason)>,
    exited: &mut Vec<u8>,
) {
    for handle in handles.iter() {
        handle.request_stop();
    }
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    while exited.len() < handles.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match exits.recv_timeout(left) {
            Ok((index, _)) => exited.push(index),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    for handle in handles.iter_mut() {
        if exited.contains(&handle.index()) {
            handle.join();
        } else {
            log::error!("vCPU {} did not stop in time; leaving it", handle.index());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_outcome_exit_codes_are_distinct() {
        assert_eq!(VmOutcome::Reset.exit_code(), 0);
        assert_eq!(VmOutcome::PowerOff.exit_code(), 0);
        assert_eq!(VmOutcome::Crash("x".into()).exit_code(), EXIT_GUEST_CRASH);
        assert_eq!(VmOutcome::Error("x".into()).exit_code(), EXIT_VMM_ERROR);
        assert_eq!(VmOutcome::Signal(libc::SIGTERM).exit_code(), 143);
        assert_eq!(VmOutcome::Quit.exit_code(), 130);
        assert_ne!(EXIT_USAGE, EXIT_GUEST_CRASH);
    }
}
