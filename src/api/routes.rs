//! Routing: method and path to an `ApiRequest`, with the body parsed into the resource's serde
//! type. Unknown paths are 404, known paths with another method 405, bad bodies 400; none of
//! these reach the main thread.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ApiRequest, ApiResponse};
use crate::config::file::parse_json;

/// `action_type` of `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Build the VM from the configuration so far and start it.
    InstanceStart,
    /// Type Ctrl-Alt-Del on the guest's i8042 keyboard.
    SendCtrlAltDel,
    /// Write a metrics line now.
    FlushMetrics,
}

/// `state` of `PATCH /vm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum VmStateChange {
    /// Stop every vCPU.
    Paused,
    /// Let them run again.
    Resumed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmStateChange,
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiResponse> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiResponse::bad_request("The request needs a JSON body."));
    }
    parse_json(bytes).map_err(|e| ApiResponse::bad_request(&format!("Invalid request body: {e}")))
}

/// The id in `PUT /drives/{id}` must match the body's (Firecracker's rule).
fn check_id(kind: &str, path_id: &str, body_id: &str) -> Result<(), ApiResponse> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(ApiResponse::bad_request(&format!(
            "The {kind} id in the path ({path_id}) differs from the one in the body ({body_id})."
        )))
    }
}

/// The methods a known path accepts, for 405 answers.
fn allowed(path: &[&str]) -> Option<&'static str> {
    match path {
        [] | ["version"] => Some("GET"),
        ["machine-config"] => Some("GET, PUT, PATCH"),
        ["boot-source"] | ["actions"] => Some("PUT"),
        ["drives", _] | ["network-interfaces", _] => Some("PUT, PATCH"),
        ["entropy"] | ["vsock"] => Some("PUT"),
        ["logger"] | ["serial"] | ["metrics"] => Some("PUT"),
        ["vm"] => Some("PATCH"),
        ["vm", "config"] => Some("GET"),
        ["snapshot", "create"] | ["snapshot", "load"] => Some("PUT"),
        _ => None,
    }
}

/// Maps one request to what the main thread must do, or to the error answer.
pub fn route(method: &str, target: &str, bytes: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match (method, parts.as_slice()) {
        ("GET", []) => Ok(ApiRequest::GetInstanceInfo),
        ("GET", ["version"]) => Ok(ApiRequest::GetVersion),
        ("GET", ["machine-config"]) => Ok(ApiRequest::GetMachineConfig),
        ("PUT", ["machine-config"]) => Ok(ApiRequest::PutMachineConfig(body(bytes)?)),
        ("PATCH", ["machine-config"]) => Ok(ApiRequest::PatchMachineConfig(body(bytes)?)),
        ("PUT", ["boot-source"]) => Ok(ApiRequest::PutBootSource(body(bytes)?)),
        ("PUT", ["drives", id]) => {
            let drive: crate::config::drive::DriveBody = body(bytes)?;
            check_id("drive", id, &drive.drive_id)?;
            Ok(ApiRequest::PutDrive(drive))
        }
        ("PUT", ["network-interfaces", id]) => {
            let net: crate::config::net::NetBody = body(bytes)?;
            check_id("network interface", id, &net.iface_id)?;
            Ok(ApiRequest::PutNet(net))
        }
        ("PATCH", ["drives", id]) => {
            let patch: crate::config::drive::DrivePatch = body(bytes)?;
            check_id("drive", id, &patch.drive_id)?;
            Ok(ApiRequest::PatchDrive(patch))
        }
        ("PATCH", ["network-interfaces", id]) => {
            let patch: crate::config::net::NetPatch = body(bytes)?;
            check_id("network interface", id, &patch.iface_id)?;
            Ok(ApiRequest::PatchNet(patch))
        }
        ("PUT", ["entropy"]) => Ok(ApiRequest::PutEntropy(body(bytes)?)),
        ("PUT", ["vsock"]) => Ok(ApiRequest::PutVsock(body(bytes)?)),
        ("PUT", ["actions"]) => Ok(ApiRequest::Action(body::<ActionBody>(bytes)?.action_type)),
        ("PATCH", ["vm"]) => Ok(ApiRequest::SetVmState(body::<VmStateBody>(bytes)?.state)),
        ("GET", ["vm", "config"]) => Ok(ApiRequest::GetVmConfig),
        ("PUT", ["logger"]) => Ok(ApiRequest::PutLogger(body(bytes)?)),
        ("PUT", ["serial"]) => Ok(ApiRequest::PutSerial(body(bytes)?)),
        ("PUT", ["metrics"]) => Ok(ApiRequest::PutMetrics(body(bytes)?)),
        ("PUT", ["snapshot", "create"]) => Ok(ApiRequest::CreateSnapshot(body(bytes)?)),
        ("PUT", ["snapshot", "load"]) => Ok(ApiRequest::LoadSnapshot(body(bytes)?)),
        (_, known) if allowed(known).is_some() => Err(ApiResponse::error(
            405,
            &format!(
                "Method {method} is not allowed on {path} (allowed: {}).",
                allowed(known).unwrap_or_default()
            ),
        )),
        _ => Err(ApiResponse::error(
            404,
            &format!("Invalid request method and/or path: {method} {path}."),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<ApiRequest, ApiResponse>) -> u16 {
        r.map(|_| 200).unwrap_or_else(|e| e.status)
    }

    #[test]
    fn test_route_get_root_is_instance_info() {
        assert_eq!(route("GET", "/", b""), Ok(ApiRequest::GetInstanceInfo));
    }

    #[test]
    fn test_route_actions_parse_both_types() {
        assert_eq!(
            route("PUT", "/actions", br#"{"action_type": "InstanceStart"}"#),
            Ok(ApiRequest::Action(ActionType::InstanceStart))
        );
        assert_eq!(
            route("PUT", "/actions", br#"{"action_type": "SendCtrlAltDel"}"#),
            Ok(ApiRequest::Action(ActionType::SendCtrlAltDel))
        );
    }

    #[test]
    fn test_route_unknown_action_is_400_with_reason() {
        let e = route("PUT", "/actions", br#"{"action_type": "Reboot"}"#).expect_err("400");
        assert_eq!(e.status, 400);
        assert!(e.body.expect("body").contains("Reboot"));
    }

    #[test]
    fn test_route_vm_state_patch() {
        assert_eq!(
            route("PATCH", "/vm", br#"{"state": "Paused"}"#),
            Ok(ApiRequest::SetVmState(VmStateChange::Paused))
        );
    }

    #[test]
    fn test_route_unknown_path_is_404() {
        assert_eq!(status(route("GET", "/nothing", b"")), 404);
        assert_eq!(status(route("PUT", "/drives", b"{}")), 404);
    }

    #[test]
    fn test_route_wrong_method_is_405() {
        assert_eq!(status(route("DELETE", "/", b"")), 405);
        assert_eq!(status(route("GET", "/boot-source", b"")), 405);
        assert_eq!(status(route("PUT", "/vm", b"{}")), 405);
    }

    #[test]
    fn test_route_bad_bodies_are_400() {
        assert_eq!(status(route("PUT", "/machine-config", b"")), 400);
        assert_eq!(status(route("PUT", "/machine-config", b"{")), 400);
        assert_eq!(status(route("PUT", "/machine-config", b"\xff\xfe")), 400);
        assert_eq!(
            status(route(
                "PUT",
                "/machine-config",
                br#"{"vcpu_count": 1, "mem_size_mib": 64, "x": 1}"#
            )),
            400
        );
        assert_eq!(
            status(route("PUT", "/machine-config", br#"{"vcpu_count": -1}"#)),
            400
        );
    }

    #[test]
    fn test_route_unknown_field_message_names_it() {
        let e = route("PATCH", "/vm", br#"{"state": "Paused", "when": 1}"#).expect_err("400");
        assert!(e.body.expect("body").contains("unknown field `when`"));
    }

    #[test]
    fn test_route_drive_id_mismatch_is_400() {
        let body = br#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}"#;
        assert_eq!(status(route("PUT", "/drives/a", body)), 400);
        assert_eq!(status(route("PUT", "/drives/b", body)), 200);
    }

    #[test]
    fn test_route_patch_drive_and_interface_carry_rate_limiters() {
        let drive = br#"{"drive_id": "b", "rate_limiter": {"ops": {"size": 1, "refill_time": 9}}}"#;
        assert_eq!(status(route("PATCH", "/drives/a", drive)), 400);
        assert!(matches!(
            route("PATCH", "/drives/b", drive),
            Ok(ApiRequest::PatchDrive(p)) if p.rate_limiter.and_then(|r| r.ops).is_some()
        ));
        let net = br#"{"iface_id": "n", "tx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#;
        assert!(matches!(
            route("PATCH", "/network-interfaces/n", net),
            Ok(ApiRequest::PatchNet(p)) if p.tx_rate_limiter.is_some() && p.rx_rate_limiter.is_none()
        ));
        let swap = br#"{"drive_id": "b", "path_on_host": "/other"}"#;
        assert_eq!(status(route("PATCH", "/drives/b", swap)), 400);
    }

    #[test]
    fn test_route_entropy_and_vsock_bodies() {
        assert!(matches!(
            route("PUT", "/entropy", b"{}"),
            Ok(ApiRequest::PutEntropy(_))
        ));
        assert!(matches!(
            route(
                "PUT",
                "/vsock",
                br#"{"guest_cid": 3, "uds_path": "/tmp/v"}"#
            ),
            Ok(ApiRequest::PutVsock(_))
        ));
        assert_eq!(status(route("PUT", "/vsock", br#"{"guest_cid": 3}"#)), 400);
        assert_eq!(status(route("GET", "/vsock", b"")), 405);
    }

    #[test]
    fn test_route_logger_and_serial_bodies() {
        let r = route(
            "PUT",
            "/logger",
            br#"{"log_path": "/l", "level": "Warning"}"#,
        );
        let Ok(ApiRequest::PutLogger(body)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(body.log_path, Some(std::path::PathBuf::from("/l")));
        let r = route("PUT", "/serial", br#"{"serial_out_path": "/s"}"#);
        assert!(matches!(r, Ok(ApiRequest::PutSerial(_))), "{r:?}");
        assert_eq!(
            status(route("PUT", "/logger", br#"{"log_file": "/l"}"#)),
            400
        );
        assert_eq!(status(route("GET", "/logger", b"")), 405);
    }

    #[test]
    fn test_route_query_string_ignored() {
        assert_eq!(
            route("GET", "/vm/config?pretty", b""),
            Ok(ApiRequest::GetVmConfig)
        );
    }
}
