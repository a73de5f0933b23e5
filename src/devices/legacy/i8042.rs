//! Ember's i8042 keyboard controller with a PS/2 keyboard behind it: enough of the status,
//! command and data registers for Linux's i8042 driver and atkbd, the CPU reset line
//! (`reboot=k`), and host-injected key sequences (Ctrl-Alt-Del) in scancode set 2.
//!
//! The controller runs untranslated (the command byte's XLATE bit starts clear), so Linux talks
//! to the keyboard in set 2 directly. There is no AUX (mouse) port. IRQ 1 is raised through an
//! irqfd each time a byte becomes ready in the output buffer while the command byte enables it.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;
use crate::devices::state::{StateError, check_version};

/// First I/O port of the controller (data port).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports covered: 0x60 (data) to 0x64 (command/status).
pub const I8042_PORT_LEN: u64 = 5;
/// Interrupt line of the keyboard.
pub const I8042_KBD_IRQ: u32 = 1;

/// Offset of the data port from `I8042_PORT_BASE`.
const OFS_DATA: u64 = 0;
/// Offset of the status (read) / command (write) port.
const OFS_STATUS: u64 = 4;

// Status register bits.
/// Output buffer full: a byte waits at the data port.
const SB_OBF: u8 = 0x01;
/// System flag: the self-test passed.
const SB_SYS: u8 = 0x04;
/// The last write went to the command port.
const SB_CMD: u8 = 0x08;
/// Keyboard not inhibited (keylock off).
const SB_KEYLOCK: u8 = 0x10;

// Command byte (CTR) bits.
/// Raise IRQ 1 when a keyboard byte is ready.
const CTR_KBDINT: u8 = 0x01;
/// System flag.
const CTR_SYS: u8 = 0x04;
/// Keyboard interface disabled.
const CTR_KBDDIS: u8 = 0x10;
/// AUX interface disabled.
const CTR_AUXDIS: u8 = 0x20;
/// Command byte at power-on: keyboard interrupt on, AUX off, no translation.
const CTR_INITIAL: u8 = CTR_KBDINT | CTR_SYS | CTR_AUXDIS;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUTBUF: u8 = 0xd2;
const CMD_WRITE_AUX_OUTBUF: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

// Keyboard commands (port 0x60) and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_REPEAT: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_DEFAULTS: u8 = 0xf6;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_BAT_OK: u8 = 0xaa;
/// Answer to 0xAA: controller self-test passed.
const SELF_TEST_OK: u8 = 0x55;
/// Answer to 0xA9: AUX clock line stuck low, i.e. no AUX device.
const AUX_TEST_NONE: u8 = 0x01;
/// MF2 keyboard id, as answered to 0xF2.
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Most bytes the output buffer holds; a real controller holds one, the rest would wait in
/// the keyboard.
const OUTBUF_MAX: usize = 32;

/// Ctrl down, Alt down, Del down, Del up, Alt up, Ctrl up, in scancode set 2.
pub const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// Why a key sequence could not be delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum I8042Error {
    /// The guest disabled the keyboard (command 0xAD or keyboard command 0xF5).
    #[error("The guest's keyboard is disabled")]
    KeyboardDisabled,
    /// The output buffer is full: the guest is not reading the keyboard.
    #[error("The keyboard buffer is full: the guest is not reading its keyboard")]
    BufferFull,
}

/// The register state, behind the device's lock.
struct State {
    ctr: u8,
    last_was_command: bool,
    outbuf: VecDeque<u8>,
    /// A controller command waiting for its parameter on the data port.
    pending_cmd: Option<u8>,
    /// A keyboard command waiting for its parameter.
    pending_kbd: Option<u8>,
    /// The keyboard scans (0xF4) or not (0xF5).
    kbd_scanning: bool,
    scancode_set: u8,
    outp: u8,
}

/// Saved state of the controller and its keyboard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Layout version (`I8042State::VERSION`).
    pub version: u16,
    /// The command byte.
    pub ctr: u8,
    /// The last write went to the command port.
    pub last_was_command: bool,
    /// Bytes waiting at the data port.
    pub outbuf: Vec<u8>,
    /// A controller command waiting for its parameter.
    pub pending_cmd: Option<u8>,
    /// A keyboard command waiting for its parameter.
    pub pending_kbd: Option<u8>,
    /// The keyboard scans.
    pub kbd_scanning: bool,
    /// The keyboard's scancode set (1 to 3).
    pub scancode_set: u8,
    /// The output port (bit 0: the CPU reset line, active low).
    pub outp: u8,
}

impl I8042State {
    /// The layout this build writes and reads.
    pub const VERSION: u16 = 1;
}

/// What a register access asks the device to do once the lock is released.
#[derive(Default)]
struct Effects {
    irq: bool,
    reset: bool,
}

impl State {
    fn new() -> Self {
        State {
            ctr: CTR_INITIAL,
            last_was_command: false,
            outbuf: VecDeque::new(),
            pending_cmd: None,
            pending_kbd: None,
            kbd_scanning: true,
            scancode_set: 2,
            outp: 0x01,
        }
    }

    fn status(&self) -> u8 {
        let mut status = SB_SYS | SB_KEYLOCK;
        if !self.outbuf.is_empty() {
            status |= SB_OBF;
        }
        if self.last_was_command {
            status |= SB_CMD;
        }
        status
    }

    /// Queues bytes; asks for an interrupt when the buffer goes from empty to ready.
    fn push(&mut self, bytes: &[u8], fx: &mut Effects) {
        let was_empty = self.outbuf.is_empty();
        for &b in bytes {
            if self.outbuf.len() >= OUTBUF_MAX {
                log::warn!("i8042: output buffer full, byte {b:#04x} dropped");
                break;
            }
            self.outbuf.push_back(b);
        }
        if was_empty && !self.outbuf.is_empty() {
            fx.irq |= self.ctr & CTR_KBDINT != 0;
        }
    }

    fn read_data(&mut self, fx: &mut Effects) -> u8 {
        let byte = self.outbuf.pop_front().unwrap_or(0);
        // The next byte becomes ready: another edge on IRQ 1.
        if !self.outbuf.is_empty() && self.ctr & CTR_KBDINT != 0 {
            fx.irq = true;
        }
        byte
    }

    fn write_command(&mut self, cmd: u8, fx: &mut Effects) {
        self.last_was_command = true;
        self.pending_cmd = None;
        match cmd {
            CMD_READ_CTR => self.push(&[self.ctr], fx),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUTBUF | CMD_WRITE_AUX_OUTBUF
            | CMD_WRITE_AUX => self.pending_cmd = Some(cmd),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUXDIS,
            CMD_AUX_TEST => self.push(&[AUX_TEST_NONE], fx),
            CMD_SELF_TEST => self.push(&[SELF_TEST_OK], fx),
            CMD_KBD_TEST => self.push(&[0x00], fx),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBDDIS,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBDDIS,
            CMD_READ_OUTP => self.push(&[self.outp], fx),
            CMD_RESET_CPU => fx.reset = true,
            other => log::debug!("i8042: command {other:#04x} ignored"),
        }
    }

    fn write_data(&mut self, value: u8, fx: &mut Effects) {
        self.last_was_command = false;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => {
                let enable_irq = value & CTR_KBDINT != 0 && self.ctr & CTR_KBDINT == 0;
                self.ctr = value;
                if enable_irq && !self.outbuf.is_empty() {
                    fx.irq = true;
                }
            }
            Some(CMD_WRITE_OUTP) => {
                self.outp = value;
                // Output port bit 0 is the CPU reset line (active low).
                if value & 0x01 == 0 {
                    fx.reset = true;
                }
            }
            Some(CMD_WRITE_KBD_OUTBUF) => self.push(&[value], fx),
            // No AUX device: its bytes go nowhere.
            Some(CMD_WRITE_AUX_OUTBUF | CMD_WRITE_AUX) => {}
            Some(other) => log::debug!("i8042: parameter for command {other:#04x} ignored"),
            None => self.keyboard_command(value, fx),
        }
    }

    /// A byte for the keyboard itself.
    fn keyboard_command(&mut self, value: u8, fx: &mut Effects) {
        if let Some(cmd) = self.pending_kbd.take() {
            match cmd {
                KBD_SCANCODE_SET if value == 0 => self.push(&[KBD_ACK, self.scancode_set], fx),
                KBD_SCANCODE_SET if (1..=3).contains(&value) => {
                    self.scancode_set = value;
                    self.push(&[KBD_ACK], fx);
                }
                KBD_SCANCODE_SET => self.push(&[KBD_RESEND], fx),
                // LEDs and typematic rate: accepted, nothing to show.
                _ => self.push(&[KBD_ACK], fx),
            }
            return;
        }
        match value {
            KBD_RESET => {
                self.kbd_scanning = true;
                self.scancode_set = 2;
                self.push(&[KBD_ACK, KBD_BAT_OK], fx);
            }
            KBD_GET_ID => {
                self.push(&[KBD_ACK], fx);
                self.push(&KBD_ID, fx);
            }
            KBD_ENABLE => {
                self.kbd_scanning = true;
                self.push(&[KBD_ACK], fx);
            }
            KBD_DISABLE | KBD_DEFAULTS => {
                self.kbd_scanning = value == KBD_DEFAULTS;
                self.scancode_set = 2;
                self.push(&[KBD_ACK], fx);
            }
            KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_SET_REPEAT => {
                self.pending_kbd = Some(value);
                self.push(&[KBD_ACK], fx);
            }
            KBD_ECHO => self.push(&[KBD_ECHO], fx),
            0xf7..=0xfd => self.push(&[KBD_ACK], fx),
            other => {
                log::debug!("i8042: unknown keyboard command {other:#04x}");
                self.push(&[KBD_RESEND], fx);
            }
        }
    }
}

/// The i8042 on the port bus.
pub struct I8042 {
    state: Mutex<State>,
    reset: EventFdTrigger,
    irq: EventFdTrigger,
}

impl I8042 {
    /// A controller that fires `reset` when the guest asks for a CPU reset and `irq` (an irqfd
    /// on GSI 1) when a keyboard byte is ready.
    pub fn new(reset: EventFdTrigger, irq: EventFdTrigger) -> Self {
        I8042 {
            state: Mutex::new(State::new()),
            reset,
            irq,
        }
    }

    fn apply(&self, fx: Effects) {
        if fx.irq
            && let Err(e) = self.irq.0.write(1)
        {
            log::warn!("i8042: failed to raise IRQ {I8042_KBD_IRQ}: {e}");
        }
        if fx.reset {
            log::debug!("i8042: CPU reset requested");
            if let Err(e) = self.reset.0.write(1) {
                log::error!("Failed to signal the guest's reset request: {e}");
            }
        }
    }

    /// The controller's and the keyboard's state.
    pub fn save(&self) -> I8042State {
        let state = self.state.lock().expect("i8042 lock poisoned");
        I8042State {
            version: I8042State::VERSION,
            ctr: state.ctr,
            last_was_command: state.last_was_command,
            outbuf: state.outbuf.iter().copied().collect(),
            pending_cmd: state.pending_cmd,
            pending_kbd: state.pending_kbd,
            kbd_scanning: state.kbd_scanning,
            scancode_set: state.scancode_set,
            outp: state.outp,
        }
    }

    /// Puts the controller and keyboard where `saved` had them. Raises nothing: an interrupt
    /// still pending is restored with the irqchip.
    pub fn restore(&self, saved: &I8042State) -> Result<(), StateError> {
        check_version("i8042", saved.version, I8042State::VERSION)?;
        let invalid = |reason: &str| StateError::Invalid {
            what: "i8042".into(),
            reason: reason.into(),
        };
        if saved.outbuf.len() > OUTBUF_MAX {
            return Err(invalid("more bytes waiting than the output buffer holds"));
        }
        if !(1..=3).contains(&saved.scancode_set) {
            return Err(invalid("no such scancode set"));
        }
        *self.state.lock().expect("i8042 lock poisoned") = State {
            ctr: saved.ctr,
            last_was_command: saved.last_was_command,
            outbuf: saved.outbuf.iter().copied().collect(),
            pending_cmd: saved.pending_cmd,
            pending_kbd: saved.pending_kbd,
            kbd_scanning: saved.kbd_scanning,
            scancode_set: saved.scancode_set,
            outp: saved.outp,
        };
        Ok(())
    }

    /// Types Ctrl-Alt-Del on the keyboard (press and release, scancode set 2).
    pub fn send_ctrl_alt_del(&self) -> Result<(), I8042Error> {
        self.send_scancodes(&CTRL_ALT_DEL_SET2)
    }

    /// Queues keyboard bytes as if typed, all or none.
    pub fn send_scancodes(&self, bytes: &[u8]) -> Result<(), I8042Error> {
        let mut fx = Effects::default();
        {
            let mut state = self.state.lock().expect("i8042 lock poisoned");
            if !state.kbd_scanning || state.ctr & CTR_KBDDIS != 0 {
                return Err(I8042Error::KeyboardDisabled);
            }
            if state.outbuf.len() + bytes.len() > OUTBUF_MAX {
                return Err(I8042Error::BufferFull);
            }
            state.push(bytes, &mut fx);
        }
        self.apply(fx);
        Ok(())
    }
}

impl BusDevice for I8042 {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut fx = Effects::default();
        {
            let mut state = self.state.lock().expect("i8042 lock poisoned");
            for b in data.iter_mut() {
                *b = match offset {
                    OFS_DATA => state.read_data(&mut fx),
                    OFS_STATUS => state.status(),
                    _ => 0xff,
                };
            }
        }
        self.apply(fx);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut fx = Effects::default();
        {
            let mut state = self.state.lock().expect("i8042 lock poisoned");
            for &b in data {
                match offset {
                    OFS_DATA => state.write_data(b, &mut fx),
                    OFS_STATUS => state.write_command(b, &mut fx),
                    _ => log::debug!("i8042: write {b:#04x} to port offset {offset} ignored"),
                }
            }
        }
        self.apply(fx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    struct Fixture {
        dev: I8042,
        reset: EventFd,
        irq: EventFd,
    }

    fn fixture() -> Fixture {
        let reset = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let dev = I8042::new(
            EventFdTrigger(reset.try_clone().expect("clone")),
            EventFdTrigger(irq.try_clone().expect("clone")),
        );
        Fixture { dev, reset, irq }
    }

    impl Fixture {
        fn status(&self) -> u8 {
            let mut b = [0u8];
            self.dev.read(OFS_STATUS, &mut b);
            b[0]
        }
        fn data(&self) -> u8 {
            let mut b = [0u8];
            self.dev.read(OFS_DATA, &mut b);
            b[0]
        }
        fn drain(&self) -> Vec<u8> {
            let mut out = Vec::new();
            while self.status() & SB_OBF != 0 {
                out.push(self.data());
            }
            out
        }
    }

    #[test]
    fn test_i8042_reset_command_fires_event() {
        let f = fixture();
        f.dev.write(OFS_STATUS, &[CMD_RESET_CPU]);
        assert_eq!(f.reset.read().expect("reset fired"), 1);
    }

    #[test]
    fn test_i8042_other_command_does_not_reset() {
        let f = fixture();
        f.dev.write(OFS_STATUS, &[CMD_SELF_TEST]);
        f.dev.write(OFS_DATA, &[0xfe]);
        assert!(f.reset.read().is_err());
    }

    #[test]
    fn test_i8042_idle_status_has_no_obf() {
        let f = fixture();
        assert_eq!(f.status() & SB_OBF, 0);
        assert_eq!(f.status() & (SB_SYS | SB_KEYLOCK), SB_SYS | SB_KEYLOCK);
    }

    #[test]
    fn test_i8042_ctr_read_write_roundtrip() {
        let f = fixture();
        f.dev.write(OFS_STATUS, &[CMD_READ_CTR]);
        assert_eq!(f.drain(), vec![CTR_INITIAL]);
        f.dev.write(OFS_STATUS, &[CMD_WRITE_CTR]);
        assert_ne!(f.status() & SB_CMD, 0);
        f.dev.write(OFS_DATA, &[0x45]);
        f.dev.write(OFS_STATUS, &[CMD_READ_CTR]);
        assert_eq!(f.drain(), vec![0x45]);
    }

    #[test]
    fn test_i8042_self_and_interface_tests_pass() {
        let f = fixture();
        f.dev.write(OFS_STATUS, &[CMD_SELF_TEST]);
        assert_eq!(f.drain(), vec![SELF_TEST_OK]);
        f.dev.write(OFS_STATUS, &[CMD_KBD_TEST]);
        assert_eq!(f.drain(), vec![0x00]);
    }

    #[test]
    fn test_i8042_byte_ready_raises_irq_when_enabled() {
        let f = fixture();
        f.dev.write(OFS_STATUS, &[CMD_SELF_TEST]);
        assert_eq!(f.irq.read().expect("irq"), 1);
        f.data();
        f.dev.write(OFS_STATUS, &[CMD_WRITE_CTR]);
        f.dev.write(OFS_DATA, &[CTR_SYS]);
        f.dev.write(OFS_STATUS, &[CMD_SELF_TEST]);
        assert!(f.irq.read().is_err(), "no IRQ with KBDINT clear");
    }

    #[test]
    fn test_i8042_each_queued_byte_gets_its_own_irq() {
        let f = fixture();
        f.dev.write(OFS_DATA, &[KBD_GET_ID]);
        assert_eq!(f.irq.read().expect("first"), 1);
        assert_eq!(f.data(), KBD_ACK);
        assert_eq!(f.irq.read().expect("second"), 1);
        assert_eq!(f.drain(), KBD_ID.to_vec());
    }

    #[test]
    fn test_i8042_keyboard_reset_answers_ack_and_bat() {
        let f = fixture();
        f.dev.write(OFS_DATA, &[KBD_RESET]);
        assert_eq!(f.drain(), vec![KBD_ACK, KBD_BAT_OK]);
    }

    #[test]
    fn test_i8042_keyboard_commands_with_parameters_ack_twice() {
        let f = fixture();
        f.dev.write(OFS_DATA, &[KBD_SET_LEDS]);
        f.dev.write(OFS_DATA, &[0x07]);
        f.dev.write(OFS_DATA, &[KBD_SET_REPEAT]);
        f.dev.write(OFS_DATA, &[0x00]);
        assert_eq!(f.drain(), vec![KBD_ACK; 4]);
        f.dev.write(OFS_DATA, &[KBD_SCANCODE_SET]);
        f.dev.write(OFS_DATA, &[0x00]);
        assert_eq!(f.drain(), vec![KBD_ACK, KBD_ACK, 2]);
    }

    #[test]
    fn test_i8042_ctrl_alt_del_queues_set2_sequence() {
        let f = fixture();
        f.dev.send_ctrl_alt_del().expect("sent");
        assert_eq!(f.drain(), CTRL_ALT_DEL_SET2.to_vec());
    }

    #[test]
    fn test_i8042_ctrl_alt_del_refused_when_keyboard_disabled() {
        let f = fixture();
        f.dev.write(OFS_DATA, &[KBD_DISABLE]);
        f.drain();
        assert_eq!(f.dev.send_ctrl_alt_del(), Err(I8042Error::KeyboardDisabled));
        f.dev.write(OFS_DATA, &[KBD_ENABLE]);
        f.drain();
        f.dev.write(OFS_STATUS, &[CMD_KBD_DISABLE]);
        assert_eq!(f.dev.send_ctrl_alt_del(), Err(I8042Error::KeyboardDisabled));
        f.dev.write(OFS_STATUS, &[CMD_KBD_ENABLE]);
        assert_eq!(f.dev.send_ctrl_alt_del(), Ok(()));
    }

    #[test]
    fn test_i8042_aux_port_is_absent() {
        let f = fixture();
        f.dev.write(OFS_STATUS, &[CMD_WRITE_AUX_OUTBUF]);
        f.dev.write(OFS_DATA, &[0x5a]);
        assert!(f.drain().is_empty());
        f.dev.write(OFS_STATUS, &[CMD_AUX_TEST]);
        assert_eq!(f.drain(), vec![AUX_TEST_NONE]);
    }

    #[test]
    fn test_i8042_output_port_reset_line() {
        let f = fixture();
        f.dev.write(OFS_STATUS, &[CMD_WRITE_OUTP]);
        f.dev.write(OFS_DATA, &[0x00]);
        assert_eq!(f.reset.read().expect("reset"), 1);
    }

    #[test]
    fn test_i8042_full_buffer_refuses_sequence() {
        let f = fixture();
        for _ in 0..OUTBUF_MAX / CTRL_ALT_DEL_SET2.len() {
            f.dev.send_ctrl_alt_del().expect("fits");
        }
        assert_eq!(f.dev.send_ctrl_alt_del(), Err(I8042Error::BufferFull));
    }

    #[test]
    fn test_i8042_state_round_trip_behaves_the_same() {
        let f = fixture();
        f.dev.write(OFS_STATUS, &[CMD_WRITE_CTR]);
        f.dev.write(OFS_DATA, &[CTR_INITIAL & !CTR_KBDINT]);
        f.dev.write(OFS_DATA, &[KBD_GET_ID]);
        f.dev.write(OFS_DATA, &[KBD_SCANCODE_SET]);
        let json = serde_json::to_string(&f.dev.save()).expect("serialize");

        let g = fixture();
        g.dev
            .restore(&serde_json::from_str(&json).expect("deserialize"))
            .expect("restore");

        assert_eq!(g.dev.save(), f.dev.save());
        assert_eq!(g.status(), f.status());
        // The scancode-set command still waits for its parameter.
        for dev in [&f, &g] {
            dev.dev.write(OFS_DATA, &[0x00]);
        }
        assert_eq!(g.drain(), f.drain());
        assert!(g.irq.read().is_err(), "KBDINT off: no interrupt");
    }

    #[test]
    fn test_i8042_restore_refuses_impossible_state() {
        let f = fixture();
        let mut state = f.dev.save();
        state.outbuf = vec![0; OUTBUF_MAX + 1];
        assert!(f.dev.restore(&state).is_err());
        let mut state = f.dev.save();
        state.scancode_set = 7;
        assert!(f.dev.restore(&state).is_err());
    }
}
