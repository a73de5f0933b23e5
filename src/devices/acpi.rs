//! The ACPI fixed-hardware power-management registers the FADT describes: the PM1a event block
//! (status and enable), the PM1a control block (S5 = power off) and the reset register.
//!
//! Seven consecutive I/O ports: PM1_STS (2 bytes), PM1_EN (2), PM1_CNT (2), RESET (1). Linux
//! powers off by writing `SLP_TYP << 10 | SLP_EN` to PM1_CNT, with `SLP_TYP` from the DSDT's
//! `_S5_` package; it reboots (without `reboot=k`) by writing the FADT's reset value to the reset
//! register. No event is ever raised: PM1_STS reads 0 and the SCI stays quiet.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;

use super::bus::BusDevice;
use super::legacy::EventFdTrigger;
use super::state::{StateError, check_version};

/// Ports covered: PM1_STS, PM1_EN, PM1_CNT (two bytes each), then the reset register.
pub const ACPI_PM_PORT_LEN: u64 = 7;
/// Length of the PM1 event block (PM1_STS + PM1_EN), as the FADT gives it.
pub const PM1_EVT_LEN: u8 = 4;
/// Length of the PM1 control block.
pub const PM1_CNT_LEN: u8 = 2;
/// Offset of PM1_EN.
const PM1_EN: usize = 2;
/// Offset of PM1_CNT.
const PM1_CNT: usize = 4;
/// Offset of the reset register.
const RESET: u64 = 6;

/// The sleep type the DSDT's `_S5_` package gives for S5 (soft off).
pub const SLEEP_TYPE_S5: u8 = 5;
/// PM1_CNT bit 0, SCI_EN: the platform is in ACPI mode (always, there is no SMI_CMD).
const SCI_EN: u16 = 1;
/// Bit position of `SLP_TYP` (3 bits) in PM1_CNT.
pub const SLP_TYP_SHIFT: u16 = 10;
/// PM1_CNT `SLP_EN`: the write that carries it enters the sleep state.
pub const SLP_EN: u16 = 1 << 13;
/// The value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 0x01;

/// Saved state of the power-management registers (PM1_STS never holds anything).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    /// Layout version (`AcpiPmState::VERSION`).
    pub version: u16,
    /// PM1_EN.
    pub pm1_enable: u16,
    /// PM1_CNT as the guest last wrote it (SLP_EN, being write-only, never saved).
    pub pm1_control: u16,
}

impl AcpiPmState {
    /// The layout this build writes and reads.
    pub const VERSION: u16 = 1;
}

/// The power-management register block on the port bus.
pub struct AcpiPm {
    /// PM1_STS, PM1_EN and PM1_CNT as the guest last wrote them (little-endian bytes).
    regs: Mutex<[u8; 6]>,
    poweroff: EventFdTrigger,
    reset: EventFdTrigger,
}

impl AcpiPm {
    /// Registers that fire `poweroff` on an S5 request and `reset` on a reset-register write.
    pub fn new(poweroff: EventFdTrigger, reset: EventFdTrigger) -> Self {
        AcpiPm {
            regs: Mutex::new([0; 6]),
            poweroff,
            reset,
        }
    }

    /// The enable and control registers.
    pub fn save(&self) -> AcpiPmState {
        let regs = self.regs.lock().expect("ACPI PM lock poisoned");
        AcpiPmState {
            version: AcpiPmState::VERSION,
            pm1_enable: u16::from_le_bytes([regs[PM1_EN], regs[PM1_EN + 1]]),
            pm1_control: u16::from_le_bytes([regs[PM1_CNT], regs[PM1_CNT + 1]]),
        }
    }

    /// Puts the enable and control registers where `state` had them; enters no sleep state.
    pub fn restore(&self, state: &AcpiPmState) -> Result<(), StateError> {
        check_version("ACPI PM", state.version, AcpiPmState::VERSION)?;
        let mut regs = self.regs.lock().expect("ACPI PM lock poisoned");
        regs[PM1_EN..PM1_EN + 2].copy_from_slice(&state.pm1_enable.to_le_bytes());
        regs[PM1_CNT..PM1_CNT + 2].copy_from_slice(&(state.pm1_control & !SLP_EN).to_le_bytes());
        Ok(())
    }

    fn sleep(&self, control: u16) {
        let sleep_type = (control >> SLP_TYP_SHIFT) & 0x7;
        if sleep_type == u16::from(SLEEP_TYPE_S5) {
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
    fn read(&self, offset: u64, data: &mut [u8]) {
        let regs = self.regs.lock().expect("ACPI PM lock poisoned");
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset as usize + i;
            *b = match at {
                // PM1_STS: no event is ever pending (WAK_STS included).
                0 | 1 => 0,
                PM1_CNT => regs[at] | SCI_EN as u8,
                _ if at < regs.len() => regs[at],
                // The reset register is write-only.
                _ => 0,
            };
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset == RESET {
            if data.first() == Some(&RESET_VALUE)
                && let Err(e) = self.reset.trigger()
            {
                log::error!("Failed to signal the guest's ACPI reset request: {e}");
            }
            return;
        }
        let control = {
            let mut regs = self.regs.lock().expect("ACPI PM lock poisoned");
            for (i, b) in data.iter().enumerate() {
                let at = offset as usize + i;
                // PM1_STS bits are write-1-to-clear, and none is ever set.
                if (PM1_EN..regs.len()).contains(&at) {
                    regs[at] = *b;
                }
            }
            let control = u16::from_le_bytes([regs[PM1_CNT], regs[PM1_CNT + 1]]);
            // SLP_EN is write-only: it reads back as 0.
            regs[PM1_CNT + 1] &= !((SLP_EN >> 8) as u8);
            control
        };
        let touches_control = offset as usize + data.len() > PM1_CNT + 1;
        if touches_control && control & SLP_EN != 0 {
            self.sleep(control);
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

    const S5: u16 = (SLEEP_TYPE_S5 as u16) << SLP_TYP_SHIFT;

    #[test]
    fn test_acpi_pm_s5_then_slp_en_word_writes_fire_poweroff() {
        // What ACPICA does: SLP_TYP first, then SLP_TYP | SLP_EN, SCI_EN kept.
        let (dev, off, reset) = device();
        dev.write(4, &(S5 | SCI_EN).to_le_bytes());
        assert!(off.read().is_err());
        dev.write(4, &(S5 | SLP_EN | SCI_EN).to_le_bytes());
        assert_eq!(off.read().expect("power-off fired"), 1);
        assert!(reset.read().is_err());
    }

    #[test]
    fn test_acpi_pm_s5_high_byte_write_fires_poweroff() {
        let (dev, off, _) = device();
        dev.write(5, &[((S5 | SLP_EN) >> 8) as u8]);
        assert_eq!(off.read().expect("power-off fired"), 1);
    }

    #[test]
    fn test_acpi_pm_other_sleep_type_is_ignored() {
        let (dev, off, _) = device();
        dev.write(4, &((3 << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes());
        dev.write(0, &[0xff, 0xff]);
        assert!(off.read().is_err());
    }

    #[test]
    fn test_acpi_pm_enable_reads_back_and_control_reads_sci_en() {
        let (dev, _, _) = device();
        dev.write(2, &[0x21, 0x01]);
        let mut data = [0u8; 6];
        dev.read(0, &mut data);
        assert_eq!(data, [0, 0, 0x21, 0x01, SCI_EN as u8, 0]);
    }

    #[test]
    fn test_acpi_pm_reset_value_fires_reset() {
        let (dev, off, reset) = device();
        dev.write(RESET, &[RESET_VALUE]);
        assert_eq!(reset.read().expect("reset fired"), 1);
        assert!(off.read().is_err());
        dev.write(RESET, &[0x06]);
        assert!(reset.read().is_err());
    }

    #[test]
    fn test_acpi_pm_state_round_trip_reads_the_same_and_sleeps_not() {
        let (dev, _, _) = device();
        dev.write(2, &[0x21, 0x01]);
        dev.write(4, &(S5 | SCI_EN).to_le_bytes());
        let json = serde_json::to_string(&dev.save()).expect("serialize");
        let (fresh, off, _) = device();

        fresh
            .restore(&serde_json::from_str(&json).expect("deserialize"))
            .expect("restore");

        let (mut a, mut b) = ([0u8; 6], [0u8; 6]);
        dev.read(0, &mut a);
        fresh.read(0, &mut b);
        assert_eq!(a, b);
        assert_eq!(fresh.save(), dev.save());
        assert!(off.read().is_err(), "restoring enters no sleep state");
    }
}
