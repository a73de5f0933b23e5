//! Block devices: `--disk path=FILE[,readonly=on][,id=NAME][,root=on][,shared=on]
//! [,io_engine=sync|async][,num_queues=N][,queue_size=N][,cache=unsafe|writeback][,direct=on]`.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Absent;
use super::rate_limiter::RateLimiterConfig;

/// One virtio-blk disk backed by a host file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveConfig {
    /// Identifier (API path component, virtio-blk serial). Default `disk<N>` by position.
    pub id: String,
    /// Backing file.
    pub path: PathBuf,
    /// Read-only: the file is opened read-only and the guest sees VIRTIO_BLK_F_RO.
    pub readonly: bool,
    /// The root device: adds `root=/dev/vdX` and `rw`/`ro` to the kernel command line.
    pub root: bool,
    /// Share a writable image with other users (a shared lock instead of the exclusive one):
    /// the user vouches that they coordinate (a cluster file system, a scratch image).
    pub shared: bool,
    /// Requests and bytes per second the guest may move (none: unlimited).
    pub rate_limiter: Option<RateLimiterConfig>,
    /// How requests reach the file (default Async: io_uring where the host has it).
    pub io_engine: IoEngine,
    /// Request queues (default: one per vCPU, at most `MAX_QUEUES`).
    pub num_queues: Option<u16>,
    /// Entries per request queue (default 256; a power of two, 4 to 1024).
    pub queue_size: u16,
    /// What a guest FLUSH does (default Writeback: fdatasync on the host file).
    pub cache_type: CacheType,
    /// Aligned transfers bypass the host page cache (O_DIRECT).
    pub direct: bool,
}

/// Most request queues of one disk.
pub const MAX_QUEUES: u16 = 16;
/// Default entries per request queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

impl DriveConfig {
    /// The queues this disk gets in a VM of `vcpus` vCPUs.
    pub fn queues_for(&self, vcpus: u8) -> u16 {
        self.num_queues
            .unwrap_or(u16::from(vcpus))
            .clamp(1, MAX_QUEUES)
    }
}

/// One entry of `drives` in the JSON file, and the body of `PUT /drives/{id}`, with
/// Firecracker's field names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveBody {
    /// Identifier (required).
    pub drive_id: String,
    /// Backing file (required).
    pub path_on_host: PathBuf,
    /// The root device (default false).
    #[serde(default)]
    pub is_root_device: bool,
    /// Read-only (default false).
    #[serde(default)]
    pub is_read_only: bool,
    /// Ember extension: let other disks and processes use a writable image too (default false;
    /// see `DriveConfig::shared`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Firecracker's cache type: `Writeback` (Ember's default: a FLUSH reaches the host file)
    /// or `Unsafe` (FLUSH is acknowledged without syncing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// Firecracker's I/O engine: `Sync` or `Async` (default Async; Sync where the host has no
    /// io_uring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Ember extension: request queues (default one per vCPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u16>,
    /// Ember extension: entries per request queue (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u16>,
    /// Ember extension: aligned transfers bypass the host page cache (O_DIRECT; default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub direct: bool,
    /// Firecracker's root partition UUID: `null` only.
    #[serde(default, skip_serializing)]
    pub partuuid: Option<Absent>,
    /// Firecracker's rate limiter (absent or null: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// The body of `PATCH /drives/{id}` while the VM runs: the drive and its new rate limiter
/// (Firecracker's `PartialDrive`; Ember cannot swap the backing file of a running disk).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivePatch {
    /// Identifier (required).
    pub drive_id: String,
    /// A new backing file: refused (not supported by Ember).
    #[serde(default)]
    pub path_on_host: Option<Absent>,
    /// The change: buckets named replace the current ones, 0-sized ones remove them.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Firecracker's `cache_type` values (FLUSH is offered either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// A FLUSH is acknowledged and nothing is synced: written data may sit in the host's page
    /// cache when the host crashes (Firecracker's default).
    Unsafe,
    /// A FLUSH is an fdatasync of the host file (Ember's default).
    #[default]
    Writeback,
}

/// Firecracker's `io_engine` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Requests served synchronously on the event loop (preadv, pwritev, fdatasync).
    Sync,
    /// Requests submitted to an io_uring and completed from the event loop when they finish;
    /// Sync, with one log line, where the host kernel has no io_uring.
    #[default]
    Async,
}

impl From<&DriveBody> for DriveConfig {
    fn from(body: &DriveBody) -> Self {
        DriveConfig {
            id: body.drive_id.clone(),
            path: body.path_on_host.clone(),
            readonly: body.is_read_only,
            root: body.is_root_device,
            shared: body.shared,
            rate_limiter: body.rate_limiter.and_then(RateLimiterConfig::normalized),
            io_engine: body.io_engine.unwrap_or_default(),
            num_queues: body.num_queues,
            queue_size: body.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE),
            cache_type: body.cache_type.unwrap_or_default(),
            direct: body.direct,
        }
    }
}

impl From<&DriveConfig> for DriveBody {
    fn from(drive: &DriveConfig) -> Self {
        DriveBody {
            drive_id: drive.id.clone(),
            path_on_host: drive.path.clone(),
            is_root_device: drive.root,
            is_read_only: drive.readonly,
            shared: drive.shared,
            rate_limiter: drive.rate_limiter,
            io_engine: Some(drive.io_engine),
            num_queues: drive.num_queues,
            queue_size: (drive.queue_size != DEFAULT_QUEUE_SIZE).then_some(drive.queue_size),
            cache_type: (drive.cache_type == CacheType::Unsafe).then_some(CacheType::Unsafe),
            direct: drive.direct,
            ..Default::default()
        }
    }
}

/// Invalid drive settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriveError {
    /// Syntax error in `--disk`.
    #[error("disk: {0}")]
    Parse(String),
    /// The backing file is missing.
    #[error("disk {id}: {path} does not exist")]
    Missing {
        /// Drive id.
        id: String,
        /// The path.
        path: PathBuf,
    },
    /// The backing path is not a regular file or block device.
    #[error("disk {id}: {path} is not a regular file or block device")]
    NotAFile {
        /// Drive id.
        id: String,
        /// The path.
        path: PathBuf,
    },
    /// Two drives share an id.
    #[error("disk: id {0} is used twice")]
    DuplicateId(String),
    /// More than one root drive.
    #[error("disk: only one disk can have root=on")]
    TwoRoots,
    /// An id that cannot be used.
    #[error("disk: id `{0}` must be 1-64 characters of [A-Za-z0-9_-]")]
    BadId(String),
    /// A queue count or size out of range.
    #[error(
        "disk {id}: num_queues must be 1-{MAX_QUEUES} and queue_size a power of two from 4 to 1024 (got {num_queues:?}, {queue_size})"
    )]
    BadQueues {
        /// Drive id.
        id: String,
        /// The queue count given.
        num_queues: Option<u16>,
        /// The queue size given.
        queue_size: u16,
    },
}

/// Parses `on`/`off` (also true/false, yes/no, 1/0).
pub fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

/// Checks an id for API paths and guest-visible names.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Splits `k=v,k=v` into pairs.
pub fn key_values(s: &str) -> Result<Vec<(&str, &str)>, String> {
    s.split(',')
        .map(|kv| {
            kv.split_once('=')
                .ok_or_else(|| format!("`{kv}` is not key=value"))
        })
        .collect()
}

impl FromStr for DriveConfig {
    type Err = DriveError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut drive = DriveConfig {
            id: String::new(),
            path: PathBuf::new(),
            readonly: false,
            root: false,
            shared: false,
            rate_limiter: None,
            io_engine: IoEngine::default(),
            num_queues: None,
            queue_size: DEFAULT_QUEUE_SIZE,
            cache_type: CacheType::default(),
            direct: false,
        };
        let number = |key: &str, value: &str| {
            value
                .parse::<u16>()
                .map_err(|_| DriveError::Parse(format!("{key}={value}: expected a number")))
        };
        for (key, value) in key_values(s).map_err(DriveError::Parse)? {
            match key {
                "path" => drive.path = PathBuf::from(value),
                "id" => drive.id = value.to_string(),
                "readonly" => drive.readonly = parse_bool(key, value).map_err(DriveError::Parse)?,
                "root" => drive.root = parse_bool(key, value).map_err(DriveError::Parse)?,
                "shared" => drive.shared = parse_bool(key, value).map_err(DriveError::Parse)?,
                "io_engine" => {
                    drive.io_engine = match value {
                        "sync" | "Sync" => IoEngine::Sync,
                        "async" | "Async" => IoEngine::Async,
                        _ => {
                            return Err(DriveError::Parse(format!(
                                "io_engine={value}: expected sync or async"
                            )));
                        }
                    }
                }
                "num_queues" => drive.num_queues = Some(number(key, value)?),
                "queue_size" => drive.queue_size = number(key, value)?,
                "direct" => drive.direct = parse_bool(key, value).map_err(DriveError::Parse)?,
                "cache" => {
                    drive.cache_type = match value {
                        "unsafe" | "Unsafe" => CacheType::Unsafe,
                        "writeback" | "Writeback" => CacheType::Writeback,
                        _ => {
                            return Err(DriveError::Parse(format!(
                                "cache={value}: expected unsafe or writeback"
                            )));
                        }
                    }
                }
                other => {
                    return Err(DriveError::Parse(format!(
                        "unknown key `{other}` (expected path, readonly, id, root, shared, io_engine, num_queues, queue_size, cache, direct)"
                    )));
                }
            }
        }
        if drive.path.as_os_str().is_empty() {
            return Err(DriveError::Parse("path=FILE is required".into()));
        }
        Ok(drive)
    }
}

impl DriveConfig {
    /// Checks the backing file.
    pub fn validate(&self) -> Result<(), DriveError> {
        if !valid_id(&self.id) {
            return Err(DriveError::BadId(self.id.clone()));
        }
        let queues_ok = self
            .num_queues
            .is_none_or(|n| (1..=MAX_QUEUES).contains(&n));
        let size_ok = self.queue_size.is_power_of_two() && (4..=1024).contains(&self.queue_size);
        if !(queues_ok && size_ok) {
            return Err(DriveError::BadQueues {
                id: self.id.clone(),
                num_queues: self.num_queues,
                queue_size: self.queue_size,
            });
        }
        let meta = std::fs::metadata(&self.path).map_err(|_| DriveError::Missing {
            id: self.id.clone(),
            path: self.path.clone(),
        })?;
        use std::os::unix::fs::FileTypeExt;
        if !(meta.is_file() || meta.file_type().is_block_device()) {
            return Err(DriveError::NotAFile {
                id: self.id.clone(),
                path: self.path.clone(),
            });
        }
        Ok(())
    }
}

/// Gives unnamed drives `disk<N>` ids and checks ids and roots across the list.
pub fn finalize_drives(drives: &mut [DriveConfig]) -> Result<(), DriveError> {
    for (i, d) in drives.iter_mut().enumerate() {
        if d.id.is_empty() {
            d.id = format!("disk{i}");
        }
    }
    validate_drives(drives)
}

/// Checks ids are unique and at most one drive is root.
pub fn validate_drives(drives: &[DriveConfig]) -> Result<(), DriveError> {
    for (i, d) in drives.iter().enumerate() {
        if drives[..i].iter().any(|o| o.id == d.id) {
            return Err(DriveError::DuplicateId(d.id.clone()));
        }
    }
    if drives.iter().filter(|d| d.root).count() > 1 {
        return Err(DriveError::TwoRoots);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_drive_shared_from_cli_and_json() {
        let d: DriveConfig = "path=/a,shared=on".parse().expect("valid");
        assert!(d.shared && !d.readonly);
        let body: DriveBody =
            serde_json::from_str(r#"{"drive_id": "a", "path_on_host": "/a", "shared": true}"#)
                .expect("json");
        assert!(DriveConfig::from(&body).shared);
        let unshared = DriveBody {
            shared: false,
            ..body
        };
        let text = serde_json::to_string(&unshared).expect("json");
        assert!(
            !text.contains("shared"),
            "Firecracker's shape when unset: {text}"
        );
    }

    #[test]
    fn test_drive_body_firecracker_fields_with_neutral_values() {
        let body: DriveBody = serde_json::from_str(
            r#"{"drive_id": "a", "path_on_host": "/a", "cache_type": "Unsafe",
                "io_engine": "Sync", "partuuid": null, "rate_limiter": null}"#,
        )
        .expect("accepted");
        assert_eq!(body.cache_type, Some(CacheType::Unsafe));
        for refused in [
            r#"{"drive_id": "a", "path_on_host": "/a", "io_engine": "Uring"}"#,
            r#"{"drive_id": "a", "path_on_host": "/a", "partuuid": "1234-56"}"#,
            r#"{"drive_id": "a", "path_on_host": "/a", "rate_limiter": {"bandwidth": {}}}"#,
        ] {
            assert!(
                crate::config::file::parse_json::<DriveBody>(refused.as_bytes()).is_err(),
                "{refused}"
            );
        }
        assert_eq!(DriveConfig::from(&body).cache_type, CacheType::Unsafe);
        let writeback = DriveBody {
            cache_type: None,
            ..body
        };
        assert_eq!(
            DriveConfig::from(&writeback).cache_type,
            CacheType::Writeback
        );
        let text =
            serde_json::to_string(&DriveBody::from(&DriveConfig::from(&writeback))).expect("json");
        assert!(
            !text.contains("cache_type"),
            "the default is left out: {text}"
        );
        let d: DriveConfig = "path=/a,cache=unsafe,direct=on".parse().expect("valid");
        assert_eq!((d.cache_type, d.direct), (CacheType::Unsafe, true));
        assert!(DriveBody::from(&d).direct);
        assert!("path=/a,cache=none".parse::<DriveConfig>().is_err());
    }

    #[test]
    fn test_drive_parse_all_keys() {
        let d: DriveConfig = "path=/tmp/a.img,readonly=on,id=data,root=on"
            .parse()
            .expect("ok");
        assert_eq!(d.path, PathBuf::from("/tmp/a.img"));
        assert!(d.readonly && d.root);
        assert_eq!(d.id, "data");
    }

    #[test]
    fn test_drive_parse_errors() {
        assert!("readonly=on".parse::<DriveConfig>().is_err());
        assert!("path=/a,bogus=1".parse::<DriveConfig>().is_err());
        assert!("path=/a,readonly=maybe".parse::<DriveConfig>().is_err());
        assert!("/a".parse::<DriveConfig>().is_err());
    }

    #[test]
    fn test_drive_body_maps_firecracker_fields() {
        let body: DriveBody = serde_json::from_str(
            r#"{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false}"#,
        )
        .expect("parses");
        let drive = DriveConfig::from(&body);
        assert_eq!(drive.id, "rootfs");
        assert!(drive.root && !drive.readonly);
        assert_eq!(drive.io_engine, IoEngine::Async, "the default");
        let back = DriveBody::from(&drive);
        assert_eq!(back.io_engine, Some(IoEngine::Async));
        assert_eq!(
            DriveBody {
                io_engine: None,
                ..back
            },
            body
        );
    }

    #[test]
    fn test_drive_queues_parse_default_and_validate() {
        let d: DriveConfig = "path=/,num_queues=4,queue_size=128".parse().expect("valid");
        assert_eq!((d.num_queues, d.queue_size), (Some(4), 128));
        assert_eq!(d.queues_for(2), 4);
        let default: DriveConfig = "path=/".parse().expect("valid");
        assert_eq!((default.queues_for(3), default.queue_size), (3, 256));
        assert_eq!(default.queues_for(64), MAX_QUEUES);
        assert!("path=/,num_queues=x".parse::<DriveConfig>().is_err());
        for bad in [
            "path=/,num_queues=0",
            "path=/,num_queues=17",
            "path=/,queue_size=100",
        ] {
            let mut d: DriveConfig = bad.parse().expect("parses");
            d.id = "d".into();
            assert!(
                matches!(d.validate(), Err(DriveError::BadQueues { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn test_drive_io_engine_from_cli_and_json() {
        let d: DriveConfig = "path=/a,io_engine=sync".parse().expect("valid");
        assert_eq!(d.io_engine, IoEngine::Sync);
        assert!("path=/a,io_engine=uring".parse::<DriveConfig>().is_err());
        let body: DriveBody =
            serde_json::from_str(r#"{"drive_id": "a", "path_on_host": "/a", "io_engine": "Sync"}"#)
                .expect("json");
        assert_eq!(DriveConfig::from(&body).io_engine, IoEngine::Sync);
    }

    #[test]
    fn test_finalize_drives_names_and_checks() {
        let mut drives: Vec<DriveConfig> = vec![
            "path=/a".parse().expect("ok"),
            "path=/b,id=x".parse().expect("ok"),
        ];
        finalize_drives(&mut drives).expect("valid");
        assert_eq!(drives[0].id, "disk0");
        drives[0].id = "x".into();
        assert_eq!(
            validate_drives(&drives),
            Err(DriveError::DuplicateId("x".into()))
        );
        drives[0].id = "y".into();
        drives[0].root = true;
        drives[1].root = true;
        assert_eq!(validate_drives(&drives), Err(DriveError::TwoRoots));
    }
}
