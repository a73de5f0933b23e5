//! Port-I/O and MMIO buses: address ranges mapped to devices. Devices take `&self` and lock
//! inside, so vCPU threads share a bus without a bus-wide lock.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

/// A device reachable through a bus.
pub trait BusDevice: Send + Sync {
    /// A guest read of `data.len()` bytes at `offset` from the device's base.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset` from the device's base.
    fn write(&self, offset: u64, data: &[u8]);
}

/// Errors while building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("Bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// A zero-length range.
    #[error("Bus range at {base:#x} has zero length")]
    ZeroLength {
        /// Start of the rejected range.
        base: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: Arc<dyn BusDevice>,
}

/// What an access hit.
pub enum Access {
    /// A device handled it.
    Handled,
    /// Nothing is mapped at the address.
    Unmapped,
}

/// Most distinct unmapped addresses reported at `warn!`; later ones go to `debug!`.
const MAX_REPORTED_UNMAPPED: usize = 64;

/// An address space of non-overlapping device ranges.
pub struct Bus {
    name: &'static str,
    devices: BTreeMap<u64, Entry>,
    quiet: Vec<(u64, u64)>,
    reported: Mutex<HashSet<(bool, u64)>>,
}

impl Bus {
    /// An empty bus; `name` ("port", "MMIO") appears in log lines.
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            devices: BTreeMap::new(),
            quiet: Vec::new(),
            reported: Mutex::new(HashSet::new()),
        }
    }

    /// Maps `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<dyn BusDevice>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if let Some((&start, entry)) = self.devices.range(..end).next_back()
            && start + entry.len > base
        {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// Marks `[base, base + len)` as known-absent hardware guests commonly probe (POST port,
    /// COM2-4): accesses there still read as all-ones but are logged only at `debug!`.
    pub fn add_quiet_range(&mut self, base: u64, len: u64) {
        self.quiet.push((base, len));
    }

    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (&start, entry) = self.devices.range(..=addr).next_back()?;
        (addr - start < entry.len).then_some((start, entry))
    }

    fn report_unmapped(&self, kind: &str, addr: u64, len: usize) {
        let quiet = self.quiet.iter().any(|&(b, l)| addr >= b && addr - b < l);
        let first = !quiet && {
            let mut seen = self.reported.lock().expect("reported set lock poisoned");
            seen.len() < MAX_REPORTED_UNMAPPED && seen.insert((kind == "write", addr))
        };
        if first {
            log::warn!(
                "Guest {kind} of {len} bytes at unmapped {} address {addr:#x} ignored",
                self.name
            );
        } else {
            log::debug!(
                "Guest {kind} of {len} bytes at unmapped {} address {addr:#x} ignored",
                self.name
            );
        }
    }

    /// Dispatches a guest read; unmapped reads return all-ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Access {
        match self.find(addr) {
            Some((start, entry)) => {
                entry.device.read(addr - start, data);
                Access::Handled
            }
            None => {
                data.fill(0xff);
                self.report_unmapped("read", addr, data.len());
                Access::Unmapped
            }
        }
    }

    /// Dispatches a guest write; unmapped writes are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> Access {
        match self.find(addr) {
            Some((start, entry)) => {
                entry.device.write(addr - start, data);
                Access::Handled
            }
            None => {
                self.report_unmapped("write", addr, data.len());
                Access::Unmapped
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Mutex<Option<(u64, Vec<u8>)>>,
    }

    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            *self.last.lock().expect("lock") = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn test_bus_insert_overlap_is_rejected() {
        let mut bus = Bus::new("test");
        let dev = Arc::new(Recorder::default());
        bus.insert(dev.clone(), 0x10, 0x10).expect("first");
        assert_eq!(
            bus.insert(dev.clone(), 0x18, 0x10),
            Err(BusError::Overlap {
                base: 0x18,
                len: 0x10
            })
        );
        assert!(bus.insert(dev.clone(), 0x08, 0x09).is_err());
        assert!(bus.insert(dev.clone(), 0x20, 0x10).is_ok());
        assert!(bus.insert(dev, 0x00, 0x08).is_ok());
    }

    #[test]
    fn test_bus_read_routes_with_offset() {
        let mut bus = Bus::new("test");
        bus.insert(Arc::new(Recorder::default()), 0x3f8, 8)
            .expect("insert");
        let mut data = [0u8; 1];
        assert!(matches!(bus.read(0x3fd, &mut data), Access::Handled));
        assert_eq!(data[0], 5);
    }

    #[test]
    fn test_bus_unmapped_read_is_all_ones() {
        let bus = Bus::new("test");
        let mut data = [0u8; 4];
        assert!(matches!(bus.read(0x1234, &mut data), Access::Unmapped));
        assert_eq!(data, [0xff; 4]);
    }

    #[test]
    fn test_bus_write_routes_to_device() {
        let mut bus = Bus::new("test");
        let dev = Arc::new(Recorder::default());
        bus.insert(dev.clone(), 0x60, 5).expect("insert");
        bus.write(0x64, &[0xfe]);
        assert_eq!(*dev.last.lock().expect("lock"), Some((4, vec![0xfe])));
    }

    #[test]
    fn test_bus_zero_length_is_rejected() {
        let mut bus = Bus::new("test");
        assert!(bus.insert(Arc::new(Recorder::default()), 0, 0).is_err());
    }
}
