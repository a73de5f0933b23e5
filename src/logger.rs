//! A small stderr logger: `[ember <seconds since start> LEVEL thread] message`.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use log::{LevelFilter, Log, Metadata, Record};

struct Logger {
    start: Instant,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level() && metadata.target().starts_with("ember")
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let elapsed = self.start.elapsed();
        let thread = std::thread::current();
        let line = format!(
            "[ember {:>4}.{:06} {:<5} {}] {}\n",
            elapsed.as_secs(),
            elapsed.subsec_micros(),
            record.level(),
            thread.name().unwrap_or("?"),
            record.args()
        );
        // One write per line so lines from several threads do not interleave; a failing
        // stderr has nowhere to report to.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger at `level`; later calls only change the level.
pub fn init(level: LevelFilter) {
    let logger = LOGGER.get_or_init(|| Logger {
        start: Instant::now(),
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}
