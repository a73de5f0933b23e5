//! Ember's logger. On stderr (the default): `[ember <seconds since start> LEVEL thread] message`,
//! with `ember:<id>` when an instance id was given (`--id`). With a log path (`--log-path`,
//! `PUT /logger`, the config file's `logger.log_path`), lines go to that file or FIFO instead, in
//! Firecracker's format: `<UTC time> [<id>:<thread>(:<LEVEL>)(:<file>:<line>)] message`, the
//! level and origin parts when `show_level` / `show_log_origin` ask for them. A module filter
//! (`--module`, `module`) keeps only messages from modules whose path starts with it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

// The RTC's calendar arithmetic, shared.
use crate::devices::legacy::cmos::DateTime;
use crate::sink::{LineSink, SinkError};

/// Firecracker's default instance id, reported by `GET /` when `--id` is not given.
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

/// Longest line written to a log file or FIFO: writes up to PIPE_BUF reach a FIFO whole.
const MAX_LINE: usize = 4096;

struct Logger {
    start: Instant,
    id: RwLock<Option<String>>,
    dest: Mutex<Option<LineSink>>,
    show_level: AtomicBool,
    show_origin: AtomicBool,
    module: RwLock<Option<String>>,
    /// A level was given (flag, file or API), so a new log path does not change it.
    level_given: AtomicBool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn logger() -> &'static Logger {
    LOGGER.get_or_init(|| Logger {
        start: Instant::now(),
        id: RwLock::new(None),
        dest: Mutex::new(None),
        show_level: AtomicBool::new(false),
        show_origin: AtomicBool::new(false),
        module: RwLock::new(None),
        level_given: AtomicBool::new(false),
    })
}

/// What `configure` changes; `None` leaves a setting as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoggerSettings {
    /// Write to this file or FIFO instead of stderr.
    pub log_path: Option<std::path::PathBuf>,
    /// The most verbose level written (`warn` until one is given; `info`, Firecracker's
    /// default, once a log path is given without one).
    pub level: Option<LevelFilter>,
    /// Show the level in log-file lines.
    pub show_level: Option<bool>,
    /// Show the file and line in log-file lines.
    pub show_log_origin: Option<bool>,
    /// Keep only messages from this module path (`ember::devices`; a leading `ember::` may be
    /// left out).
    pub module: Option<String>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        if metadata.level() > log::max_level() || !metadata.target().starts_with("ember") {
            return false;
        }
        match &*self.module.read().unwrap_or_else(|e| e.into_inner()) {
            Some(module) => module_matches(metadata.target(), module),
            None => true,
        }
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let id = self.id.read().unwrap_or_else(|e| e.into_inner()).clone();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("-");
        let mut dest = self.dest.lock().unwrap_or_else(|e| e.into_inner());
        match dest.as_mut() {
            Some(sink) => {
                let mut tag = vec![id.as_deref().unwrap_or(DEFAULT_INSTANCE_ID), thread];
                let level = record.level().to_string();
                if self.show_level.load(Ordering::Relaxed) {
                    tag.push(&level);
                }
                let line_no = record.line().map(|l| l.to_string()).unwrap_or_default();
                if self.show_origin.load(Ordering::Relaxed) {
                    tag.push(record.file().unwrap_or("unknown"));
                    tag.push(&line_no);
                }
                let mut line = format!("{} [{}] {}", utc_timestamp(), tag.join(":"), record.args());
                if line.len() >= MAX_LINE {
                    let mut cut = MAX_LINE - 4;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                    line.push_str("...");
                }
                line.push('\n');
                sink.write_line(line.as_bytes(), false);
            }
            None => {
                drop(dest);
                let elapsed = self.start.elapsed();
                let name = match &id {
                    Some(id) => format!("ember:{id}"),
                    None => "ember".to_string(),
                };
                let line = format!(
                    "[{name} {:>4}.{:06} {:<5} {thread}] {}\n",
                    elapsed.as_secs(),
                    elapsed.subsec_micros(),
                    record.level(),
                    record.args()
                );
                // One write per line so lines from several threads do not interleave; a
                // failing stderr has nowhere to report to.
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Whether a record's target (`ember::devices::virtio::block`) is inside `module`, given with
/// or without the crate name (`devices::virtio`, `ember::devices`).
fn module_matches(target: &str, module: &str) -> bool {
    let inner = target.strip_prefix("ember::").unwrap_or(target);
    [target, inner].iter().any(|t| {
        t.strip_prefix(module)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Installs the logger at `level`; later calls only change the level.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(logger());
    log::set_max_level(level);
}

/// Sets the instance id shown in every line (`--id`).
pub fn set_instance_id(id: &str) {
    *logger().id.write().unwrap_or_else(|e| e.into_inner()) = Some(id.to_string());
}

/// The instance id (`--id`, else Firecracker's default).
pub fn instance_id() -> String {
    logger()
        .id
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| DEFAULT_INSTANCE_ID.to_string())
}

/// Applies `settings`; the destination is opened first, so a path that cannot be opened
/// changes nothing.
pub fn configure(settings: &LoggerSettings) -> Result<(), SinkError> {
    let sink = settings
        .log_path
        .as_deref()
        .map(LineSink::open)
        .transpose()?;
    let l = logger();
    if let Some(level) = settings.level {
        log::set_max_level(level);
        l.level_given.store(true, Ordering::Relaxed);
    } else if sink.is_some() && !l.level_given.load(Ordering::Relaxed) {
        log::set_max_level(LevelFilter::Info);
    }
    if let Some(show) = settings.show_level {
        l.show_level.store(show, Ordering::Relaxed);
    }
    if let Some(show) = settings.show_log_origin {
        l.show_origin.store(show, Ordering::Relaxed);
    }
    if let Some(module) = &settings.module {
        *l.module.write().unwrap_or_else(|e| e.into_inner()) = Some(module.clone());
    }
    if let Some(sink) = sink {
        *l.dest.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }
    Ok(())
}

/// The log file or FIFO in use, if any.
pub fn log_path() -> Option<std::path::PathBuf> {
    let dest = logger().dest.lock().unwrap_or_else(|e| e.into_inner());
    dest.as_ref().map(|s| s.path().to_owned())
}

/// The current settings, as `GET /vm/config` shows them.
pub fn settings() -> LoggerSettings {
    let l = logger();
    LoggerSettings {
        log_path: log_path(),
        level: Some(log::max_level()),
        show_level: Some(l.show_level.load(Ordering::Relaxed)),
        show_log_origin: Some(l.show_origin.load(Ordering::Relaxed)),
        module: l.module.read().unwrap_or_else(|e| e.into_inner()).clone(),
    }
}

/// Log lines dropped because the log FIFO was full.
pub fn missed_lines() -> u64 {
    let dest = logger().dest.lock().unwrap_or_else(|e| e.into_inner());
    dest.as_ref().map_or(0, LineSink::missed)
}

/// Now, as `2026-12-01T06:13:55.123456789` in UTC: computed from the clock alone (no time-zone
/// file is read, which the seccomp filters would refuse once the VM runs).
pub fn utc_timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let t = DateTime::from_unix(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        now.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_module_filter_matches_whole_path_segments() {
        assert!(module_matches("ember::devices::virtio", "ember::devices"));
        assert!(module_matches("ember::devices::virtio", "devices"));
        assert!(module_matches("ember::vmm", "vmm"));
        assert!(!module_matches("ember::vmm", "vm"));
        assert!(!module_matches("ember::api::server", "devices"));
    }

    #[test]
    fn test_utc_timestamp_shape() {
        let t = utc_timestamp();
        assert_eq!(t.len(), "2026-12-01T06:13:55.123456789".len(), "{t}");
        assert_eq!(&t[10..11], "T");
    }
}
