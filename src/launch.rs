//! From a front end's request to a finished VM: lifecycle events, the API socket, the wait for
//! configuration and InstanceStart when the API supplies them, the build, and the run.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::api::server::{ApiServer, ApiServerError};
use crate::api::{
    ActionType, ApiCall, ApiChannel, ApiRequest, ApiResponse, InstanceInfo, InstanceState,
    MSG_BEFORE_START,
};
use crate::builder::{StartError, build_microvm};
use crate::config::file::{ConfigDocument, ProcessSettings};
use crate::config::machine::MachineConfigBody;
use crate::config::{ConfigError, VmConfig, VmConfigDraft};
use crate::events::{EventSink, EventsError, LifecycleEvent};
use crate::signals::StopSignals;
use crate::snapshot::params::{RestoreSpec, SnapshotLoadBody};
use crate::snapshot::restore::{RestoreError, restore_microvm};
use crate::vmm::{NotStarted, RunError, RunOptions, VmOutcome, Vmm, VmmError};
use crate::vstate::prepared::{PreparedVm, Preparing};

/// What to launch.
pub struct LaunchOptions {
    /// The configuration so far (complete unless the API is to supply the boot source).
    pub draft: VmConfigDraft,
    /// Start at once (`--kernel` or `--config-file` given) rather than wait for InstanceStart.
    pub start_now: bool,
    /// `--api-sock`.
    pub api_sock: Option<PathBuf>,
    /// `--events`.
    pub events: Option<PathBuf>,
    /// Install the seccomp filters (off only with `--no-seccomp`).
    pub seccomp: bool,
    /// `--restore`: run the VM of a snapshot instead of booting one.
    pub restore: Option<RestoreSpec>,
}

/// Why Ember could not run a VM.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The configuration is incomplete or invalid.
    #[error("Invalid configuration")]
    Config(#[from] ConfigError),
    /// The events file could not be opened.
    #[error(transparent)]
    Events(#[from] EventsError),
    /// The API socket could not be served.
    #[error(transparent)]
    Api(#[from] ApiServerError),
    /// The stop signals or the pre-boot event loop could not be set up.
    #[error("Failed to set up {0}")]
    Io(&'static str, #[source] std::io::Error),
    /// Building the VM failed.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The event loop failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The SIGSYS handler could not be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The snapshot could not be restored.
    #[error("Cannot restore the snapshot")]
    Restore(#[from] RestoreError),
}

impl LaunchError {
    /// Whether the user's input is at fault (exit status 2) rather than the host.
    pub fn is_usage(&self) -> bool {
        match self {
            LaunchError::Config(_) | LaunchError::Events(_) => true,
            LaunchError::Api(e) => e.is_usage(),
            LaunchError::Start(e) => e.is_usage(),
            LaunchError::Restore(e) => e.is_usage(),
            LaunchError::Io(..) | LaunchError::Vmm(_) | LaunchError::Seccomp(_) => false,
        }
    }
}

/// Runs one VM to its end. The API socket, if any, is removed on every return path.
pub fn launch(options: LaunchOptions) -> Result<VmOutcome, LaunchError> {
    crate::process::limit_malloc_arenas();
    // Block the stop signals before any thread starts, so that they reach only the signalfd
    // (never kill the process behind the API socket's back).
    let mut signals = StopSignals::new().map_err(|e| LaunchError::Io("the signalfd", e))?;
    // The VM's slow KVM set-up runs beside the rest of the start (`vstate::prepared`).
    let mut preparing = Preparing::start();
    if options.seccomp {
        crate::seccomp::install_sigsys_handler()?;
    } else {
        log::warn!("seccomp filters are off (--no-seccomp): for debugging only");
    }
    let config = if options.start_now {
        Some(options.draft.build()?)
    } else {
        None
    };
    let mut events = match &options.events {
        Some(path) => match EventSink::open(path, || signals.read()) {
            Ok(sink) => sink,
            Err(EventsError::Stopped { signal, .. }) => {
                log::info!("Received signal {signal} while waiting for an events reader");
                return Ok(VmOutcome::Signal(signal));
            }
            Err(e) => return Err(e.into()),
        },
        None => EventSink::default(),
    };
    let (_server, api) = match &options.api_sock {
        Some(path) => {
            let (server, channel) = ApiServer::start(path, options.seccomp)?;
            (Some(server), Some(channel))
        }
        None => (None, None),
    };

    let seccomp = options.seccomp;
    let built = match (&options.restore, config) {
        (Some(spec), _) => {
            let (vmm, config) = restore_microvm(spec, &options.draft.serial, preparing.take())?;
            Some((vmm, config, !spec.resume))
        }
        (None, Some(config)) => Some((build_microvm(&config, preparing.take())?, config, false)),
        (None, None) => None,
    };
    if let Some((vmm, config, start_paused)) = built {
        let run = RunOptions {
            api,
            start_call: None,
            events,
            signals: Some(signals),
            config: Some(config),
            seccomp,
            start_paused,
        };
        return vmm.run_with(run).map_err(LaunchError::from);
    }
    let Some(mut api) = api else {
        return Err(ConfigError::NoBootSource.into());
    };
    let mut draft = options.draft;
    loop {
        let started = match wait_for_start(&mut draft, &api, signals, &mut preparing)? {
            PreBoot::Start(started) => *started,
            PreBoot::Stopped(outcome) => {
                events.emit(LifecycleEvent::from_outcome(&outcome));
                events.finish();
                return Ok(outcome);
            }
        };
        let run = RunOptions {
            api: Some(api),
            start_call: Some(started.call),
            events,
            signals: Some(started.signals),
            config: Some(started.config),
            seccomp,
            start_paused: started.paused,
        };
        let back = match started.vmm.try_run(run) {
            Ok(outcome) => return Ok(outcome),
            Err(RunError::Failed(e)) => return Err(e.into()),
            Err(RunError::NotStarted(back)) => *back,
        };
        // Out of threads or descriptors before any guest code ran: say why and keep waiting.
        let NotStarted { error, options } = back;
        let (Some(channel), Some(stop)) = (options.api, options.signals) else {
            return Err(error.into());
        };
        if let Some(call) = options.start_call {
            call.answer(start_refusal(&error));
        }
        (api, signals, events) = (channel, stop, options.events);
    }
}

/// The answer to an InstanceStart that failed: 400 with the error and its causes.
fn start_refusal(e: &dyn std::error::Error) -> ApiResponse {
    let message = format!("Cannot start the microVM: {}", crate::error_chain(e));
    log::error!("{message}");
    ApiResponse::bad_request(&format!("{message}."))
}

/// How the pre-boot phase ended.
enum PreBoot {
    /// InstanceStart built the VM.
    Start(Box<Started>),
    /// A stop signal came first.
    Stopped(VmOutcome),
}

/// A VM built by InstanceStart or restored by `PUT /snapshot/load`; `call` is answered once
/// the vCPUs run (or, `paused`, are parked).
struct Started {
    vmm: Vmm,
    config: VmConfig,
    call: ApiCall,
    signals: StopSignals,
    paused: bool,
}

const TOKEN_SIGNAL: u64 = 0;
const TOKEN_API: u64 = 1;

/// Serves the API with no VM yet: configuration requests change the draft, InstanceStart
/// builds the VM. A failed build is answered 400 and Ember keeps waiting (so is a start that
/// failed before the guest ran, in `launch`).
fn wait_for_start(
    draft: &mut VmConfigDraft,
    api: &ApiChannel,
    mut signals: StopSignals,
    preparing: &mut Preparing,
) -> Result<PreBoot, LaunchError> {
    let io = |e| LaunchError::Io("the pre-boot event loop", e);
    let epoll = Epoll::new().map_err(io)?;
    for (fd, token) in [
        (signals.as_raw_fd(), TOKEN_SIGNAL),
        (api.notify.as_raw_fd(), TOKEN_API),
    ] {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(io)?;
    }
    log::info!("Waiting for the configuration and InstanceStart on the API socket");
    let mut events = vec![EpollEvent::default(); 2];
    // A snapshot loads only into an unconfigured Ember (Firecracker's rule).
    let mut configured = false;
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        for event in &events[..n] {
            if event.data() == TOKEN_SIGNAL {
                if let Some(sig) = signals.read() {
                    log::info!("Received signal {sig} before the VM started");
                    return Ok(PreBoot::Stopped(VmOutcome::Signal(sig)));
                }
                continue;
            }
            while let Some(call) = api.next() {
                let built = match &call.request {
                    ApiRequest::Action(ActionType::InstanceStart) => {
                        start(draft, preparing.take()).map(|(vmm, config)| (vmm, config, false))
                    }
                    ApiRequest::LoadSnapshot(body) => {
                        load_snapshot(draft, body, configured, preparing)
                    }
                    request => {
                        let response = handle_preboot(draft, request);
                        configured |= response.status < 300 && is_configuration(request);
                        call.answer(response);
                        continue;
                    }
                };
                match built {
                    Ok((vmm, config, paused)) => {
                        return Ok(PreBoot::Start(Box::new(Started {
                            vmm,
                            config,
                            call,
                            signals,
                            paused,
                        })));
                    }
                    Err(response) => {
                        // The failed build used up the prepared VM: make another for the next.
                        if preparing.is_taken() {
                            *preparing = Preparing::start();
                        }
                        call.answer(response);
                    }
                }
            }
        }
    }
}

/// Builds the VM for InstanceStart, or says why not.
fn start(
    draft: &VmConfigDraft,
    prepared: Option<PreparedVm>,
) -> Result<(Vmm, VmConfig), ApiResponse> {
    let config = draft
        .build()
        .map_err(|e| ApiResponse::bad_request(&format!("Cannot start the microVM: {e}.")))?;
    build_microvm(&config, prepared)
        .map(|vmm| (vmm, config))
        .map_err(|e| start_refusal(&e))
}

/// Whether `request` changes the configuration.
fn is_configuration(request: &ApiRequest) -> bool {
    matches!(
        request,
        ApiRequest::PutMachineConfig(_)
            | ApiRequest::PatchMachineConfig(_)
            | ApiRequest::PutBootSource(_)
            | ApiRequest::PutDrive(_)
            | ApiRequest::PutNet(_)
    )
}

/// Restores the VM of `PUT /snapshot/load`, or says why not (400, Ember keeps waiting).
fn load_snapshot(
    draft: &VmConfigDraft,
    body: &SnapshotLoadBody,
    configured: bool,
    preparing: &mut Preparing,
) -> Result<(Vmm, VmConfig, bool), ApiResponse> {
    if configured {
        return Err(ApiResponse::bad_request(
            "Loading a snapshot is not allowed after configuring the microVM: load it into a fresh Ember.",
        ));
    }
    let spec = body
        .to_spec()
        .map_err(|e| ApiResponse::bad_request(&format!("Cannot load the snapshot: {e}")))?;
    match restore_microvm(&spec, &draft.serial, preparing.take()) {
        Ok((vmm, config)) => Ok((vmm, config, !spec.resume)),
        Err(e) => {
            let message = format!("Cannot load the snapshot: {}", crate::error_chain(&e));
            log::error!("{message}");
            Err(ApiResponse::bad_request(&format!("{message}.")))
        }
    }
}

/// Answers a request before InstanceStart.
pub fn handle_preboot(draft: &mut VmConfigDraft, request: &ApiRequest) -> ApiResponse {
    let applied = |result: Result<(), ConfigError>| match result {
        Ok(()) => ApiResponse::no_content(),
        Err(e) => ApiResponse::bad_request(&format!("{e}.")),
    };
    match request {
        ApiRequest::GetInstanceInfo => {
            ApiResponse::json(&InstanceInfo::new(InstanceState::NotStarted))
        }
        ApiRequest::GetVersion => crate::api::VersionInfo::answer(),
        ApiRequest::GetMachineConfig => ApiResponse::json(&MachineConfigBody::from_config(
            &draft.machine,
            draft.pvm_compat,
        )),
        ApiRequest::GetVmConfig => ApiResponse::json(
            &ConfigDocument::from_draft(draft, ProcessSettings::current()).to_api_json(),
        ),
        ApiRequest::PutMachineConfig(body) => applied(draft.put_machine(body)),
        ApiRequest::PatchMachineConfig(patch) => {
            let now = MachineConfigBody::from_config(&draft.machine, draft.pvm_compat);
            applied(draft.put_machine(&patch.apply(now)))
        }
        ApiRequest::PutBootSource(body) => applied(draft.put_boot(body)),
        ApiRequest::PutDrive(body) => applied(draft.put_drive(body)),
        ApiRequest::PutNet(body) => applied(draft.put_net(body)),
        ApiRequest::PutEntropy(body) => applied(draft.put_entropy(body)),
        ApiRequest::PutVsock(body) => applied(draft.put_vsock(body)),
        ApiRequest::PutSerial(body) => applied(draft.put_serial(body)),
        ApiRequest::PutMetrics(body) => match crate::metrics::configure(&body.metrics_path) {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => ApiResponse::bad_request(&format!("{}.", crate::error_chain(&e))),
        },
        ApiRequest::Action(ActionType::FlushMetrics) => {
            crate::vmm::flush_metrics(&crate::metrics::Sources::default())
        }
        ApiRequest::PutLogger(body) => match crate::logger::configure(&body.settings()) {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => ApiResponse::bad_request(&format!("log_path: {}.", crate::error_chain(&e))),
        },
        ApiRequest::Action(ActionType::InstanceStart) | ApiRequest::LoadSnapshot(_) => {
            ApiResponse::error(
                500,
                "InstanceStart and snapshot loads are handled by the launcher.",
            )
        }
        ApiRequest::Action(ActionType::SendCtrlAltDel)
        | ApiRequest::SetVmState(_)
        | ApiRequest::CreateSnapshot(_) => ApiResponse::bad_request(MSG_BEFORE_START),
        ApiRequest::PatchDrive(_) | ApiRequest::PatchNet(_) => ApiResponse::bad_request(
            "PATCH changes a running microVM's rate limiters: before InstanceStart, PUT the whole resource.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VmStateChange;
    use crate::config::boot::BootSourceBody;

    #[test]
    fn test_preboot_info_is_not_started() {
        let r = handle_preboot(&mut VmConfigDraft::default(), &ApiRequest::GetInstanceInfo);
        assert_eq!(r.status, 200);
        assert!(r.body.expect("body").contains("Not started"));
    }

    #[test]
    fn test_preboot_pause_and_ctrl_alt_del_refused() {
        let mut draft = VmConfigDraft::default();
        for request in [
            ApiRequest::SetVmState(VmStateChange::Paused),
            ApiRequest::SetVmState(VmStateChange::Resumed),
            ApiRequest::Action(ActionType::SendCtrlAltDel),
        ] {
            assert_eq!(handle_preboot(&mut draft, &request).status, 400);
        }
    }

    #[test]
    fn test_preboot_put_machine_config_then_get() {
        let mut draft = VmConfigDraft::default();
        let body = MachineConfigBody {
            vcpu_count: 2,
            mem_size_mib: 64,
            smt: false,
            pvm_compat: Default::default(),
            track_dirty_pages: false,
        };
        let r = handle_preboot(&mut draft, &ApiRequest::PutMachineConfig(body));
        assert_eq!(r.status, 204);
        let r = handle_preboot(&mut draft, &ApiRequest::GetMachineConfig);
        let text = r.body.expect("body");
        assert!(text.contains(r#""vcpu_count":2"#), "{text}");
        assert!(text.contains(r#""mem_size_mib":64"#), "{text}");
    }

    #[test]
    fn test_preboot_bad_boot_source_is_400_naming_file() {
        let body = BootSourceBody {
            kernel_image_path: PathBuf::from("/nonexistent/vmlinux"),
            initrd_path: None,
            boot_args: None,
            boot_protocol: Default::default(),
        };
        let r = handle_preboot(
            &mut VmConfigDraft::default(),
            &ApiRequest::PutBootSource(body),
        );
        assert_eq!(r.status, 400);
        assert!(r.body.expect("body").contains("/nonexistent/vmlinux"));
    }

    #[test]
    fn test_preboot_start_without_boot_source_is_400() {
        let Err(r) = start(&VmConfigDraft::default(), None) else {
            panic!("must not start")
        };
        assert_eq!(r.status, 400);
        assert!(r.body.expect("body").contains("boot-source"));
    }
}
