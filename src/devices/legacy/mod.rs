//! Legacy PC devices: the 16550 UART console, the i8042 keyboard controller (reset line,
//! keyboard), the CMOS clock and the boot timer.

pub mod boot_timer;
pub mod cmos;
pub mod console_output;
pub mod i8042;
pub mod serial;
pub mod terminal;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An `EventFd` as a vm-superio interrupt or event trigger.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl EventFdTrigger {
    /// A second handle on the same eventfd.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(EventFdTrigger(self.0.try_clone()?))
    }
}
