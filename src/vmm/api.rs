//! API requests while the VM runs: state queries, pause and resume of every vCPU, and
//! Ctrl-Alt-Del. Configuration changes are refused once the VM has started.

use std::time::Duration;

use super::Controller;
use crate::api::{
    ActionType, ApiRequest, ApiResponse, InstanceInfo, InstanceState, MSG_AFTER_START,
    VmStateChange, current_log_level,
};
use crate::config::VmConfigDraft;
use crate::config::file::ConfigDocument;
use crate::config::machine::MachineConfigBody;
use crate::events::LifecycleEvent;
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
            ApiRequest::GetMachineConfig => match &self.config {
                Some(c) => {
                    ApiResponse::json(&MachineConfigBody::from_config(&c.machine, c.pvm_compat))
                }
                None => ApiResponse::error(500, "The configuration is not known."),
            },
            ApiRequest::GetVmConfig => match &self.config {
                Some(c) => ApiResponse::json(&ConfigDocument::from_draft(
                    &VmConfigDraft::from(c),
                    Some(current_log_level()),
                )),
                None => ApiResponse::error(500, "The configuration is not known."),
            },
            ApiRequest::PutMachineConfig(_)
            | ApiRequest::PutBootSource(_)
            | ApiRequest::PutDrive(_)
            | ApiRequest::PutNet(_) => ApiResponse::bad_request(MSG_AFTER_START),
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
            ApiRequest::SetVmState(VmStateChange::Paused) => self.pause(),
            ApiRequest::SetVmState(VmStateChange::Resumed) => self.resume(),
            ApiRequest::CreateSnapshot(body) => self.create_snapshot(body),
            ApiRequest::LoadSnapshot(_) => ApiResponse::bad_request(
                "A snapshot can only be loaded before any configuration: this microVM already runs.",
            ),
        }
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
                log::info!("VM resumed");
                self.events.emit(LifecycleEvent::Resumed);
                ApiResponse::no_content()
            }
            Err(e) => Self::control_error(e),
        }
    }
}
