//! The i8042 keyboard controller, reduced to what a microVM needs: the CPU reset command that
//! a guest `reboot` (with `reboot=k`) sends.

use std::sync::Mutex;

use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// First I/O port of the controller (data port).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports covered: 0x60 (data) to 0x64 (command/status).
pub const I8042_PORT_LEN: u64 = 5;

/// The i8042 on the port bus; a reset command fires the reset event.
pub struct I8042 {
    inner: Mutex<I8042Device<EventFdTrigger>>,
}

impl I8042 {
    /// A controller that fires `reset` when the guest asks for a CPU reset.
    pub fn new(reset: EventFdTrigger) -> Self {
        I8042 {
            inner: Mutex::new(I8042Device::new(reset)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut dev = self.inner.lock().expect("i8042 lock poisoned");
        for b in data.iter_mut() {
            *b = dev.read(offset as u8);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut dev = self.inner.lock().expect("i8042 lock poisoned");
        for b in data {
            if let Err(e) = dev.write(offset as u8, *b) {
                log::error!("Failed to signal the guest's reset request: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    #[test]
    fn test_i8042_reset_command_fires_event() {
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let dev = I8042::new(EventFdTrigger(evt.try_clone().expect("clone")));
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().expect("reset fired"), 1);
    }

    #[test]
    fn test_i8042_other_command_does_not_reset() {
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let dev = I8042::new(EventFdTrigger(evt.try_clone().expect("clone")));
        dev.write(4, &[0xaa]);
        dev.write(0, &[0xfe]);
        assert!(evt.read().is_err());
    }
}
