//! Ember's HTTP API on a Unix socket (`--api-sock`), compatible with Firecracker's for the
//! resources Ember has. The `ember_api` thread (server.rs) reads requests (http.rs) and turns
//! them into typed `ApiRequest`s (routes.rs); the main thread answers them, before the VM
//! starts (launch.rs) and while it runs (the `Controller` in vmm.rs).

pub mod http;
pub mod routes;
pub mod server;

use std::sync::mpsc::{Receiver, Sender};

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::config::boot::BootSourceBody;
use crate::config::drive::{DriveBody, DrivePatch};
use crate::config::entropy::EntropyBody;
use crate::config::logger::LoggerBody;
use crate::config::machine::{MachineConfigBody, MachineConfigPatch};
use crate::config::metrics::MetricsBody;
use crate::config::net::{NetBody, NetPatch};
use crate::config::serial::SerialBody;
use crate::config::vsock::VsockBody;
use crate::snapshot::params::{SnapshotCreateBody, SnapshotLoadBody};

pub use routes::{ActionType, VmStateChange};

/// Name reported as `app_name` by `GET /`.
pub const APP_NAME: &str = "ember";
/// The Firecracker API level Ember answers as: `vmm_version` in `GET /` and the version word of
/// `ember --version`, which Firecracker's clients check (docs/usage.md says why this one).
pub const FIRECRACKER_API_VERSION: &str = "1.13.0";

/// A request the main thread must answer.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiRequest {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `GET /vm/config`.
    GetVmConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfigBody),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigPatch),
    /// `PUT /boot-source`.
    PutBootSource(BootSourceBody),
    /// `PUT /drives/{id}`.
    PutDrive(DriveBody),
    /// `PUT /network-interfaces/{id}`.
    PutNet(NetBody),
    /// `PATCH /drives/{id}`: a running disk's rate limiter.
    PatchDrive(DrivePatch),
    /// `PATCH /network-interfaces/{id}`: a running interface's rate limiters.
    PatchNet(NetPatch),
    /// `PUT /entropy`.
    PutEntropy(EntropyBody),
    /// `PUT /vsock`.
    PutVsock(VsockBody),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    SetVmState(VmStateChange),
    /// `PUT /logger`.
    PutLogger(LoggerBody),
    /// `PUT /serial`.
    PutSerial(SerialBody),
    /// `PUT /metrics`.
    PutMetrics(MetricsBody),
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateBody),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadBody),
}

/// An answer: status code and optional JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<String>,
}

#[derive(Serialize)]
struct Fault<'a> {
    fault_message: &'a str,
}

impl ApiResponse {
    /// 204 No Content.
    pub fn no_content() -> Self {
        ApiResponse {
            status: 204,
            body: None,
        }
    }

    /// 200 with `value` as JSON.
    pub fn json(value: &impl Serialize) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => ApiResponse {
                status: 200,
                body: Some(body),
            },
            Err(e) => ApiResponse::error(500, &format!("Failed to encode the answer: {e}")),
        }
    }

    /// An error with Firecracker's `{"fault_message": ...}` body.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::to_string(&Fault {
            fault_message: message,
        })
        .unwrap_or_else(|_| r#"{"fault_message": "error"}"#.to_string());
        ApiResponse {
            status,
            body: Some(body),
        }
    }

    /// 400 Bad Request with a reason.
    pub fn bad_request(message: &str) -> Self {
        ApiResponse::error(400, message)
    }
}

/// The VM's state as `GET /` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum InstanceState {
    /// Before InstanceStart.
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
}

/// `GET /`'s body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    /// Instance id (`--id`, else `anonymous-instance`).
    pub id: String,
    /// State.
    pub state: InstanceState,
    /// The Firecracker API level Ember follows.
    pub vmm_version: &'static str,
    /// "ember".
    pub app_name: &'static str,
    /// Ember's own version.
    pub ember_version: &'static str,
}

impl InstanceInfo {
    /// The info for a VM in `state`.
    pub fn new(state: InstanceState) -> Self {
        InstanceInfo {
            id: crate::logger::instance_id(),
            state,
            vmm_version: FIRECRACKER_API_VERSION,
            app_name: APP_NAME,
            ember_version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// `GET /version`'s body: Firecracker's field, then Ember's own version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// The Firecracker API level Ember follows.
    pub firecracker_version: &'static str,
    /// Ember's version.
    pub ember_version: &'static str,
}

impl VersionInfo {
    /// This build's versions.
    pub fn answer() -> ApiResponse {
        ApiResponse::json(&VersionInfo {
            firecracker_version: FIRECRACKER_API_VERSION,
            ember_version: env!("CARGO_PKG_VERSION"),
        })
    }
}

/// Refusal for configuration changes once the VM runs (Firecracker's wording).
pub const MSG_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
/// Refusal for runtime actions before the VM runs.
pub const MSG_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

/// One request in flight from the API thread to the main thread.
pub struct ApiCall {
    /// What is asked.
    pub request: ApiRequest,
    /// Where the answer goes (the API thread waits on it).
    pub reply: Sender<ApiResponse>,
}

impl ApiCall {
    /// Sends the answer; a client that went away is not an error.
    pub fn answer(self, response: ApiResponse) {
        let _ = self.reply.send(response);
    }
}

/// The main thread's end: requests arrive on `calls`, and `notify` becomes readable (an
/// event-loop subscriber watches it) whenever one was sent.
pub struct ApiChannel {
    /// Incoming requests.
    pub calls: Receiver<ApiCall>,
    /// Written once per request by the API thread.
    pub notify: EventFd,
}

impl ApiChannel {
    /// Takes the next waiting request, if any (clears the eventfd first so none is missed).
    pub fn next(&self) -> Option<ApiCall> {
        let _ = self.notify.read();
        self.calls.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_instance_info_json_uses_firecracker_names() {
        let r = ApiResponse::json(&InstanceInfo::new(InstanceState::NotStarted));
        let body = r.body.expect("body");
        assert!(body.contains(r#""state":"Not started""#), "{body}");
        assert!(body.contains(r#""app_name":"ember""#), "{body}");
        assert!(body.contains(r#""id":"anonymous-instance""#), "{body}");
    }

    #[test]
    fn test_error_body_is_fault_message() {
        let r = ApiResponse::bad_request("no \"quotes\" lost");
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body.as_deref(),
            Some(r#"{"fault_message":"no \"quotes\" lost"}"#)
        );
    }
}
