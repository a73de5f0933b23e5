//! The CMOS real-time clock (MC146818) at ports 0x70/0x71, as far as a booting kernel reads it:
//! the date and time (the host's UTC clock, read at each access), the status registers, and
//! the rest of the 128 bytes of CMOS RAM.
//!
//! Why: with no clock there, Linux polls the update-in-progress bit about 20,000 times at boot
//! ("Unable to read current time from RTC"), an exit each (seconds on software-nested hosts),
//! and starts in 1970 wherever kvm-clock is off. No alarm, periodic or update interrupts: the
//! FADT still says there is no RTC device, so no driver binds to it and IRQ 8 stays unused.
//! Writes to the time registers are ignored (the guest cannot move the host clock; its own
//! system time is what it sets); other registers keep what the guest writes.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::devices::bus::BusDevice;
use crate::devices::state::{StateError, check_version};

/// The index port; the data port follows it.
pub const CMOS_PORT_BASE: u64 = 0x70;
/// Index and data ports.
pub const CMOS_PORT_LEN: u64 = 2;

const RAM_LEN: usize = 128;
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// The century byte (IBM PC convention; ACPI's FADT can name it).
const REG_CENTURY: u8 = 0x32;

/// Status A: 32.768 kHz time base, 1024 Hz rate, no update in progress (bit 7 clear).
const A_DEFAULT: u8 = 0x26;
const A_UIP: u8 = 0x80;
/// Status B: 24-hour mode.
const B_24H: u8 = 0x02;
/// Status B: binary (not BCD) data.
const B_BINARY: u8 = 0x04;
/// Status D: the battery is good and the RAM valid.
const D_VALID: u8 = 0x80;

/// What the guest can change: the selected register and the CMOS RAM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    /// Layout version (`CmosState::VERSION`).
    pub version: u16,
    /// The register the next data-port access reaches (bit 7, the NMI mask, dropped).
    pub index: u8,
    /// The 128 bytes of CMOS RAM; the time registers in it are not used.
    pub ram: Vec<u8>,
}

impl Default for CmosState {
    fn default() -> Self {
        let mut ram = vec![0u8; RAM_LEN];
        ram[usize::from(REG_A)] = A_DEFAULT;
        ram[usize::from(REG_B)] = B_24H;
        ram[usize::from(REG_D)] = D_VALID;
        CmosState {
            version: CmosState::VERSION,
            index: 0,
            ram,
        }
    }
}

impl CmosState {
    /// The layout this build writes and reads.
    pub const VERSION: u16 = 1;
}

/// The device. `clock` gives seconds since the Unix epoch (UTC); tests pass a fixed one.
pub struct Cmos {
    state: Mutex<CmosState>,
    clock: fn() -> i64,
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos::with_clock(host_utc_seconds)
    }
}

/// The host's clock, in seconds since the epoch (0 if it is set before 1970).
fn host_utc_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A calendar date and time of day, UTC (also the logger's timestamps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DateTime {
    pub(crate) year: i64,
    pub(crate) month: u8,
    pub(crate) day: u8,
    /// 1 = Sunday, as the RTC counts.
    weekday: u8,
    pub(crate) hour: u8,
    pub(crate) minute: u8,
    pub(crate) second: u8,
}

impl DateTime {
    /// Seconds since the epoch to a civil date (proleptic Gregorian calendar).
    pub(crate) fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400);
        // Days since 0000-03-01, in 400-year eras of 146,097 days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // 1970-01-01 was a Thursday (5 counting Sunday as 1).
        let weekday = (days + 4).rem_euclid(7) + 1;
        // Every value below is in range by construction (day < 32, month < 13, ...).
        DateTime {
            year,
            month: month as u8,
            day: day as u8,
            weekday: weekday as u8,
            hour: (tod / 3600) as u8,
            minute: (tod / 60 % 60) as u8,
            second: (tod % 60) as u8,
        }
    }
}

fn to_bcd(v: u8) -> u8 {
    (v / 10) << 4 | (v % 10)
}

impl Cmos {
    /// A CMOS with its registers at their power-on values and the given clock.
    pub fn with_clock(clock: fn() -> i64) -> Self {
        Cmos {
            state: Mutex::new(CmosState::default()),
            clock,
        }
    }

    /// The guest-visible state, for snapshots.
    pub fn save(&self) -> CmosState {
        self.lock().clone()
    }

    /// Puts back a saved state; a RAM image of the wrong size is refused.
    pub fn restore(&self, state: &CmosState) -> Result<(), StateError> {
        check_version("CMOS", state.version, CmosState::VERSION)?;
        if state.ram.len() != RAM_LEN {
            return Err(StateError::Invalid {
                what: "CMOS".into(),
                reason: format!("{} bytes of RAM, not {RAM_LEN}", state.ram.len()),
            });
        }
        *self.lock() = CmosState {
            version: CmosState::VERSION,
            index: state.index & 0x7f,
            ram: state.ram.clone(),
        };
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CmosState> {
        // A panic while holding the lock cannot leave the bytes inconsistent: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of register `index`.
    fn register(&self, state: &CmosState, index: u8) -> u8 {
        let b = state.ram[usize::from(REG_B)];
        let encode = |v: u8| if b & B_BINARY != 0 { v } else { to_bcd(v) };
        let now = || DateTime::from_unix((self.clock)());
        match index {
            REG_SECONDS => encode(now().second),
            REG_MINUTES => encode(now().minute),
            REG_HOURS => {
                let hour = now().hour;
                if b & B_24H != 0 {
                    encode(hour)
                } else {
                    // 12-hour mode: 12, 1..11, with bit 7 for PM.
                    let h12 = match hour % 12 {
                        0 => 12,
                        h => h,
                    };
                    encode(h12) | if hour >= 12 { 0x80 } else { 0 }
                }
            }
            REG_WEEKDAY => encode(now().weekday),
            REG_DAY => encode(now().day),
            REG_MONTH => encode(now().month),
            REG_YEAR => encode(now().year.rem_euclid(100) as u8),
            REG_CENTURY => encode(now().year.div_euclid(100).clamp(0, 99) as u8),
            REG_A => state.ram[usize::from(REG_A)] & !A_UIP,
            // Reading C acknowledges interrupts; none are ever raised.
            REG_C => 0,
            REG_D => D_VALID,
            _ => state.ram[usize::from(index)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        let state = self.lock();
        *first = match offset {
            0 => state.index,
            _ => self.register(&state, state.index),
        };
        for b in data.iter_mut().skip(1) {
            *b = 0xff;
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        let mut state = self.lock();
        if offset == 0 {
            // Bit 7 masks NMIs on a PC; there are none to mask here.
            state.index = value & 0x7f;
            return;
        }
        let index = state.index;
        match index {
            REG_SECONDS..=REG_YEAR | REG_CENTURY | REG_C | REG_D => {}
            REG_A => state.ram[usize::from(REG_A)] = value & !A_UIP,
            _ => state.ram[usize::from(index)] = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01 05:50:50 UTC, a Tuesday.
    fn fixed() -> i64 {
        1_796_104_250
    }

    fn read_reg(cmos: &Cmos, index: u8) -> u8 {
        cmos.write(0, &[index]);
        let mut b = [0u8];
        cmos.read(1, &mut b);
        b[0]
    }

    #[test]
    fn test_civil_dates_match_known_days() {
        let d = DateTime::from_unix(0);
        assert_eq!((d.year, d.month, d.day, d.weekday), (1970, 1, 1, 5));
        let d = DateTime::from_unix(fixed());
        assert_eq!(
            (
                d.year, d.month, d.day, d.weekday, d.hour, d.minute, d.second
            ),
            (2026, 12, 1, 3, 5, 50, 50)
        );
        // A leap day and the day after.
        let d = DateTime::from_unix(951_782_400);
        assert_eq!((d.year, d.month, d.day), (2000, 2, 29));
        let d = DateTime::from_unix(951_782_400 + 86_400);
        assert_eq!((d.year, d.month, d.day), (2000, 3, 1));
    }

    #[test]
    fn test_time_registers_read_the_clock_in_bcd() {
        let cmos = Cmos::with_clock(fixed);
        assert_eq!(read_reg(&cmos, REG_SECONDS), 0x50);
        assert_eq!(read_reg(&cmos, REG_MINUTES), 0x50);
        assert_eq!(read_reg(&cmos, REG_HOURS), 0x05);
        assert_eq!(read_reg(&cmos, REG_WEEKDAY), 0x03);
        assert_eq!(read_reg(&cmos, REG_DAY), 0x01);
        assert_eq!(read_reg(&cmos, REG_MONTH), 0x12);
        assert_eq!(read_reg(&cmos, REG_YEAR), 0x26);
        assert_eq!(read_reg(&cmos, REG_CENTURY), 0x20);
        // Never an update in progress; the data is valid.
        assert_eq!(read_reg(&cmos, REG_A) & A_UIP, 0);
        assert_eq!(read_reg(&cmos, REG_D), D_VALID);
    }

    #[test]
    fn test_binary_and_12_hour_modes_follow_status_b() {
        let cmos = Cmos::with_clock(|| fixed() + 12 * 3600);
        cmos.write(0, &[REG_B]);
        cmos.write(1, &[B_BINARY | B_24H]);
        assert_eq!(read_reg(&cmos, REG_HOURS), 17);
        assert_eq!(read_reg(&cmos, REG_MONTH), 12);
        cmos.write(0, &[REG_B]);
        cmos.write(1, &[0]);
        // 17:50 in BCD 12-hour mode: 5 PM.
        assert_eq!(read_reg(&cmos, REG_HOURS), 0x85);
    }

    #[test]
    fn test_ram_keeps_writes_but_time_and_uip_are_not_writable() {
        let cmos = Cmos::with_clock(fixed);
        cmos.write(0, &[0x80 | 0x40]);
        cmos.write(1, &[0xab]);
        assert_eq!(read_reg(&cmos, 0x40), 0xab);
        cmos.write(0, &[REG_SECONDS]);
        cmos.write(1, &[0x99]);
        assert_eq!(read_reg(&cmos, REG_SECONDS), 0x50);
        cmos.write(0, &[REG_A]);
        cmos.write(1, &[0xff]);
        assert_eq!(read_reg(&cmos, REG_A), 0x7f);
        // Reading the index port gives the index back; extra bytes of a wide access are 0xff.
        let mut wide = [0u8; 2];
        cmos.read(0, &mut wide);
        assert_eq!(wide, [REG_A, 0xff]);
    }

    #[test]
    fn test_state_round_trips_and_bad_state_is_refused() {
        let cmos = Cmos::with_clock(fixed);
        cmos.write(0, &[0x41]);
        cmos.write(1, &[7]);
        let saved = cmos.save();
        let other = Cmos::with_clock(fixed);
        other.restore(&saved).unwrap();
        assert_eq!(other.save(), saved);
        assert_eq!(read_reg(&other, 0x41), 7);
        let bad = CmosState {
            ram: vec![0; 3],
            ..CmosState::default()
        };
        assert!(matches!(
            other.restore(&bad),
            Err(StateError::Invalid { .. })
        ));
        let newer = CmosState {
            version: 2,
            ..CmosState::default()
        };
        assert!(matches!(
            other.restore(&newer),
            Err(StateError::Version { .. })
        ));
    }
}
