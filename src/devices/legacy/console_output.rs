//! Console output that can stall (standard output on a pipe, FIFO or socket whose reader stops
//! reading) without stalling the guest: the vCPU appends to a bounded buffer and an
//! `ember_console` thread does the blocking writes. When the buffer is full, further output is
//! dropped and counted, with one warning when dropping starts and one saying how many bytes were
//! lost once the reader catches up. A terminal or a regular file is written directly (see
//! `SerialOutput`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most console bytes waiting for the reader; beyond it output is dropped.
pub const BUFFER_LIMIT: usize = 256 * 1024;
/// Largest single write by the output thread.
const CHUNK: usize = 64 * 1024;
/// At exit, waiting output gets this long without progress to reach the reader...
const DRAIN_STALL: Duration = Duration::from_millis(500);
/// ...and this long in all.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Why the output thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleOutputError {
    /// The thread could not be spawned.
    #[error("Failed to start the console output thread")]
    Spawn(#[source] io::Error),
    /// Its seccomp filter could not be installed.
    #[error("Console output thread: {0}")]
    Seccomp(String),
}

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    /// Bytes the output thread took and is writing.
    in_flight: usize,
    /// Bytes dropped since the last report.
    dropped: u64,
    /// The output failed (the reader went away): everything is discarded from now on.
    failed: bool,
    /// Ember is exiting: the thread writes what is left and ends.
    closing: bool,
    /// Bumped after every write, so the exit drain can tell progress from a stall.
    progress: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a bug elsewhere; the state is plain data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The vCPU's end of buffered console output.
pub struct BufferedOutput {
    shared: Arc<Shared>,
    limit: usize,
    /// The file, until the output thread takes it.
    file: Option<File>,
    thread: Option<JoinHandle<()>>,
}

impl BufferedOutput {
    /// Buffers output for `file`; nothing is written until `start` runs the thread.
    pub fn new(file: File) -> Self {
        Self::with_limit(file, BUFFER_LIMIT)
    }

    fn with_limit(file: File, limit: usize) -> Self {
        BufferedOutput {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            limit,
            file: Some(file),
            thread: None,
        }
    }

    /// Starts the `ember_console` thread, with its seccomp filter when `seccomp`; returns once
    /// the filter is in place. Starting twice does nothing.
    pub fn start(&mut self, seccomp: bool) -> Result<(), ConsoleOutputError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let shared = self.shared.clone();
        let (installed_tx, installed) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("ember_console".into())
            .spawn(move || {
                let installed = if seccomp {
                    crate::seccomp::install(crate::seccomp::ThreadKind::Console)
                        .map_err(|e| e.to_string())
                } else {
                    Ok(())
                };
                let ok = installed.is_ok();
                let _ = installed_tx.send(installed);
                if ok {
                    write_loop(&shared, file);
                }
            })
            .map_err(ConsoleOutputError::Spawn)?;
        self.thread = Some(thread);
        let result = match installed.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConsoleOutputError::Seccomp(e)),
            Err(_) => Err(ConsoleOutputError::Seccomp("the thread ended".into())),
        };
        if result.is_err() {
            // Nobody writes: discard rather than wait for a thread that is gone.
            self.shared.lock().failed = true;
        }
        result
    }

    /// Bytes waiting for the reader.
    pub fn pending(&self) -> usize {
        let state = self.shared.lock();
        state.buf.len() + state.in_flight
    }
}

impl Write for BufferedOutput {
    /// Never blocks and never fails: what does not fit is dropped and counted.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        if state.failed {
            return Ok(bytes.len());
        }
        let room = self.limit.saturating_sub(state.buf.len());
        let take = room.min(bytes.len());
        state.buf.extend(&bytes[..take]);
        let lost = (bytes.len() - take) as u64;
        if lost > 0 {
            if state.dropped == 0 {
                log::warn!(
                    "Console output is not being read ({} KiB waiting): dropping output until the reader catches up",
                    self.limit / 1024
                );
            }
            state.dropped += lost;
        }
        drop(state);
        self.shared.changed.notify_all();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BufferedOutput {
    /// Gives waiting output a bounded time to reach the reader, then lets the thread go.
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let started = Instant::now();
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.changed.notify_all();
        let mut last = (state.progress, Instant::now());
        while !state.failed && state.buf.len() + state.in_flight > 0 {
            if last.1.elapsed() > DRAIN_STALL || started.elapsed() > DRAIN_LIMIT {
                log::warn!(
                    "Console output: {} bytes not delivered at exit (standard output is not being read)",
                    state.buf.len() + state.in_flight
                );
                return;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, Duration::from_millis(50))
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
            if state.progress != last.0 {
                last = (state.progress, Instant::now());
            }
        }
        report_dropped(&mut state);
        drop(state);
        let _ = thread.join();
    }
}

fn report_dropped(state: &mut State) {
    if state.dropped > 0 {
        log::warn!(
            "Console output: {} bytes were dropped while standard output was not being read",
            state.dropped
        );
        state.dropped = 0;
    }
}

/// The `ember_console` thread: writes what the vCPU buffered, blocking only itself.
fn write_loop(shared: &Shared, mut file: File) {
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        let mut state = shared.lock();
        while state.buf.is_empty() && !state.closing {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.buf.is_empty() {
            return;
        }
        let n = state.buf.len().min(CHUNK);
        chunk.clear();
        chunk.extend(state.buf.drain(..n));
        state.in_flight = n;
        drop(state);

        let result = file.write_all(&chunk);

        let mut state = shared.lock();
        state.in_flight = 0;
        state.progress += 1;
        if let Err(e) = result {
            // Reported once: a guest printing to a closed pipe must not flood the log.
            log::warn!("Serial console output failed, further output is lost: {e}");
            state.failed = true;
            state.buf = VecDeque::new();
        } else if state.buf.is_empty() {
            report_dropped(&mut state);
        }
        let failed = state.failed;
        drop(state);
        shared.changed.notify_all();
        if failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_buffered_output_drops_beyond_limit_and_counts() {
        let (_reader, writer) = std::io::pipe().expect("pipe");
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let mut out = BufferedOutput::with_limit(file, 10);
        assert_eq!(out.write(b"0123456").expect("write"), 7);
        assert_eq!(out.write(b"789abcdef").expect("write"), 9);
        assert_eq!(out.pending(), 10);
        assert_eq!(out.shared.lock().dropped, 6);
        assert_eq!(
            out.shared.lock().buf.iter().copied().collect::<Vec<u8>>(),
            b"0123456789"
        );
    }

    #[test]
    fn test_buffered_output_after_failure_discards() {
        let (_reader, writer) = std::io::pipe().expect("pipe");
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let mut out = BufferedOutput::with_limit(file, 10);
        out.shared.lock().failed = true;
        assert_eq!(out.write(b"abc").expect("write"), 3);
        assert_eq!(out.pending(), 0);
    }
}
