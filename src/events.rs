//! Lifecycle events (`--events PATH`): one JSON object per line, written by the main thread
//! when the VM starts, pauses, resumes or ends, so that scripts need not scrape the console.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::vmm::VmOutcome;

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LifecycleEvent {
    /// The vCPUs started running.
    Started {
        /// vCPU count.
        vcpus: u8,
    },
    /// Every vCPU is paused.
    Paused,
    /// The vCPUs run again.
    Resumed,
    /// The guest reset (a reboot); Ember exits.
    Reset {
        /// Ember's exit status.
        exit_code: i32,
    },
    /// The guest powered off; Ember exits.
    PoweredOff {
        /// Ember's exit status.
        exit_code: i32,
    },
    /// The guest crashed; Ember exits.
    Crashed {
        /// What KVM reported.
        reason: String,
        /// Ember's exit status.
        exit_code: i32,
    },
    /// The VM was stopped from the host (signal, console escape) or by an Ember failure.
    Stopped {
        /// `signal N`, `console`, or the failure.
        reason: String,
        /// Ember's exit status.
        exit_code: i32,
    },
}

impl LifecycleEvent {
    /// The final event for an outcome.
    pub fn from_outcome(outcome: &VmOutcome) -> Self {
        let exit_code = outcome.exit_code();
        match outcome {
            VmOutcome::Reset => LifecycleEvent::Reset { exit_code },
            VmOutcome::PowerOff => LifecycleEvent::PoweredOff { exit_code },
            VmOutcome::Crash(reason) => LifecycleEvent::Crashed {
                reason: reason.clone(),
                exit_code,
            },
            VmOutcome::Signal(sig) => LifecycleEvent::Stopped {
                reason: format!("signal {sig}"),
                exit_code,
            },
            VmOutcome::Quit => LifecycleEvent::Stopped {
                reason: "console".into(),
                exit_code,
            },
            VmOutcome::Error(why) => LifecycleEvent::Stopped {
                reason: format!("error: {why}"),
                exit_code,
            },
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    event: &'a LifecycleEvent,
    timestamp_us: u128,
}

/// The event line for `event` at `timestamp_us` (microseconds since the Unix epoch).
pub fn event_line(event: &LifecycleEvent, timestamp_us: u128) -> String {
    let mut line = serde_json::to_string(&Line {
        event,
        timestamp_us,
    })
    .unwrap_or_else(|e| format!(r#"{{"event":"error","reason":"{e}"}}"#));
    line.push('\n');
    line
}

/// Why the events file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("events: cannot open {path}")]
pub struct EventsError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Where events go; a sink without a file drops them.
#[derive(Default)]
pub struct EventSink {
    out: Option<File>,
}

impl EventSink {
    /// Opens `path` for appending (created if missing). A FIFO blocks here until a reader opens
    /// it.
    pub fn open(path: &Path) -> Result<Self, EventsError> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| EventsError {
                path: path.to_owned(),
                source,
            })?;
        Ok(EventSink { out: Some(out) })
    }

    /// Writes one line (a single write, so lines from one Ember never interleave). A failed
    /// write (a FIFO whose reader left) turns the sink off with one warning.
    pub fn emit(&mut self, event: LifecycleEvent) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        if let Err(e) = out.write_all(event_line(&event, now).as_bytes()) {
            log::warn!("Lifecycle events stop: writing failed: {e}");
            self.out = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_event_line_started_is_one_json_line() {
        let line = event_line(&LifecycleEvent::Started { vcpus: 2 }, 42);
        assert_eq!(
            line,
            "{\"event\":\"started\",\"vcpus\":2,\"timestamp_us\":42}\n"
        );
    }

    #[test]
    fn test_event_line_unit_variant_has_only_tag() {
        let line = event_line(&LifecycleEvent::Paused, 1);
        assert_eq!(line, "{\"event\":\"paused\",\"timestamp_us\":1}\n");
    }

    #[test]
    fn test_event_from_outcome_carries_exit_code() {
        assert_eq!(
            LifecycleEvent::from_outcome(&VmOutcome::PowerOff),
            LifecycleEvent::PoweredOff { exit_code: 0 }
        );
        assert_eq!(
            LifecycleEvent::from_outcome(&VmOutcome::Signal(15)),
            LifecycleEvent::Stopped {
                reason: "signal 15".into(),
                exit_code: 143
            }
        );
    }

    #[test]
    fn test_event_sink_without_file_drops_events() {
        EventSink::default().emit(LifecycleEvent::Resumed);
    }
}
