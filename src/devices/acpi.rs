//! The ACPI power-management registers of a hardware-reduced platform: the sleep control and
//! sleep status registers (S5 = power off) and the reset register, as the FADT describes them.
//!
//! The registers are three consecutive byte-wide I/O ports. Linux powers off by writing
//! `SLP_TYP << 2 | SLP_EN` to the sleep control register, with `SLP_TYP` taken from the DSDT's
//! `_S5_` package; it reboots (without `reboot=k`) by writing the FADT's reset value to the
//! reset register.

use super::bus::BusDevice;
use super::legacy::EventFdTrigger;
use vm_superio::Trigger;

/// Ports covered: sleep control, sleep status, reset.
pub const ACPI_PM_PORT_LEN: u64 = 3;
/// Offset of the sleep control register.
const SLEEP_CONTROL: u64 = 0;
/// Offset of the sleep status register.
const SLEEP_STATUS: u64 = 1;
/// Offset of the reset register.
const RESET: u64 = 2;

/// The sleep type the DSDT's `_S5_` package gives for S5 (soft off).
pub const SLEEP_TYPE_S5: u8 = 5;
/// Bit position of `SLP_TYP` (3 bits) in the sleep control register.
pub const SLEEP_TYPE_SHIFT: u8 = 2;
/// `SLP_EN`: the write that carries it enters the sleep state.
pub const SLEEP_ENABLE: u8 = 1 << 5;
/// The value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 0x01;

/// The power-management register block on the port bus.
pub struct AcpiPm {
    poweroff: EventFdTrigger,
    reset: EventFdTrigger,
}

impl AcpiPm {
    /// Registers that fire `poweroff` on an S5 request and `reset` on a reset-register write.
    pub fn new(poweroff: EventFdTrigger, reset: EventFdTrigger) -> Self {
        AcpiPm { poweroff, reset }
    }

    fn sleep_control(&self, value: u8) {
        if value & SLEEP_ENABLE == 0 {
            return;
        }
        let sleep_type = (value >> SLEEP_TYPE_SHIFT) & 0x7;
        if sleep_type == SLEEP_TYPE_S5 {
            if let Err(e) = self.poweroff.trigger() {
                log::error!("Failed to signal the guest's power-off request: {e}");
            }
        } else {
            log::warn!(
                "Guest asked for ACPI sleep type {sleep_type}, which the DSDT does not offer; ignored"
            );
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS never set (the VM does not come back from S5); the other two
        // registers are write-only.
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            SLEEP_CONTROL => self.sleep_control(value),
            // Write-1-to-clear of WAK_STS, which is never set.
            SLEEP_STATUS => {}
            RESET if value == RESET_VALUE => {
                if let Err(e) = self.reset.trigger() {
                    log::error!("Failed to signal the guest's ACPI reset request: {e}");
                }
            }
            _ => log::warn!("ACPI PM: ignored write of {value:#x} at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    fn device() -> (AcpiPm, EventFd, EventFd) {
        let off = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let reset = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let dev = AcpiPm::new(
            EventFdTrigger(off.try_clone().expect("clone")),
            EventFdTrigger(reset.try_clone().expect("clone")),
        );
        (dev, off, reset)
    }

    #[test]
    fn test_acpi_pm_s5_with_slp_en_fires_poweroff() {
        let (dev, off, reset) = device();
        dev.write(
            SLEEP_CONTROL,
            &[(SLEEP_TYPE_S5 << SLEEP_TYPE_SHIFT) | SLEEP_ENABLE],
        );
        assert_eq!(off.read().expect("power-off fired"), 1);
        assert!(reset.read().is_err());
    }

    #[test]
    fn test_acpi_pm_s5_without_slp_en_does_nothing() {
        let (dev, off, _) = device();
        dev.write(SLEEP_CONTROL, &[SLEEP_TYPE_S5 << SLEEP_TYPE_SHIFT]);
        assert!(off.read().is_err());
    }

    #[test]
    fn test_acpi_pm_other_sleep_type_is_ignored() {
        let (dev, off, _) = device();
        dev.write(SLEEP_CONTROL, &[(3 << SLEEP_TYPE_SHIFT) | SLEEP_ENABLE]);
        dev.write(SLEEP_STATUS, &[0x80]);
        assert!(off.read().is_err());
    }

    #[test]
    fn test_acpi_pm_reset_value_fires_reset() {
        let (dev, off, reset) = device();
        dev.write(RESET, &[RESET_VALUE]);
        assert_eq!(reset.read().expect("reset fired"), 1);
        assert!(off.read().is_err());
    }

    #[test]
    fn test_acpi_pm_status_reads_zero() {
        let (dev, _, _) = device();
        let mut data = [0xffu8];
        dev.read(SLEEP_STATUS, &mut data);
        assert_eq!(data, [0]);
    }
}
