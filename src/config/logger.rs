//! The `logger` resource of the JSON file: the level of Ember's own log on stderr.

use serde::{Deserialize, Serialize};

use super::cli::LogLevel;

/// `logger` in the JSON file, with Firecracker's `level` field and level names (`"Error"`,
/// `"Warning"`, `"Info"`, `"Debug"`, `"Trace"`; the CLI's lower-case names are accepted too).
/// Ember always logs to stderr, so Firecracker's `log_path` is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerBody {
    /// Log level (default `Warning`).
    #[serde(default = "default_level")]
    pub level: LogLevel,
}

fn default_level() -> LogLevel {
    LogLevel::Warn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_logger_body_accepts_firecracker_and_cli_names() {
        let fc: LoggerBody = serde_json::from_str(r#"{"level": "Warning"}"#).expect("parses");
        assert_eq!(fc.level, LogLevel::Warn);
        let cli: LoggerBody = serde_json::from_str(r#"{"level": "debug"}"#).expect("parses");
        assert_eq!(cli.level, LogLevel::Debug);
        assert!(serde_json::from_str::<LoggerBody>(r#"{"log_path": "/x"}"#).is_err());
    }
}
