//! Firecracker's command-line flags that Ember's own flags do not already cover, so that Ember
//! installed as `firecracker` starts from the command lines Firecracker's clients use
//! (flattened into `Cli`: one parser). Each flag has Firecracker's meaning where Ember has the
//! feature; the others are accepted with a one-line warning, or refused with one clear line
//! (`--seccomp-filter`). `--level` is an alias of `--log-level` (in cli.rs).

use std::path::PathBuf;

use clap::Args;

use crate::api::http::MAX_BODY;

/// Firecracker's flags (see docs/usage.md, "Firecracker compatibility").
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
#[command(next_help_heading = "Firecracker's flags (docs/usage.md, Firecracker compatibility)")]
pub struct FirecrackerFlags {
    /// MicroVM id, reported by GET / and in every log line: 1 to 64 letters, digits and '-'
    /// [default: anonymous-instance]. Example: --id vm-42
    #[arg(long, value_name = "ID", value_parser = parse_instance_id)]
    pub id: Option<String>,

    /// Run without the API socket (needs --config-file); without --api-sock Ember serves no API
    /// anyway. Example: --config-file vm.json --no-api
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    pub no_api: bool,

    /// Write Ember's log to this file (created if missing, appended to) or FIFO instead of
    /// stderr, in Firecracker's line format. Example: --log-path /tmp/ember.log
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,

    /// Show the level in log-file lines. Example: --show-level
    #[arg(long)]
    pub show_level: bool,

    /// Show the source file and line in log-file lines. Example: --show-log-origin
    #[arg(long)]
    pub show_log_origin: bool,

    /// Log only messages from this module of Ember (e.g. devices::virtio or ember::vmm).
    /// Example: --module api
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,

    /// Write metrics (one JSON object a line, docs/metrics.md) to this file or FIFO every
    /// 60 s, on FlushMetrics and at exit. Example: --metrics-path /tmp/ember.metrics
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,

    /// Accepted: Ember's boot-timer device (a guest write of 123 at the start of the MMIO gap,
    /// 0xc0000000, logs the time since start) is always present. Example: --boot-timer
    #[arg(long)]
    pub boot_timer: bool,

    /// Largest API request body, in bytes. Example: --http-api-max-payload-size 102400
    #[arg(long, value_name = "BYTES", default_value_t = MAX_BODY,
          value_parser = parse_payload_size)]
    pub http_api_max_payload_size: usize,

    /// Accepted and ignored with a warning: Ember has no MMDS yet.
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<u64>,

    /// The launcher's monotonic clock when it started Ember, in µs (as the jailer passes it):
    /// the metrics' api_server.process_startup_time_us is measured from it.
    #[arg(long, value_name = "US")]
    pub start_time_us: Option<u64>,

    /// Ember's CPU time when the launcher handed over, in µs: the metrics'
    /// api_server.process_startup_time_cpu_us is measured from it.
    #[arg(long, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,

    /// The launcher's own CPU time in µs, added to process_startup_time_cpu_us.
    #[arg(long, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,

    /// Refused: Ember's seccomp filters are built in (docs/security.md); --no-seccomp turns
    /// them off.
    #[arg(long, value_name = "PATH", conflicts_with = "no_seccomp")]
    pub seccomp_filter: Option<PathBuf>,

    /// Accepted with a warning: Ember's devices are virtio-mmio only (no PCI).
    #[arg(long)]
    pub enable_pci: bool,

    /// Print the snapshot format version this Ember writes and reads (v1.0.0), and exit.
    #[arg(long)]
    pub snapshot_version: bool,

    /// Print the format version of a snapshot file (docs/snapshots.md), and exit.
    #[arg(long, value_name = "PATH")]
    pub describe_snapshot: Option<PathBuf>,

    /// Print the version: the Firecracker API level Ember follows, then Ember's own version.
    #[arg(long, short = 'V')]
    pub version: bool,
}

/// Firecracker's rule for `--id`: 1 to 64 ASCII letters, digits and hyphens.
fn parse_instance_id(id: &str) -> Result<String, String> {
    let valid =
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(id.to_string())
    } else {
        Err("an instance id is 1 to 64 letters, digits and '-'".to_string())
    }
}

fn parse_payload_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("a payload size is a positive number of bytes".to_string()),
    }
}

impl FirecrackerFlags {
    /// Why the command line cannot be run at all (one line), if it cannot.
    pub fn refusal(&self) -> Option<String> {
        if let Some(path) = &self.seccomp_filter {
            return Some(format!(
                "--seccomp-filter {}: custom seccomp filters are not supported; Ember's filters are \
                 built in (see docs/security.md) and --no-seccomp turns them off",
                path.display()
            ));
        }
        None
    }

    /// One warning line per accepted flag that has no effect in Ember.
    pub fn warnings(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.enable_pci {
            lines.push(
                "--enable-pci ignored: Ember's devices are on virtio-mmio only (no PCI bus)".into(),
            );
        }
        if self.mmds_size_limit.is_some() {
            lines.push("--mmds-size-limit ignored: Ember has no MMDS yet".into());
        }
        if self.parent_cpu_time_us.is_some() && self.start_time_cpu_us.is_none() {
            lines.push("--parent-cpu-time-us ignored: it goes with --start-time-cpu-us".into());
        }
        lines
    }
}

/// The first line of `ember --version`. Firecracker's clients read the second word as the
/// version (Kata Containers requires semver >= 0.21.1), so it is the Firecracker API level
/// Ember follows; Ember's own version is in the parentheses.
pub fn version_line() -> String {
    format!(
        "Firecracker-compatible v{} (ember {})",
        crate::api::FIRECRACKER_API_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_instance_id_rule() {
        assert!(parse_instance_id("vm-42").is_ok());
        assert!(parse_instance_id(&"a".repeat(64)).is_ok());
        assert!(parse_instance_id("").is_err());
        assert!(parse_instance_id(&"a".repeat(65)).is_err());
        assert!(parse_instance_id("a b").is_err());
        assert!(parse_instance_id("a_b").is_err());
    }

    #[test]
    fn test_version_line_second_word_is_semver_above_kata_minimum() {
        let line = version_line();
        let word = line.split(' ').nth(1).expect("second word");
        let parts: Vec<u64> = word
            .trim_start_matches('v')
            .split('.')
            .map(|p| p.parse().expect("number"))
            .collect();
        assert_eq!(parts.len(), 3, "{line}");
        assert!(parts >= vec![0, 21, 1], "{line}");
    }

    #[test]
    fn test_refusals_and_warnings() {
        let flags = FirecrackerFlags {
            seccomp_filter: Some(PathBuf::from("/f.bpf")),
            ..Default::default()
        };
        assert!(flags.refusal().expect("refused").contains("built in"));
        let flags = FirecrackerFlags {
            enable_pci: true,
            start_time_us: Some(1),
            parent_cpu_time_us: Some(1),
            ..Default::default()
        };
        assert_eq!(flags.refusal(), None);
        assert_eq!(flags.warnings().len(), 2);
    }
}
