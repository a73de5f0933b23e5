//! Where the serial console goes: `stdio`, `file:PATH` or `none`.

use std::path::PathBuf;
use std::str::FromStr;

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

/// Invalid serial settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SerialError {
    /// Not one of the accepted forms.
    #[error("serial: `{0}` is not one of stdio, file:PATH, none")]
    Parse(String),
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
    fn test_serial_file_in_missing_directory_rejected() {
        let cfg = SerialConfig::File(PathBuf::from("/nonexistent-dir/console.log"));
        assert!(cfg.validate().is_err());
    }
}
