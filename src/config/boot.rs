//! The boot source: kernel image, initrd, command line and entry protocol.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::kernel::ProtocolChoice;
use crate::arch::layout::CMDLINE_MAX_SIZE;

/// Command line used when the user gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Where the kernel comes from and what it is told.
#[derive(Clone, Debug, PartialEq)]
pub struct BootConfig {
    /// ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd / initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (default `DEFAULT_CMDLINE`).
    pub cmdline: String,
    /// Entry protocol choice (default: PVH when available).
    pub protocol: ProtocolChoice,
}

/// `boot-source` in the JSON file and the API, with Firecracker's field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceBody {
    /// Kernel image (required).
    pub kernel_image_path: PathBuf,
    /// Initrd / initramfs (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line (default: `DEFAULT_CMDLINE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Ember extension: entry protocol, `auto` (default), `pvh` or `linux`.
    #[serde(default)]
    pub boot_protocol: ProtocolChoice,
}

impl From<&BootSourceBody> for BootConfig {
    fn from(body: &BootSourceBody) -> Self {
        BootConfig {
            kernel: body.kernel_image_path.clone(),
            initrd: body.initrd_path.clone(),
            cmdline: body
                .boot_args
                .clone()
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            protocol: body.boot_protocol,
        }
    }
}

impl From<&BootConfig> for BootSourceBody {
    fn from(boot: &BootConfig) -> Self {
        BootSourceBody {
            kernel_image_path: boot.kernel.clone(),
            initrd_path: boot.initrd.clone(),
            boot_args: Some(boot.cmdline.clone()),
            boot_protocol: boot.protocol,
        }
    }
}

/// Invalid boot settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootError {
    /// A path that does not exist.
    #[error("{what}: {path} does not exist")]
    Missing {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A path that is not a regular file.
    #[error("{what}: {path} is not a regular file")]
    NotAFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The command line is too long or holds a NUL byte.
    #[error("cmdline: {0}")]
    Cmdline(String),
}

fn check_file(what: &'static str, path: &Path) -> Result<(), BootError> {
    match std::fs::metadata(path) {
        Err(_) => Err(BootError::Missing {
            what,
            path: path.to_owned(),
        }),
        Ok(meta) if !meta.is_file() => Err(BootError::NotAFile {
            what,
            path: path.to_owned(),
        }),
        Ok(_) => Ok(()),
    }
}

/// Checks a final command line (with everything Ember appends) for length and NUL bytes.
pub fn check_cmdline(cmdline: &str) -> Result<(), BootError> {
    if cmdline.contains('\0') {
        return Err(BootError::Cmdline("contains a NUL byte".into()));
    }
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(BootError::Cmdline(format!(
            "{} bytes is too long (at most {})",
            cmdline.len(),
            CMDLINE_MAX_SIZE - 1
        )));
    }
    Ok(())
}

impl BootConfig {
    /// A boot source with the default command line.
    pub fn new(kernel: PathBuf) -> Self {
        BootConfig {
            kernel,
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            protocol: ProtocolChoice::Auto,
        }
    }

    /// Checks that the files exist and the command line is acceptable.
    pub fn validate(&self) -> Result<(), BootError> {
        check_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_file("initrd", initrd)?;
        }
        check_cmdline(&self.cmdline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_boot_missing_kernel_rejected() {
        let cfg = BootConfig::new(PathBuf::from("/nonexistent/vmlinux"));
        assert!(matches!(
            cfg.validate(),
            Err(BootError::Missing { what: "kernel", .. })
        ));
    }

    #[test]
    fn test_boot_directory_kernel_rejected() {
        let cfg = BootConfig::new(std::env::temp_dir());
        assert!(matches!(
            cfg.validate(),
            Err(BootError::NotAFile { what: "kernel", .. })
        ));
    }

    #[test]
    fn test_boot_body_defaults_cmdline() {
        let body: BootSourceBody =
            serde_json::from_str(r#"{"kernel_image_path": "/k"}"#).expect("parses");
        let boot = BootConfig::from(&body);
        assert_eq!(boot.cmdline, DEFAULT_CMDLINE);
        assert_eq!(boot.protocol, ProtocolChoice::Auto);
        assert_eq!(boot.initrd, None);
    }

    #[test]
    fn test_boot_body_protocol_extension_parses() {
        let body: BootSourceBody = serde_json::from_str(
            r#"{"kernel_image_path": "/k", "boot_args": "x", "boot_protocol": "linux"}"#,
        )
        .expect("parses");
        assert_eq!(body.boot_protocol, ProtocolChoice::Linux);
        assert!(
            serde_json::from_str::<BootSourceBody>(
                r#"{"kernel_image_path": "/k", "boot_protocol": "efi"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn test_cmdline_too_long_rejected() {
        assert!(check_cmdline(&"a".repeat(CMDLINE_MAX_SIZE)).is_err());
        assert!(check_cmdline("console=ttyS0").is_ok());
        assert!(check_cmdline("a\0b").is_err());
    }
}
