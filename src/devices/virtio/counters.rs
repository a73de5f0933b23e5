//! Per-device counters: what a virtio device did (operations, bytes each way) and what went wrong
//! (errors, drops), kept as atomics that the device publishes from the event loop and that the
//! device manager (and later the metrics endpoint) reads without taking the device's lock.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// The counters at one moment, as plain numbers (for logs and the metrics endpoint).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterValues {
    /// Requests (block) or frames (net) the device handled.
    pub ops: u64,
    /// Bytes from the device to the guest: data read from the disk, frames received.
    pub read_bytes: u64,
    /// Bytes from the guest to the device: data written to the disk, frames sent.
    pub written_bytes: u64,
    /// Requests or frames that failed: malformed by the guest, refused or failed on the host.
    pub errors: u64,
    /// Frames dropped (no guest buffer could hold them, or the host handed over garbage).
    pub drops: u64,
    /// Times a rate limiter made a queue wait (devices without one: 0).
    pub throttled: u64,
}

impl fmt::Display for CounterValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops, {} bytes read, {} bytes written, {} errors, {} drops",
            self.ops, self.read_bytes, self.written_bytes, self.errors, self.drops
        )
    }
}

/// The live counters of one device. The device is the only writer; readers may see one field
/// a publication ahead of another, which counters tolerate.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    ops: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    errors: AtomicU64,
    drops: AtomicU64,
    throttled: AtomicU64,
}

impl DeviceCounters {
    /// Publishes the device's running totals.
    pub fn publish(&self, values: CounterValues) {
        self.ops.store(values.ops, Ordering::Relaxed);
        self.read_bytes.store(values.read_bytes, Ordering::Relaxed);
        self.written_bytes
            .store(values.written_bytes, Ordering::Relaxed);
        self.errors.store(values.errors, Ordering::Relaxed);
        self.drops.store(values.drops, Ordering::Relaxed);
        self.throttled.store(values.throttled, Ordering::Relaxed);
    }

    /// The totals last published.
    pub fn values(&self) -> CounterValues {
        CounterValues {
            ops: self.ops.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_counters_published_values_read_back() {
        let counters = DeviceCounters::default();
        let values = CounterValues {
            ops: 3,
            read_bytes: 1024,
            written_bytes: 512,
            errors: 1,
            drops: 2,
            throttled: 4,
        };
        counters.publish(values);
        assert_eq!(counters.values(), values);
        assert_eq!(
            values.to_string(),
            "3 ops, 1024 bytes read, 512 bytes written, 1 errors, 2 drops"
        );
    }
}
