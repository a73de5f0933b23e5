//! API requests while the VM runs: state queries, pause and resume of every vCPU, and
//! Ctrl-Alt-Del. Configuration changes are refused once the VM has started.

use std::time::{Duration, Instant};

use super::Controller;
use crate::api::{
    ActionType, ApiRequest, ApiResponse, InstanceInfo, InstanceState, MSG_AFTER_START,
    VmStateChange,
};
use crate::config::VmConfigDraft;
use crate::config::drive::DrivePatch;
use crate::config::file::{ConfigDocument, ProcessSettings};
use crate::config::machine::MachineConfigBody;
use crate::config::net::NetPatch;
use crate::config::rate_limiter;
use crate::device_manager::VirtioHandle;
use crate::events::LifecycleEvent;
use crate::metrics::Sources;
use crate::vstate::vcpu::{VcpuAck, VcpuControlError};

/// How long each vCPU may take to acknowledge a pause or resume.
const VCPU_ACK_TIMEOUT: Duration = Duration::from_secs(2);

impl Controller {
    /// Answers every waiting API request.
    pub(super) fn serve_api(&mut self) {
        while let Some(call) = self.api.as_ref().and_then(|api| api.next()) {
            let response = self.handle_api(&call.request);
            call.answer(response);
        }
    }

    fn is_paused(&self) -> bool {
        self.paused
    }

    fn handle_api(&mut self, request: &ApiRequest) -> ApiResponse {
        match request {
            ApiRequest::GetInstanceInfo => {
                ApiResponse::json(&InstanceInfo::new(if self.is_paused() {
                    InstanceState::Paused
                } else {
                    InstanceState::Running
                }))
            }
            ApiRequest::GetVersion => crate::api::VersionInfo::answer(),
            ApiRequest::GetMachineConfig => match &self.config {
                Some(c) => {
                    ApiResponse::json(&MachineConfigBody::from_config(&c.machine, c.pvm_compat))
                }
                None => ApiResponse::error(500, "The configuration is not known."),
            },
            ApiRequest::GetVmConfig => match &self.config {
                Some(c) => ApiResponse::json(
                    &ConfigDocument::from_draft(&VmConfigDraft::from(c), ProcessSettings::current())
                        .to_api_json(),
                ),
                None => ApiResponse::error(500, "The configuration is not known."),
            },
            ApiRequest::PutMachineConfig(_)
            | ApiRequest::PatchMachineConfig(_)
            | ApiRequest::PutBootSource(_)
            | ApiRequest::PutDrive(_)
            | ApiRequest::PutNet(_)
            | ApiRequest::PutEntropy(_)
            | ApiRequest::PutVsock(_)
            | ApiRequest::PutSerial(_)
            | ApiRequest::PutMetrics(_)
            // Opening a log file needs open(2), which the running VMM's seccomp filter refuses.
            | ApiRequest::PutLogger(_) => ApiResponse::bad_request(MSG_AFTER_START),
            ApiRequest::Action(ActionType::InstanceStart) => {
                ApiResponse::bad_request("The microVM is already running.")
            }
            ApiRequest::Action(ActionType::SendCtrlAltDel) => {
                if self.is_paused() {
                    return ApiResponse::bad_request(
                        "The microVM is paused: resume it before sending Ctrl-Alt-Del.",
                    );
                }
                match self.devices.i8042.send_ctrl_alt_del() {
                    Ok(()) => {
                        log::info!("Ctrl-Alt-Del sent to the guest keyboard");
                        ApiResponse::no_content()
                    }
                    Err(e) => ApiResponse::bad_request(&format!("{e}.")),
                }
            }
            ApiRequest::Action(ActionType::FlushMetrics) => self.flush_metrics(),
            ApiRequest::PatchDrive(patch) => self.patch_drive(patch),
            ApiRequest::PatchNet(patch) => self.patch_net(patch),
            ApiRequest::SetVmState(VmStateChange::Paused) => self.pause(),
            ApiRequest::SetVmState(VmStateChange::Resumed) => self.resume(),
            ApiRequest::CreateSnapshot(body) => self.create_snapshot(body),
            ApiRequest::LoadSnapshot(_) => ApiResponse::bad_request(
                "A snapshot can only be loaded before any configuration: this microVM already runs.",
            ),
        }
    }

    /// `PATCH /drives/{id}`: the disk's rate limiter changes at once, and so does the
    /// configuration `GET /vm/config` and snapshots report.
    fn patch_drive(&mut self, patch: &DrivePatch) -> ApiResponse {
        let id = &patch.drive_id;
        let Some(drive) = self
            .config
            .as_mut()
            .and_then(|c| c.drives.iter_mut().find(|d| &d.id == id))
        else {
            return ApiResponse::bad_request(&format!("No drive with id {id}."));
        };
        let Some(update) = &patch.rate_limiter else {
            return ApiResponse::no_content();
        };
        let handle = self.devices.virtio.virtio().iter().find(|e| e.id() == id);
        let Some(VirtioHandle::Block(block)) = handle.map(|e| e.handle()) else {
            return ApiResponse::error(500, &format!("Drive {id} has no device."));
        };
        block
            .lock()
            .expect("block device lock poisoned")
            .update_rate_limiter(update);
        drive.rate_limiter = rate_limiter::patch(drive.rate_limiter, Some(update));
        log::info!("Drive {id}: rate limiter now {:?}", drive.rate_limiter);
        ApiResponse::no_content()
    }

    /// `PATCH /network-interfaces/{id}`: the interface's receive and transmit rate limiters
    /// change at once, and so does the configuration.
    fn patch_net(&mut self, patch: &NetPatch) -> ApiResponse {
        let id = &patch.iface_id;
        let Some(net) = self
            .config
            .as_mut()
            .and_then(|c| c.nets.iter_mut().find(|n| &n.id == id))
        else {
            return ApiResponse::bad_request(&format!("No network interface with id {id}."));
        };
        let handle = self.devices.virtio.virtio().iter().find(|e| e.id() == id);
        let Some(VirtioHandle::Net(nic)) = handle.map(|e| e.handle()) else {
            return ApiResponse::error(500, &format!("Network interface {id} has no device."));
        };
        let (rx, tx) = (
            patch.rx_rate_limiter.as_ref(),
            patch.tx_rate_limiter.as_ref(),
        );
        nic.lock()
            .expect("net device lock poisoned")
            .update_rate_limiters(rx, tx);
        net.rx_rate_limiter = rate_limiter::patch(net.rx_rate_limiter, rx);
        net.tx_rate_limiter = rate_limiter::patch(net.tx_rate_limiter, tx);
        log::info!(
            "Network interface {id}: rate limiters now rx {:?}, tx {:?}",
            net.rx_rate_limiter,
            net.tx_rate_limiter
        );
        ApiResponse::no_content()
    }

    /// Writes a metrics line with every device's and vCPU's counters.
    pub(super) fn flush_metrics(&self) -> ApiResponse {
        let devices = self.devices.virtio.counters();
        let sources = Sources {
            devices: &devices,
            vcpus: self.handles.iter().map(|h| h.exit_counters()).collect(),
        };
        super::flush_metrics(&sources)
    }

    fn control_error(e: VcpuControlError) -> ApiResponse {
        match e {
            VcpuControlError::Exited(_) => {
                ApiResponse::bad_request(&format!("The microVM is shutting down: {e}."))
            }
            other => {
                log::error!("Pause/resume failed: {other}");
                ApiResponse::error(500, &format!("{other}."))
            }
        }
    }

    /// Parks every vCPU; answers once all of them acknowledged. Pausing a paused VM is a
    /// no-op (like Firecracker's PATCH /vm).
    fn pause(&mut self) -> ApiResponse {
        if self.is_paused() {
            return ApiResponse::no_content();
        }
        if self.outcome.is_some() || !self.exited.is_empty() {
            return ApiResponse::bad_request("The microVM is shutting down.");
        }
        let started = Instant::now();
        // Devices first: they stop serving guest queues before the vCPUs stop.
        self.devices.virtio.quiesce();
        let result = self
            .handles
            .iter()
            .try_for_each(|h| h.request_pause())
            .and_then(|()| {
                self.handles
                    .iter()
                    .try_for_each(|h| h.wait_ack(VcpuAck::Paused, VCPU_ACK_TIMEOUT))
            });
        match result {
            Ok(()) => {
                self.paused = true;
                crate::metrics::record_latency("pause_vm", started.elapsed());
                log::info!("VM paused");
                self.events.emit(LifecycleEvent::Paused);
                ApiResponse::no_content()
            }
            Err(e) => {
                // Let whatever did park run again; the VM stays "running".
                for h in &self.handles {
                    let _ = h.request_resume();
                }
                self.devices.virtio.wake();
                Self::control_error(e)
            }
        }
    }

    /// Lets every vCPU run again; answers once all of them acknowledged. Resuming a running
    /// VM is a no-op.
    fn resume(&mut self) -> ApiResponse {
        if !self.is_paused() {
            return ApiResponse::no_content();
        }
        let started = Instant::now();
        let result = self
            .handles
            .iter()
            .try_for_each(|h| h.request_resume())
            .and_then(|()| {
                self.handles
                    .iter()
                    .try_for_each(|h| h.wait_ack(VcpuAck::Resumed, VCPU_ACK_TIMEOUT))
            });
        self.paused = false;
        // Queue notifications that arrived while paused were consumed and left unserved: waking
        // kicks every queue once, so the devices look at their rings again.
        self.devices.virtio.wake();
        match result {
            Ok(()) => {
                crate::metrics::record_latency("resume_vm", started.elapsed());
                log::info!("VM resumed");
                self.events.emit(LifecycleEvent::Resumed);
                ApiResponse::no_content()
            }
            Err(e) => Self::control_error(e),
        }
    }
}
