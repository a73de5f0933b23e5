//! The boot-timer pseudo-device (as Firecracker's `--boot-timer`): a guest writes the magic
//! byte 123 to its register when its init starts, and Ember logs the wall-clock and CPU time
//! since the process started.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::devices::bus::BusDevice;

/// The value that marks "guest init started".
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// Size of the register window.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Records the process start; call first thing in `main`.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(Instant::now);
}

/// Wall time since `mark_process_start` (zero if it was never called).
pub fn since_process_start() -> Duration {
    PROCESS_START
        .get()
        .map(Instant::elapsed)
        .unwrap_or_default()
}

/// CPU time (user + system, all threads) the process has used.
pub fn process_cpu_time() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// The monotonic clock (what a launcher's `--start-time-us` is read from).
pub fn monotonic_time() -> Duration {
    clock(libc::CLOCK_MONOTONIC)
}

fn clock(id: libc::clockid_t) -> Duration {
    // SAFETY: timespec is plain data; clock_gettime fills it and reads nothing else.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid timespec owned by this frame.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The device: reports the first magic write only.
#[derive(Default)]
pub struct BootTimer {
    reported: AtomicBool,
}

impl BusDevice for BootTimer {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        if !self.reported.swap(true, Ordering::SeqCst) {
            let wall = since_process_start();
            let cpu = process_cpu_time();
            log::info!(
                "Guest boot-timer: init started {}.{:03} ms after exec ({}.{:03} ms CPU)",
                wall.as_micros() / 1000,
                wall.as_micros() % 1000,
                cpu.as_micros() / 1000,
                cpu.as_micros() % 1000
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_boot_timer_reports_magic_once() {
        let timer = BootTimer::default();
        timer.write(0, &[1]);
        assert!(!timer.reported.load(Ordering::SeqCst));
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        assert!(timer.reported.load(Ordering::SeqCst));
    }
}
