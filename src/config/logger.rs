//! The `logger` resource (JSON file and `PUT /logger`), with Firecracker's fields: where Ember's
//! log goes (`log_path`: a file or FIFO; stderr without it), its level, and what each line shows.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::cli::LogLevel;
use crate::logger::LoggerSettings;

/// `logger`: every field optional; what is left out stays as it is. Level names are
/// Firecracker's (`"Off"`, `"Error"`, `"Warning"`, `"Info"`, `"Debug"`, `"Trace"`) or lower-case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerBody {
    /// A file (created if missing, appended to) or FIFO for the log, instead of stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Log level (default `Warning`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Show the level in each line of the log file (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Show the source file and line in each line of the log file (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Log only messages from this module of Ember (`devices::virtio`, `ember::api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl LoggerBody {
    /// The logger settings this body asks for.
    pub fn settings(&self) -> LoggerSettings {
        LoggerSettings {
            log_path: self.log_path.clone(),
            level: self.level.map(Into::into),
            show_level: self.show_level,
            show_log_origin: self.show_log_origin,
            module: self.module.clone(),
        }
    }

    /// The logger as it is now (for `GET /vm/config`).
    pub fn current() -> Self {
        let s = crate::logger::settings();
        LoggerBody {
            log_path: s.log_path,
            level: s.level.map(Into::into),
            show_level: s.show_level,
            show_log_origin: s.show_log_origin,
            module: s.module,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_logger_body_accepts_firecracker_and_cli_names() {
        let fc: LoggerBody = serde_json::from_str(r#"{"level": "Warning"}"#).expect("parses");
        assert_eq!(fc.level, Some(LogLevel::Warn));
        let cli: LoggerBody = serde_json::from_str(r#"{"level": "debug"}"#).expect("parses");
        assert_eq!(cli.level, Some(LogLevel::Debug));
        assert!(serde_json::from_str::<LoggerBody>(r#"{"colour": true}"#).is_err());
    }

    #[test]
    fn test_logger_body_every_firecracker_field() {
        let body: LoggerBody = serde_json::from_str(
            r#"{"log_path": "/tmp/fc.log", "level": "Info", "show_level": true,
                "show_log_origin": false, "module": "api"}"#,
        )
        .expect("parses");
        let s = body.settings();
        assert_eq!(s.log_path, Some(PathBuf::from("/tmp/fc.log")));
        assert_eq!(s.level, Some(log::LevelFilter::Info));
        assert_eq!((s.show_level, s.show_log_origin), (Some(true), Some(false)));
        assert_eq!(s.module.as_deref(), Some("api"));
    }
}
