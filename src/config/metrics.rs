//! The `metrics` resource (JSON file and `PUT /metrics`): where the metrics lines go.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `metrics`: Firecracker's one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsBody {
    /// A file (created if missing, appended to) or FIFO for the metrics lines.
    pub metrics_path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_metrics_body_needs_its_path() {
        let body: MetricsBody =
            serde_json::from_str(r#"{"metrics_path": "/tmp/m.fifo"}"#).expect("parses");
        assert_eq!(body.metrics_path, PathBuf::from("/tmp/m.fifo"));
        assert!(serde_json::from_str::<MetricsBody>("{}").is_err());
        assert!(serde_json::from_str::<MetricsBody>(r#"{"metrics_path": "/m", "x": 1}"#).is_err());
    }
}
