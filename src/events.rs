//! Lifecycle events (`--events PATH`): one JSON object per line, written by the main thread
//! when the VM starts, pauses, resumes or ends, so that scripts need not scrape the console.
//! Writes never block the main thread: a reader that stops reading loses the oldest events,
//! counted and announced (see `EventSink`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// Events were lost because the reader did not read; sent before the next line that
    /// reaches it.
    Dropped {
        /// How many events were lost.
        count: u64,
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
pub enum EventsError {
    /// open(2) or fcntl(2) failed.
    #[error("events: cannot open {path}")]
    Open {
        /// The events path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A stop signal came while Ember waited for a reader to open the FIFO.
    #[error("events: stopped by signal {signal} while waiting for a reader of {path}")]
    Stopped {
        /// The events path.
        path: PathBuf,
        /// The signal.
        signal: i32,
    },
}

/// Most event lines kept while the reader does not read (besides one `dropped` notice); older
/// ones are dropped and counted.
pub const MAX_PENDING: usize = 256;
/// How long the last events may take to reach a slow reader when Ember exits.
const FINISH_TIMEOUT: Duration = Duration::from_millis(500);
/// How often Ember looks for a reader of an events FIFO (and for a stop signal) while waiting.
const OPEN_RETRY: Duration = Duration::from_millis(50);

/// One line waiting for the reader; a `dropped` notice remembers its count so that dropping the
/// notice itself loses nothing.
struct Pending {
    bytes: Vec<u8>,
    notice: u64,
}

/// Where events go; a sink without a file drops them.
///
/// Writes never block: the file is non-blocking, a line the reader has no room for waits in a
/// queue of at most [`MAX_PENDING`] lines, and when that is full the oldest waiting line is
/// dropped and counted. Before the next line after a loss, a `dropped` event with the count
/// goes out, and the log says how many were lost. The event loop calls [`EventSink::flush`]
/// when the reader makes room (the fd is watched edge-triggered for `EPOLLOUT`).
#[derive(Default)]
pub struct EventSink {
    out: Option<File>,
    path: PathBuf,
    pending: VecDeque<Pending>,
    /// Bytes of the front line already written (a line is never dropped half written).
    offset: usize,
    /// Lines dropped and not yet announced in the stream.
    dropped: u64,
    /// Whether a loss was logged and its notice not yet delivered.
    stalled: bool,
    broken: bool,
}

impl EventSink {
    /// Opens `path` for appending (created if missing). A FIFO without a reader is waited for:
    /// Ember retries every 50 ms and gives up when `stop` returns a signal.
    pub fn open(path: &Path, mut stop: impl FnMut() -> Option<i32>) -> Result<Self, EventsError> {
        let open_err = |source| EventsError::Open {
            path: path.to_owned(),
            source,
        };
        let mut waiting = false;
        let out = loop {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
            {
                Ok(out) => break out,
                // A FIFO with no reader yet.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    if !waiting {
                        log::info!("Waiting for a reader of the events FIFO {}", path.display());
                        waiting = true;
                    }
                    if let Some(signal) = stop() {
                        return Err(EventsError::Stopped {
                            path: path.to_owned(),
                            signal,
                        });
                    }
                    std::thread::sleep(OPEN_RETRY);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(open_err(e)),
            }
        };
        Ok(EventSink {
            out: Some(out),
            path: path.to_owned(),
            ..EventSink::default()
        })
    }

    /// The descriptor to watch for room (`EPOLLOUT`), while events can still be written.
    pub fn fd(&self) -> Option<RawFd> {
        self.out
            .as_ref()
            .filter(|_| !self.broken)
            .map(|f| f.as_raw_fd())
    }

    /// Lines waiting for the reader.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues one line and writes what the reader has room for (each line in one write where
    /// it fits, so lines from one Ember never interleave). A failed write (a FIFO whose reader
    /// left) turns the sink off with one warning.
    pub fn emit(&mut self, event: LifecycleEvent) {
        if self.out.is_none() || self.broken {
            return;
        }
        self.pending.push_back(Pending {
            bytes: event_line(&event, now_us()).into_bytes(),
            notice: 0,
        });
        while self.pending.len() > MAX_PENDING {
            self.drop_oldest();
        }
        self.flush();
    }

    fn drop_oldest(&mut self) {
        // The front line may be half written: the oldest whole one goes.
        let index = usize::from(self.offset > 0);
        let Some(line) = self.pending.remove(index) else {
            return;
        };
        // A dropped notice gives its count back; it is announced again later.
        self.dropped += line.notice.max(1);
        if !self.stalled {
            self.stalled = true;
            log::warn!(
                "Lifecycle events: the reader of {} does not keep up; keeping the newest {MAX_PENDING} events and dropping older ones",
                self.path.display()
            );
        }
    }

    /// Writes waiting lines until the reader has no more room.
    pub fn flush(&mut self) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        while !self.broken {
            if self.offset == 0 && self.dropped > 0 {
                // Say how many were lost, in order: before the lines that survived.
                let count = std::mem::take(&mut self.dropped);
                let line = event_line(&LifecycleEvent::Dropped { count }, now_us());
                self.pending.push_front(Pending {
                    bytes: line.into_bytes(),
                    notice: count,
                });
            }
            let Some(line) = self.pending.front() else {
                break;
            };
            match out.write(&line.bytes[self.offset..]) {
                Ok(n) => {
                    self.offset += n;
                    if self.offset == line.bytes.len() {
                        if line.notice > 0 {
                            log::warn!(
                                "Lifecycle events: {} event(s) were dropped while the reader of {} did not read",
                                line.notice,
                                self.path.display()
                            );
                            self.stalled = false;
                        }
                        self.pending.pop_front();
                        self.offset = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("Lifecycle events stop: writing failed: {e}");
                    // The file stays open: the event loop may still watch its descriptor.
                    self.broken = true;
                    self.pending.clear();
                }
            }
        }
    }

    /// Gives the last lines a bounded time (500 ms) to reach a slow reader; what is still
    /// waiting then is lost and logged.
    pub fn finish(&mut self) {
        let deadline = Instant::now() + FINISH_TIMEOUT;
        self.flush();
        while let Some(fd) = self.fd().filter(|_| !self.pending.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !matches!(crate::fdwait::writable(fd, left), Ok(true)) {
                break;
            }
            self.flush();
        }
        let lost = self.dropped + self.pending.iter().map(|p| p.notice.max(1)).sum::<u64>();
        if lost > 0 && !self.broken {
            log::warn!(
                "Lifecycle events: {lost} event(s) not delivered: the reader of {} did not read",
                self.path.display()
            );
        }
        self.pending.clear();
        self.dropped = 0;
    }
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
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

    /// A non-blocking reader of the pipe behind `reader`, opened anew through /proc.
    fn nonblocking(fd: &impl AsRawFd, write: bool) -> (File, PathBuf) {
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let file = OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("reopen the pipe");
        (file, path)
    }

    fn drain(reader: &mut File) -> String {
        let mut text = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match std::io::Read::read(reader, &mut buf) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        String::from_utf8(text).expect("utf8")
    }

    #[test]
    fn test_event_sink_stalled_reader_drops_oldest_and_counts() {
        let (pipe_reader, pipe_writer) = std::io::pipe().expect("pipe");
        let (mut reader, _) = nonblocking(&pipe_reader, false);
        let (_, path) = nonblocking(&pipe_writer, true);
        let mut sink = EventSink::open(&path, || None).expect("open");
        const SENT: u64 = 3000;
        for _ in 0..SENT {
            sink.emit(LifecycleEvent::Paused);
        }
        // The newest lines, behind the notice of what was lost.
        assert_eq!(sink.pending(), MAX_PENDING + 1);
        let before = drain(&mut reader);
        sink.flush();
        let after = drain(&mut reader);
        assert_eq!(sink.pending(), 0);
        let first = after.lines().next().expect("a notice first");
        let notice: serde_json::Value = serde_json::from_str(first).expect("json");
        assert_eq!(notice["event"], "dropped");
        let count = notice["count"].as_u64().expect("count");
        let delivered = (before.lines().count() + after.lines().count() - 1) as u64;
        assert_eq!(delivered + count, SENT, "every event delivered or counted");
        assert_eq!(after.lines().count(), MAX_PENDING + 1);
    }

    #[test]
    fn test_event_sink_reader_gone_turns_off() {
        let (pipe_reader, pipe_writer) = std::io::pipe().expect("pipe");
        let (_, path) = nonblocking(&pipe_writer, true);
        let mut sink = EventSink::open(&path, || None).expect("open");
        drop(pipe_reader);
        sink.emit(LifecycleEvent::Resumed);
        assert_eq!(sink.fd(), None);
        sink.emit(LifecycleEvent::Paused);
        assert_eq!(sink.pending(), 0);
    }

    #[test]
    fn test_event_sink_fifo_without_reader_stops_on_signal() {
        let dir = std::env::temp_dir().join(format!("ember-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        // mkfifo(3), not the program: a child forked while another test holds a pipe would
        // keep its read end open and hide the EPIPE that test waits for.
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo reads the NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let err = EventSink::open(&fifo, || Some(15))
            .err()
            .expect("no reader");
        assert!(
            matches!(err, EventsError::Stopped { signal: 15, .. }),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
