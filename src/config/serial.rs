//! Where the serial console goes: `stdio`, `file:PATH` or `none`.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Serial console routing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialConfig {
    /// Output to stdout, input from stdin (raw mode on a terminal). The default.
    #[default]
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// No console.
    None,
}

/// The `serial` resource (JSON file, `PUT /serial`): Ember's `{"mode": "stdio"}`,
/// `{"mode": "none"}`, `{"mode": "file", "path": "/tmp/console.log"}`, or Firecracker's
/// `{"serial_out_path": "/tmp/console.log"}` (the same as mode `file`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialBody {
    /// Where the console goes (`file` when only `serial_out_path` is given, else required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SerialMode>,
    /// Output file; required with `file`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Firecracker's name for the output file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
}

/// The `mode` of a `SerialBody`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialMode {
    /// Standard output and input.
    Stdio,
    /// A file (output only).
    File,
    /// No console.
    None,
}

impl TryFrom<&SerialBody> for SerialConfig {
    type Error = SerialError;

    fn try_from(body: &SerialBody) -> Result<Self, SerialError> {
        let (mode, path) = match (body.mode, &body.path, &body.serial_out_path) {
            (_, Some(_), Some(_)) => {
                return Err(SerialError::Body(
                    "give path or serial_out_path, not both".into(),
                ));
            }
            (None | Some(SerialMode::File), None, Some(out)) => (SerialMode::File, Some(out)),
            (Some(_), _, Some(_)) => {
                return Err(SerialError::Body(
                    "serial_out_path is only valid with mode file".into(),
                ));
            }
            (Some(mode), path, None) => (mode, path.as_ref()),
            (None, _, None) => {
                return Err(SerialError::Body(
                    "give mode (stdio, file, none) or serial_out_path".into(),
                ));
            }
        };
        match (mode, path) {
            (SerialMode::File, Some(path)) if !path.as_os_str().is_empty() => {
                Ok(SerialConfig::File(path.clone()))
            }
            (SerialMode::File, _) => Err(SerialError::Body("mode file needs a path".into())),
            (_, Some(_)) => Err(SerialError::Body(
                "path is only valid with mode file".into(),
            )),
            (SerialMode::Stdio, None) => Ok(SerialConfig::Stdio),
            (SerialMode::None, None) => Ok(SerialConfig::None),
        }
    }
}

impl From<&SerialConfig> for SerialBody {
    fn from(config: &SerialConfig) -> Self {
        let (mode, path) = match config {
            SerialConfig::Stdio => (SerialMode::Stdio, None),
            SerialConfig::File(path) => (SerialMode::File, Some(path.clone())),
            SerialConfig::None => (SerialMode::None, None),
        };
        SerialBody {
            mode: Some(mode),
            path,
            serial_out_path: None,
        }
    }
}

/// Invalid serial settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SerialError {
    /// Not one of the accepted forms.
    #[error("serial: `{0}` is not one of stdio, file:PATH, none")]
    Parse(String),
    /// A `serial` object whose fields do not fit together.
    #[error("serial: {0}")]
    Body(String),
    /// The output file's directory does not exist.
    #[error("serial: the directory of {0} does not exist")]
    NoDirectory(PathBuf),
}

impl FromStr for SerialConfig {
    type Err = SerialError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(SerialConfig::Stdio),
            "none" => Ok(SerialConfig::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialConfig::File(PathBuf::from(path))),
                _ => Err(SerialError::Parse(s.to_string())),
            },
        }
    }
}

impl SerialConfig {
    /// Checks that a file target can be created.
    pub fn validate(&self) -> Result<(), SerialError> {
        if let SerialConfig::File(path) = self {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir
                && !dir.is_dir()
            {
                return Err(SerialError::NoDirectory(path.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_serial_parse_accepted_forms() {
        assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
        assert_eq!("none".parse(), Ok(SerialConfig::None));
        assert_eq!(
            "file:/tmp/x.log".parse(),
            Ok(SerialConfig::File(PathBuf::from("/tmp/x.log")))
        );
    }

    #[test]
    fn test_serial_parse_rejects_garbage() {
        assert!("file:".parse::<SerialConfig>().is_err());
        assert!("tcp:1234".parse::<SerialConfig>().is_err());
    }

    #[test]
    fn test_serial_body_file_needs_path() {
        let body: SerialBody = serde_json::from_str(r#"{"mode": "file"}"#).expect("parses");
        assert!(SerialConfig::try_from(&body).is_err());
        let body: SerialBody =
            serde_json::from_str(r#"{"mode": "file", "path": "/tmp/c.log"}"#).expect("parses");
        assert_eq!(
            SerialConfig::try_from(&body),
            Ok(SerialConfig::File(PathBuf::from("/tmp/c.log")))
        );
        let body: SerialBody =
            serde_json::from_str(r#"{"mode": "none", "path": "/x"}"#).expect("parses");
        assert!(SerialConfig::try_from(&body).is_err());
    }

    #[test]
    fn test_serial_body_firecracker_serial_out_path_is_file_mode() {
        let body: SerialBody =
            serde_json::from_str(r#"{"serial_out_path": "/tmp/s.log"}"#).expect("parses");
        assert_eq!(
            SerialConfig::try_from(&body),
            Ok(SerialConfig::File(PathBuf::from("/tmp/s.log")))
        );
        for bad in [
            r#"{}"#,
            r#"{"mode": "none", "serial_out_path": "/x"}"#,
            r#"{"mode": "file", "path": "/x", "serial_out_path": "/y"}"#,
        ] {
            let body: SerialBody = serde_json::from_str(bad).expect("parses");
            assert!(SerialConfig::try_from(&body).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_serial_file_in_missing_directory_rejected() {
        let cfg = SerialConfig::File(PathBuf::from("/nonexistent-dir/console.log"));
        assert!(cfg.validate().is_err());
    }
}
