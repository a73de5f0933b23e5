//! The vsock device: `--vsock cid=N,uds=PATH`, `vsock` in the config file, `PUT /vsock`
//! (Firecracker's body: `guest_cid`, `uds_path`, and the deprecated `vsock_id`, accepted and
//! ignored). The host side is Firecracker's hybrid Unix-socket protocol (docs/vsock.md).

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::drive::key_values;

/// Longest `uds_path` in bytes: a Unix socket path holds 107 bytes, and guest-initiated
/// connections go to `<uds_path>_<port>` (up to 11 more bytes).
pub const MAX_UDS_PATH: usize = 107 - 11;

/// The vsock device's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more; 0-2 are reserved).
    pub guest_cid: u32,
    /// The Unix socket Ember listens on for host-initiated connections; guest-initiated ones
    /// go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

/// The `vsock` resource of the JSON file and the body of `PUT /vsock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockBody {
    /// Deprecated by Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id.
    pub guest_cid: u32,
    /// The host-side Unix socket.
    pub uds_path: PathBuf,
}

/// Invalid vsock settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockError {
    /// Syntax error.
    #[error("vsock: {0}")]
    Parse(String),
    /// A reserved context id.
    #[error("vsock: guest_cid {0} is reserved (use 3 or more)")]
    ReservedCid(u32),
    /// An unusable socket path.
    #[error("vsock: uds_path must be 1-{MAX_UDS_PATH} bytes without NUL")]
    BadPath,
}

impl From<&VsockBody> for VsockConfig {
    fn from(body: &VsockBody) -> Self {
        VsockConfig {
            guest_cid: body.guest_cid,
            uds_path: body.uds_path.clone(),
        }
    }
}

impl From<&VsockConfig> for VsockBody {
    fn from(config: &VsockConfig) -> Self {
        VsockBody {
            vsock_id: None,
            guest_cid: config.guest_cid,
            uds_path: config.uds_path.clone(),
        }
    }
}

impl FromStr for VsockConfig {
    type Err = VsockError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut cid, mut uds) = (None, None);
        for (key, value) in key_values(s).map_err(VsockError::Parse)? {
            match key {
                "cid" => {
                    cid =
                        Some(value.parse().map_err(|_| {
                            VsockError::Parse(format!("cid `{value}` is not a number"))
                        })?)
                }
                "uds" => uds = Some(PathBuf::from(value)),
                other => {
                    return Err(VsockError::Parse(format!(
                        "unknown key `{other}` (expected cid, uds)"
                    )));
                }
            }
        }
        let (Some(guest_cid), Some(uds_path)) = (cid, uds) else {
            return Err(VsockError::Parse("cid=N and uds=PATH are required".into()));
        };
        Ok(VsockConfig {
            guest_cid,
            uds_path,
        })
    }
}

impl VsockConfig {
    /// Checks the context id and the socket path.
    pub fn validate(&self) -> Result<(), VsockError> {
        if self.guest_cid < 3 {
            return Err(VsockError::ReservedCid(self.guest_cid));
        }
        let path = self.uds_path.as_os_str().as_encoded_bytes();
        if path.is_empty() || path.len() > MAX_UDS_PATH || path.contains(&0) {
            return Err(VsockError::BadPath);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vsock_cli_parses_and_validates() {
        let v: VsockConfig = "cid=3,uds=/tmp/v.sock".parse().expect("parses");
        assert_eq!(v.guest_cid, 3);
        assert_eq!(v.uds_path, PathBuf::from("/tmp/v.sock"));
        assert_eq!(v.validate(), Ok(()));
        assert!("cid=3".parse::<VsockConfig>().is_err());
        assert!("cid=x,uds=/a".parse::<VsockConfig>().is_err());
        assert!("cid=3,uds=/a,port=1".parse::<VsockConfig>().is_err());
    }

    #[test]
    fn test_vsock_reserved_cid_and_long_path_refused() {
        let mut v: VsockConfig = "cid=2,uds=/tmp/v".parse().expect("parses");
        assert_eq!(v.validate(), Err(VsockError::ReservedCid(2)));
        v.guest_cid = 3;
        v.uds_path = PathBuf::from("/".repeat(MAX_UDS_PATH + 1));
        assert_eq!(v.validate(), Err(VsockError::BadPath));
    }

    #[test]
    fn test_vsock_body_is_firecrackers() {
        let body: VsockBody = serde_json::from_str(
            r#"{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/tmp/v.sock"}"#,
        )
        .expect("parses");
        assert_eq!(VsockConfig::from(&body).guest_cid, 3);
        assert!(serde_json::from_str::<VsockBody>(r#"{"guest_cid": 3}"#).is_err());
    }
}
