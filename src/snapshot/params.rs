//! What a snapshot request says: the bodies of `PUT /snapshot/create` and `PUT /snapshot/load`
//! (Firecracker's field names), and `--restore snapshot=PATH,mem=PATH[,resume=on][,net=ID:TAP]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SnapshotPaths;

/// `snapshot_type` of `PUT /snapshot/create`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages that differ from the memory file the VM was restored from.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateBody {
    /// Full (default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the state goes.
    pub snapshot_path: PathBuf,
    /// Where guest memory goes.
    pub mem_file_path: PathBuf,
}

/// `backend_type` of `mem_backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// A memory file, mapped copy-on-write.
    File,
    /// A userfaultfd handler (not supported: refused).
    Uffd,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// File (Uffd is refused).
    pub backend_type: MemBackendType,
    /// The memory file.
    pub backend_path: PathBuf,
}

/// One entry of `network_overrides`: the TAP a restored interface uses instead of the saved one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface's id in the snapshot.
    pub iface_id: String,
    /// The host TAP to use.
    pub host_dev_name: String,
}

/// One entry of `drive_overrides` (Ember extension): the image a restored disk uses instead of
/// the saved one, e.g. a clone's own copy (same size and read-only flag as saved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveOverride {
    /// The drive's id in the snapshot.
    pub drive_id: String,
    /// The image file to use.
    pub path_on_host: PathBuf,
}

/// `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadBody {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The memory file (Firecracker's older field; `mem_backend` is the newer).
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    /// The memory backend.
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Allow diff snapshots of the restored VM (always allowed: accepted and ignored).
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    /// The newer name of `enable_diff_snapshots`.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Resume the VM once loaded (default: it stays paused).
    #[serde(default)]
    pub resume_vm: bool,
    /// TAPs to use instead of the saved ones.
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// Ember extension: disk images to use instead of the saved ones.
    #[serde(default)]
    pub drive_overrides: Vec<DriveOverride>,
    /// Ember extension: the vsock device's host socket instead of the saved one (two restores
    /// of one snapshot running at once need a socket each).
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
}

/// `vsock_override` of `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The Unix socket the restored device listens on (guest-initiated connections go to
    /// `<uds_path>_<port>`).
    pub uds_path: PathBuf,
}

/// A restore to perform: from the API or the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreSpec {
    /// The files.
    pub paths: SnapshotPaths,
    /// Run the vCPUs at once (else the VM waits paused for `PATCH /vm`).
    pub resume: bool,
    /// TAPs to use instead of the saved ones.
    pub network_overrides: Vec<NetworkOverride>,
    /// Disk images to use instead of the saved ones.
    pub drive_overrides: Vec<DriveOverride>,
    /// The vsock device's host socket instead of the saved one.
    pub vsock_uds: Option<PathBuf>,
}

impl SnapshotLoadBody {
    /// The restore this body asks for, or why it cannot be done.
    pub fn to_spec(&self) -> Result<RestoreSpec, String> {
        let mem = match (&self.mem_file_path, &self.mem_backend) {
            (Some(_), Some(_)) => {
                return Err("Give either mem_file_path or mem_backend, not both.".into());
            }
            (None, None) => return Err("The memory file is missing: set mem_backend.".into()),
            (Some(path), None) => path.clone(),
            (None, Some(backend)) if backend.backend_type == MemBackendType::File => {
                backend.backend_path.clone()
            }
            (None, Some(_)) => {
                return Err("mem_backend: only backend_type File is supported.".into());
            }
        };
        Ok(RestoreSpec {
            paths: SnapshotPaths {
                snapshot: self.snapshot_path.clone(),
                mem,
            },
            resume: self.resume_vm,
            network_overrides: self.network_overrides.clone(),
            drive_overrides: self.drive_overrides.clone(),
            vsock_uds: self.vsock_override.as_ref().map(|o| o.uds_path.clone()),
        })
    }
}

/// `ID:WHAT` in `key=ID:WHAT`, both parts non-empty.
fn id_and<'a>(key: &str, value: &'a str, what: &str) -> Result<(String, &'a str), String> {
    value
        .split_once(':')
        .filter(|(id, rest)| !id.is_empty() && !rest.is_empty())
        .map(|(id, rest)| (id.to_string(), rest))
        .ok_or_else(|| format!("{key}={value}: expected ID:{what}"))
}

/// Parses `--restore snapshot=PATH,mem=PATH[,resume=on|off][,net=ID:TAP]...[,disk=ID:PATH]...
/// [,vsock=PATH]`.
pub fn parse_restore_arg(arg: &str) -> Result<RestoreSpec, String> {
    let (mut snapshot, mut mem, mut resume) = (None, None, false);
    let mut network_overrides = Vec::new();
    let mut drive_overrides = Vec::new();
    let mut vsock_uds = None;
    for part in arg.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not key=value"))?;
        match key {
            "snapshot" => snapshot = Some(PathBuf::from(value)),
            "mem" => mem = Some(PathBuf::from(value)),
            "resume" => {
                resume = match value {
                    "on" | "true" => true,
                    "off" | "false" => false,
                    _ => return Err(format!("resume={value}: expected on or off")),
                }
            }
            "net" => {
                let (iface_id, tap) = id_and(key, value, "TAP")?;
                network_overrides.push(NetworkOverride {
                    iface_id,
                    host_dev_name: tap.to_string(),
                });
            }
            "disk" => {
                let (drive_id, path) = id_and(key, value, "PATH")?;
                drive_overrides.push(DriveOverride {
                    drive_id,
                    path_on_host: PathBuf::from(path),
                });
            }
            "vsock" if !value.is_empty() => vsock_uds = Some(PathBuf::from(value)),
            other => {
                return Err(format!(
                    "unknown key `{other}` (snapshot, mem, resume, net, disk, vsock)"
                ));
            }
        }
    }
    Ok(RestoreSpec {
        paths: SnapshotPaths {
            snapshot: snapshot.ok_or("snapshot=PATH is missing")?,
            mem: mem.ok_or("mem=PATH is missing")?,
        },
        resume,
        network_overrides,
        drive_overrides,
        vsock_uds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_restore_arg_full() {
        let spec = parse_restore_arg(
            "snapshot=/a,mem=/b,resume=on,net=eth0:tap7,disk=root:/c,vsock=/run/v.sock",
        )
        .expect("ok");
        assert_eq!(spec.vsock_uds, Some(PathBuf::from("/run/v.sock")));
        assert_eq!(spec.drive_overrides[0].drive_id, "root");
        assert_eq!(spec.drive_overrides[0].path_on_host, PathBuf::from("/c"));
        assert_eq!(spec.paths.snapshot, PathBuf::from("/a"));
        assert_eq!(spec.paths.mem, PathBuf::from("/b"));
        assert!(spec.resume);
        assert_eq!(spec.network_overrides[0].host_dev_name, "tap7");
    }

    #[test]
    fn test_parse_restore_arg_missing_or_unknown_is_error() {
        assert!(
            parse_restore_arg("snapshot=/a")
                .expect_err("no mem")
                .contains("mem")
        );
        assert!(
            parse_restore_arg("mem=/b")
                .expect_err("no snapshot")
                .contains("snapshot")
        );
        assert!(parse_restore_arg("snapshot=/a,mem=/b,x=1").is_err());
        assert!(parse_restore_arg("snapshot=/a,mem=/b,resume=maybe").is_err());
        assert!(parse_restore_arg("snapshot=/a,mem=/b,net=eth0").is_err());
        assert!(parse_restore_arg("snapshot=/a,mem=/b,vsock=").is_err());
    }

    #[test]
    fn test_load_body_memory_from_either_field() {
        let body: SnapshotLoadBody =
            serde_json::from_str(r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#)
                .expect("parse");
        assert_eq!(body.to_spec().expect("spec").paths.mem, PathBuf::from("/m"));
        let body: SnapshotLoadBody = serde_json::from_str(
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "resume_vm": true}"#,
        )
        .expect("parse");
        let spec = body.to_spec().expect("spec");
        assert!(spec.resume);
        assert_eq!(spec.paths.mem, PathBuf::from("/m"));
    }

    #[test]
    fn test_load_body_unsupported_choices_are_refused() {
        for json in [
            r#"{"snapshot_path": "/s"}"#,
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#,
        ] {
            let body: SnapshotLoadBody = serde_json::from_str(json).expect("parse");
            assert!(body.to_spec().is_err(), "{json}");
        }
    }
}
