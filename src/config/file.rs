//! The JSON configuration document: `--config-file` reads it, `GET /vm/config` writes it.
//! Firecracker's resource names and field names, plus Ember's `serial` resource and the
//! `boot_protocol` / `pvm_compat` extension fields (see docs/usage.md).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::boot::BootSourceBody;
use super::drive::DriveBody;
use super::entropy::EntropyBody;
use super::logger::LoggerBody;
use super::machine::MachineConfigBody;
use super::metrics::MetricsBody;
use super::net::NetBody;
use super::serial::SerialBody;
use super::vsock::VsockBody;
use super::{
    Absent, BootConfig, ConfigError, DriveConfig, EntropyConfig, NetConfig, SerialConfig,
    VmConfigDraft, VsockConfig,
};

/// Largest config file Ember reads.
const MAX_FILE_SIZE: usize = 1 << 20;
/// How long Ember waits for a config file's bytes: a FIFO nobody writes to must not hang it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole document. Every resource is optional when parsing; `boot-source` is required to
/// start a VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDocument {
    /// Kernel, initrd, command line.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSourceBody>,
    /// vCPUs and memory (default: 1 vCPU, 128 MiB).
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfigBody>,
    /// Block devices.
    #[serde(default)]
    pub drives: Vec<DriveBody>,
    /// Network interfaces.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetBody>,
    /// The entropy device (virtio-rng).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyBody>,
    /// The vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockBody>,
    /// Serial console (default: stdio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialBody>,
    /// Ember's log: destination, level, line format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerBody>,
    /// Where the metrics lines go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsBody>,
    /// Firecracker's resources that Ember lacks, accepted as `null` only (as `GET /vm/config`
    /// writes them, so that its answer can be a config file again). A device that lands here
    /// replaces its placeholder with its own resource (as `entropy` and `vsock` did).
    #[serde(default, skip_serializing)]
    pub balloon: Option<Absent>,
    /// See `balloon`.
    #[serde(rename = "cpu-config", default, skip_serializing)]
    pub cpu_config: Option<Absent>,
    /// See `balloon`.
    #[serde(rename = "memory-hotplug", default, skip_serializing)]
    pub memory_hotplug: Option<Absent>,
    /// See `balloon`.
    #[serde(rename = "mmds-config", default, skip_serializing)]
    pub mmds_config: Option<Absent>,
    /// See `balloon`.
    #[serde(default, skip_serializing)]
    pub pmem: Option<Absent>,
}

/// What a document says about the Ember process rather than the VM: its log and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSettings {
    /// `logger`.
    pub logger: Option<LoggerBody>,
    /// `metrics`.
    pub metrics: Option<MetricsBody>,
}

impl ProcessSettings {
    /// The settings in force now (for `GET /vm/config`).
    pub fn current() -> Self {
        ProcessSettings {
            logger: Some(LoggerBody::current()),
            metrics: crate::metrics::path().map(|metrics_path| MetricsBody { metrics_path }),
        }
    }
}

/// Why a config file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than Ember reads.
    #[error("config file {0}: larger than 1 MiB")]
    TooLarge(PathBuf),
    /// The file (a FIFO or a device) gave no end of file in time.
    #[error(
        "config file {path}: not read to its end within {} s (a FIFO that nobody writes to?)",
        READ_TIMEOUT.as_secs()
    )]
    TimedOut {
        /// The file.
        path: PathBuf,
    },
    /// Not JSON, or not the expected shape; the message names the field path.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's message, prefixed with the field path.
        message: String,
    },
    /// The values are not a valid configuration.
    #[error("config file {path}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The problem.
        #[source]
        source: ConfigError,
    },
}

/// Parses JSON into `T`; the error message names the path of the offending field
/// (`drives[0].is_read_only: invalid type: ...`).
pub fn parse_json<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

impl ConfigDocument {
    /// The draft this document describes (each resource checked), and the process settings.
    pub fn to_draft(&self) -> Result<(VmConfigDraft, ProcessSettings), ConfigError> {
        let mut draft = VmConfigDraft::default();
        if let Some(machine) = &self.machine_config {
            let (machine, compat) = machine.to_config()?;
            draft.machine = machine;
            draft.pvm_compat = compat;
        }
        draft.boot = self.boot_source.as_ref().map(BootConfig::from);
        if let Some(serial) = &self.serial {
            draft.serial = SerialConfig::try_from(serial)?;
        }
        draft.drives = self.drives.iter().map(DriveConfig::from).collect();
        draft.nets = self
            .network_interfaces
            .iter()
            .map(NetConfig::from)
            .collect();
        draft.entropy = self.entropy.as_ref().map(EntropyConfig::from);
        draft.vsock = self.vsock.as_ref().map(VsockConfig::from);
        if let Some(vsock) = &draft.vsock {
            vsock.validate()?;
        }
        let process = ProcessSettings {
            logger: self.logger.clone(),
            metrics: self.metrics.clone(),
        };
        Ok((draft, process))
    }

    /// The document describing `draft` (what `GET /vm/config` returns).
    pub fn from_draft(draft: &VmConfigDraft, process: ProcessSettings) -> Self {
        ConfigDocument {
            boot_source: draft.boot.as_ref().map(BootSourceBody::from),
            machine_config: Some(MachineConfigBody::from_config(
                &draft.machine,
                draft.pvm_compat,
            )),
            drives: draft.drives.iter().map(DriveBody::from).collect(),
            network_interfaces: draft.nets.iter().map(NetBody::from).collect(),
            entropy: draft.entropy.as_ref().map(EntropyBody::from),
            vsock: draft.vsock.as_ref().map(VsockBody::from),
            serial: Some(SerialBody::from(&draft.serial)),
            logger: process.logger,
            metrics: process.metrics,
            ..Default::default()
        }
    }
}

/// Every top-level key of Firecracker's `GET /vm/config` answer.
pub const FIRECRACKER_KEYS: [&str; 13] = [
    "balloon",
    "boot-source",
    "cpu-config",
    "drives",
    "entropy",
    "logger",
    "machine-config",
    "memory-hotplug",
    "metrics",
    "mmds-config",
    "network-interfaces",
    "pmem",
    "vsock",
];

impl ConfigDocument {
    /// The document as `GET /vm/config` answers it: Ember's resources, and every key of
    /// Firecracker's answer, `null` where Ember has no such resource (or it is not set).
    pub fn to_api_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            for key in FIRECRACKER_KEYS {
                map.entry(key).or_insert(serde_json::Value::Null);
            }
        }
        value
    }
}

/// Reads and parses a config file into a draft and its process settings.
pub fn load(path: &Path) -> Result<(VmConfigDraft, ProcessSettings), ConfigFileError> {
    let read_err = |source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    };
    // Non-blocking: opening a FIFO does not wait for a writer, reading never hangs.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let text = read_bounded(&file, MAX_FILE_SIZE, READ_TIMEOUT).map_err(|e| match e {
        Bounded::TooLarge => ConfigFileError::TooLarge(path.to_owned()),
        Bounded::TimedOut => ConfigFileError::TimedOut {
            path: path.to_owned(),
        },
        Bounded::Io(source) => read_err(source),
    })?;
    parse(&text).map_err(|e| match e {
        ParseError::Syntax(message) => ConfigFileError::Parse {
            path: path.to_owned(),
            message,
        },
        ParseError::Invalid(source) => ConfigFileError::Invalid {
            path: path.to_owned(),
            source,
        },
    })
}

/// Why `read_bounded` stopped.
#[derive(Debug)]
enum Bounded {
    TooLarge,
    TimedOut,
    Io(std::io::Error),
}

/// Reads `file` to its end, at most `limit` bytes of it and within `timeout`, whatever it is:
/// a regular file, a pipe or FIFO (waited for, so a FIFO with no writer times out rather than
/// reading as empty), or a device that never ends (`/dev/zero` stops at the limit).
fn read_bounded(mut file: &File, limit: usize, timeout: Duration) -> Result<Vec<u8>, Bounded> {
    let deadline = Instant::now() + timeout;
    let mut text = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Regular files are always ready; a FIFO is ready once a writer wrote or left.
        match crate::fdwait::readable(file.as_raw_fd(), left) {
            Ok(true) => {}
            Ok(false) if left.is_zero() => return Err(Bounded::TimedOut),
            Ok(false) => continue,
            Err(e) => return Err(Bounded::Io(e)),
        }
        match file.read(&mut chunk) {
            Ok(0) => return Ok(text),
            Ok(n) => {
                text.extend_from_slice(&chunk[..n]);
                if text.len() > limit {
                    return Err(Bounded::TooLarge);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(Bounded::Io(e)),
        }
        if Instant::now() >= deadline {
            return Err(Bounded::TimedOut);
        }
    }
}

/// What `parse` rejects.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON or not the document's shape.
    Syntax(String),
    /// Invalid values.
    Invalid(ConfigError),
}

/// Parses a document; a complete VM needs its boot source.
pub fn parse(text: &[u8]) -> Result<(VmConfigDraft, ProcessSettings), ParseError> {
    let doc: ConfigDocument = parse_json(text).map_err(ParseError::Syntax)?;
    let (draft, level) = doc.to_draft().map_err(ParseError::Invalid)?;
    if draft.boot.is_none() {
        return Err(ParseError::Invalid(ConfigError::NoBootSource));
    }
    Ok((draft, level))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::kernel::ProtocolChoice;
    use crate::config::cli::LogLevel;
    use crate::host::CompatMode;

    const FULL: &str = r#"{
        "boot-source": {"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "quiet",
                        "boot_protocol": "pvh"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "pvm_compat": "off"},
        "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                    "is_read_only": true}],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                "guest_mac": "02:00:00:00:00:01"}],
        "serial": {"mode": "none"},
        "entropy": {},
        "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
        "logger": {"level": "Debug"},
        "metrics": {"metrics_path": "/m.fifo"}
    }"#;

    #[test]
    fn test_file_full_document_maps_every_field() {
        let (draft, logger) = parse(FULL.as_bytes()).expect("valid");
        let config = draft.build().expect("complete");
        assert_eq!(config.machine.vcpus, 2);
        assert_eq!(config.machine.memory_mib, 256);
        assert_eq!(config.pvm_compat, CompatMode::Off);
        assert_eq!(config.boot.cmdline, "quiet");
        assert_eq!(config.boot.protocol, ProtocolChoice::Pvh);
        assert_eq!(config.boot.initrd, Some(PathBuf::from("/i")));
        assert_eq!(config.drives[0].id, "rootfs");
        assert!(config.drives[0].readonly && config.drives[0].root);
        assert_eq!(config.nets[0].tap, "tap0");
        assert_eq!(config.serial, SerialConfig::None);
        assert_eq!(config.entropy, Some(EntropyConfig::default()));
        let vsock = config.vsock.expect("vsock");
        assert_eq!(
            (vsock.guest_cid, vsock.uds_path),
            (3, PathBuf::from("/tmp/v.sock"))
        );
        assert_eq!(logger.logger.and_then(|l| l.level), Some(LogLevel::Debug));
        assert_eq!(
            logger.metrics.map(|m| m.metrics_path),
            Some(PathBuf::from("/m.fifo"))
        );
    }

    #[test]
    fn test_file_vsock_reserved_cid_rejected_and_entropy_limiter_kept() {
        let doc =
            |extra: &str| format!(r#"{{"boot-source": {{"kernel_image_path": "/k"}}, {extra}}}"#);
        let vsock = doc(r#""vsock": {"guest_cid": 2, "uds_path": "/v"}"#);
        assert!(matches!(
            parse(vsock.as_bytes()),
            Err(ParseError::Invalid(_))
        ));
        let entropy = doc(r#""entropy": {"rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}"#);
        let (draft, _) = parse(entropy.as_bytes()).expect("a rate limiter is accepted");
        let limiter = draft.entropy.and_then(|e| e.rate_limiter);
        assert_eq!(limiter.and_then(|l| l.ops).map(|b| b.size), Some(1));
    }

    #[test]
    fn test_file_roundtrip_through_document() {
        let (draft, logger) = parse(FULL.as_bytes()).expect("valid");
        let text =
            serde_json::to_vec(&ConfigDocument::from_draft(&draft, logger.clone())).expect("json");
        assert_eq!(parse(&text).expect("valid again"), (draft, logger));
    }

    #[test]
    fn test_api_json_has_every_firecracker_key() {
        let (draft, logger) = parse(FULL.as_bytes()).expect("valid");
        let value = ConfigDocument::from_draft(&draft, logger).to_api_json();
        for key in FIRECRACKER_KEYS {
            assert!(value.get(key).is_some(), "{key} missing: {value}");
        }
        assert!(value["balloon"].is_null());
        assert_eq!(value["machine-config"]["vcpu_count"], 2);
        assert_eq!(value["serial"]["mode"], "none");
        // The answer is a config file again.
        let text = serde_json::to_vec(&value).expect("json");
        assert!(parse(&text).is_ok(), "{value}");
    }

    #[test]
    fn test_file_absent_resource_with_a_value_names_it() {
        let text = br#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {"amount_mib": 1}}"#;
        let ParseError::Syntax(msg) = parse(text).expect_err("rejected") else {
            panic!("not a syntax error")
        };
        assert!(msg.starts_with("balloon: not supported by Ember"), "{msg}");
    }

    #[test]
    fn test_file_unknown_nested_field_names_path() {
        let text = br#"{"boot-source": {"kernel_image_path": "/k"},
                        "drives": [{"drive_id": "a", "path_on_host": "/a", "cache": 1}]}"#;
        let ParseError::Syntax(msg) = parse(text).expect_err("rejected") else {
            panic!("not a syntax error")
        };
        assert!(msg.starts_with("drives[0]"), "{msg}");
        assert!(msg.contains("unknown field `cache`"), "{msg}");
    }

    #[test]
    fn test_file_wrong_type_names_path() {
        let text = br#"{"boot-source": {"kernel_image_path": "/k"},
                        "machine-config": {"vcpu_count": "two", "mem_size_mib": 64}}"#;
        let ParseError::Syntax(msg) = parse(text).expect_err("rejected") else {
            panic!("not a syntax error")
        };
        assert!(
            msg.starts_with("machine-config.vcpu_count: invalid type"),
            "{msg}"
        );
    }

    #[test]
    fn test_file_unknown_top_level_resource_rejected() {
        let ParseError::Syntax(msg) = parse(br#"{"gpu": {}}"#).expect_err("rejected") else {
            panic!("not a syntax error")
        };
        assert!(msg.contains("unknown field `gpu`"), "{msg}");
    }

    #[test]
    fn test_file_without_boot_source_rejected() {
        assert_eq!(
            parse(br#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#),
            Err(ParseError::Invalid(ConfigError::NoBootSource))
        );
    }

    fn pipe_with(bytes: &[u8], keep_writer: bool) -> (File, Option<std::io::PipeWriter>) {
        use std::io::Write;
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        writer.write_all(bytes).expect("write");
        (
            File::from(std::os::fd::OwnedFd::from(reader)),
            keep_writer.then_some(writer),
        )
    }

    #[test]
    fn test_read_bounded_pipe_reads_to_end() {
        let (file, _) = pipe_with(b"{}", false);
        let text = read_bounded(&file, 10, Duration::from_secs(5)).expect("read");
        assert_eq!(text, b"{}");
    }

    #[test]
    fn test_read_bounded_stops_at_limit() {
        let (file, _) = pipe_with(&[b' '; 100], false);
        assert!(matches!(
            read_bounded(&file, 50, Duration::from_secs(5)),
            Err(Bounded::TooLarge)
        ));
        let zero = File::open("/dev/zero").expect("/dev/zero");
        assert!(matches!(
            read_bounded(&zero, 1 << 20, Duration::from_secs(5)),
            Err(Bounded::TooLarge)
        ));
    }

    #[test]
    fn test_read_bounded_silent_writer_times_out() {
        let (file, _writer) = pipe_with(b"{", true);
        assert!(matches!(
            read_bounded(&file, 10, Duration::from_millis(20)),
            Err(Bounded::TimedOut)
        ));
    }

    #[test]
    fn test_file_trailing_garbage_and_bad_json_rejected() {
        assert!(parse(br#"{"boot-source": {"kernel_image_path": "/k"}} x"#).is_err());
        assert!(parse(b"{").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"[]").is_err());
    }
}
