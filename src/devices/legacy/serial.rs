//! The 16550 UART console (vm-superio) on COM1, its output sink (buffered by `console_output`
//! where it can stall), the event-loop handler that feeds host input into it, and the save and
//! restore of its registers.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vm_superio::Serial;
use vm_superio::serial::{SerialEvents, SerialState};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use super::console_output::{BufferedOutput, ConsoleOutputError};
use crate::devices::bus::BusDevice;
use crate::devices::state::{StateError, check_version};

/// I/O port of COM1.
pub const COM1_PORT_BASE: u64 = 0x3f8;
/// Number of UART registers.
pub const SERIAL_PORT_LEN: u64 = 8;
/// Ctrl-A: the first key of the host-side escape sequence (Ctrl-A x quits).
pub const ESCAPE_KEY: u8 = 0x01;

/// Where guest console output goes.
pub enum SerialOutput {
    /// The host's standard output, written directly: a terminal (or a regular file).
    Stdout(File),
    /// The host's standard output on a pipe, FIFO or socket, whose reader may stop reading:
    /// written by the `ember_console` thread, never blocking the vCPU.
    Buffered(BufferedOutput),
    /// A file.
    File(File),
    /// Discarded.
    Sink,
}

impl SerialOutput {
    /// Output to standard output (`file` is a handle on it): buffered when it can stall.
    pub fn stdout(file: File) -> Self {
        let can_stall = file
            .metadata()
            .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
            .unwrap_or(false);
        if can_stall {
            SerialOutput::Buffered(BufferedOutput::new(file))
        } else {
            SerialOutput::Stdout(file)
        }
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SerialOutput::Stdout(f) | SerialOutput::File(f) => f.write(buf),
            SerialOutput::Buffered(b) => b.write(buf),
            SerialOutput::Sink => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SerialOutput::Stdout(f) | SerialOutput::File(f) => f.flush(),
            SerialOutput::Buffered(b) => b.flush(),
            SerialOutput::Sink => Ok(()),
        }
    }
}

/// Tells the input handler the guest drained the receive FIFO.
pub struct InputSpaceEvents {
    space: EventFd,
}

impl SerialEvents for InputSpaceEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.space.write(1) {
            log::warn!("Failed to signal free serial input space: {e}");
        }
    }
}

type Uart = Serial<EventFdTrigger, InputSpaceEvents, SerialOutput>;

/// vm-superio's `SerialState`, field by field, for serde's remote derive.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// Saved state of the UART: its registers and the input the guest has not read yet
/// (vm-superio's `SerialState`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    /// Layout version (`SerialDeviceState::VERSION`).
    pub version: u16,
    /// The registers and the receive FIFO.
    #[serde(with = "SerialStateDef")]
    pub uart: SerialState,
}

impl SerialDeviceState {
    /// The layout this build writes and reads.
    pub const VERSION: u16 = 1;
}

/// The UART on the port bus.
pub struct SerialDevice {
    uart: Mutex<Uart>,
    output_failed: std::sync::atomic::AtomicBool,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`; `space` fires when the input FIFO empties.
    pub fn new(irq: EventFdTrigger, space: EventFd, out: SerialOutput) -> Self {
        SerialDevice {
            uart: Mutex::new(Serial::with_events(irq, InputSpaceEvents { space }, out)),
            output_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        let mut uart = self.uart.lock().expect("serial lock poisoned");
        let room = uart.fifo_capacity().min(bytes.len());
        match uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("Failed to queue serial input: {e:?}");
                0
            }
        }
    }

    /// Starts the console output thread when output is buffered (a no-op otherwise); with
    /// `seccomp` the thread is filtered before this returns.
    pub fn start_output(&self, seccomp: bool) -> Result<(), ConsoleOutputError> {
        let mut uart = self.uart.lock().expect("serial lock poisoned");
        match uart.writer_mut() {
            SerialOutput::Buffered(out) => out.start(seccomp),
            _ => Ok(()),
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart
            .lock()
            .expect("serial lock poisoned")
            .fifo_capacity()
    }

    /// The registers and the unread input.
    pub fn save(&self) -> SerialDeviceState {
        SerialDeviceState {
            version: SerialDeviceState::VERSION,
            uart: self.uart.lock().expect("serial lock poisoned").state(),
        }
    }

    /// Puts the registers and unread input where `state` had them; the interrupt, the input
    /// event and the output stay this device's.
    pub fn restore(&self, state: &SerialDeviceState) -> Result<(), StateError> {
        check_version("serial", state.version, SerialDeviceState::VERSION)?;
        let io = |source| StateError::Io {
            what: "the serial console",
            source,
        };
        let mut uart = self.uart.lock().expect("serial lock poisoned");
        let irq = uart.interrupt_evt().try_clone().map_err(io)?;
        let events = InputSpaceEvents {
            space: uart.events().space.try_clone().map_err(io)?,
        };
        // The output (a file, or the console thread's buffer) moves to the restored UART.
        let placeholder = Serial::with_events(
            irq.try_clone().map_err(io)?,
            InputSpaceEvents {
                space: events.space.try_clone().map_err(io)?,
            },
            SerialOutput::Sink,
        );
        let out = std::mem::replace(&mut *uart, placeholder).into_writer();
        *uart =
            Serial::from_state(&state.uart, irq, events, out).map_err(|e| StateError::Invalid {
                what: "serial".into(),
                reason: format!("{e:?}"),
            })?;
        Ok(())
    }
}

impl BusDevice for SerialDevice {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut uart = self.uart.lock().expect("serial lock poisoned");
        for b in data.iter_mut() {
            *b = uart.read(offset as u8);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut uart = self.uart.lock().expect("serial lock poisoned");
        for b in data {
            if let Err(e) = uart.write(offset as u8, *b) {
                // Report a broken output once: a guest printing to a closed pipe must not flood
                // the log, and its console output has nowhere else to go.
                if !self
                    .output_failed
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    log::warn!("Serial console output failed, further output is lost: {e:?}");
                }
            }
        }
    }
}

/// Epoll tokens of the serial input handler.
#[repr(u32)]
enum InputToken {
    Input = 1,
    Space = 2,
}

/// What the input handler saw that the VMM must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputEvent {
    /// The user typed the quit escape (Ctrl-A x).
    Quit,
}

/// Splits host input into bytes for the guest and escape commands. Ctrl-A x quits, Ctrl-A
/// Ctrl-A sends one Ctrl-A, Ctrl-A followed by anything else sends both bytes.
#[derive(Default)]
pub struct EscapeParser {
    pending_escape: bool,
}

impl EscapeParser {
    /// Feeds `input`; guest-bound bytes go to `out`. Returns `Some(Quit)` on the quit sequence.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<InputEvent> {
        for &b in input {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => return Some(InputEvent::Quit),
                    ESCAPE_KEY => out.push(ESCAPE_KEY),
                    other => out.extend_from_slice(&[ESCAPE_KEY, other]),
                }
            } else if b == ESCAPE_KEY {
                self.pending_escape = true;
            } else {
                out.push(b);
            }
        }
        None
    }
}

/// Moves host input (standard input) into the UART from the event loop, pausing while the
/// guest's receive FIFO is full.
pub struct SerialInput {
    serial: Arc<SerialDevice>,
    input: File,
    space: EventFd,
    escapes: Option<EscapeParser>,
    backlog: Vec<u8>,
    quit: EventFd,
    input_registered: bool,
}

impl SerialInput {
    /// Reads `input` into `serial`. With `escapes`, Ctrl-A x writes `quit`.
    pub fn new(
        serial: Arc<SerialDevice>,
        input: File,
        space: EventFd,
        escapes: bool,
        quit: EventFd,
    ) -> Self {
        SerialInput {
            serial,
            input,
            space,
            escapes: escapes.then(EscapeParser::default),
            backlog: Vec::new(),
            quit,
            input_registered: false,
        }
    }

    fn flush_backlog(&mut self) {
        if !self.backlog.is_empty() {
            let n = self.serial.enqueue_input(&self.backlog);
            self.backlog.drain(..n);
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        match self.input.read(&mut buf) {
            Ok(0) => {
                log::debug!("Serial input reached end of file");
                self.stop_input(ops);
            }
            Ok(n) => {
                let mut bytes = Vec::with_capacity(n);
                let event = match self.escapes.as_mut() {
                    Some(parser) => parser.feed(&buf[..n], &mut bytes),
                    None => {
                        bytes.extend_from_slice(&buf[..n]);
                        None
                    }
                };
                if event == Some(InputEvent::Quit) {
                    log::info!("Quit requested from the console (Ctrl-A x)");
                    if let Err(e) = self.quit.write(1) {
                        log::error!("Failed to signal quit: {e}");
                    }
                }
                self.backlog.extend_from_slice(&bytes);
                self.flush_backlog();
                if !self.backlog.is_empty() {
                    // The guest is not reading: stop polling input until it drains the FIFO.
                    self.stop_input(ops);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("Serial input failed, closing it: {e}");
                self.stop_input(ops);
            }
        }
    }

    fn stop_input(&mut self, ops: &mut EventOps) {
        if self.input_registered {
            let _ = ops.remove(Events::empty(&self.input));
            self.input_registered = false;
        }
    }

    fn start_input(&mut self, ops: &mut EventOps) {
        if !self.input_registered {
            match ops.add(Events::with_data(
                &self.input,
                InputToken::Input as u32,
                EventSet::IN,
            )) {
                Ok(()) => self.input_registered = true,
                // Regular files and /dev/null cannot be polled: the guest gets no input.
                Err(e) => log::debug!("Serial input not pollable, guest gets none: {e:?}"),
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            d if d == InputToken::Input as u32 => {
                if events.event_set().contains(EventSet::IN) {
                    self.read_input(ops);
                } else {
                    // Hang-up or error without data.
                    self.stop_input(ops);
                }
            }
            d if d == InputToken::Space as u32 => {
                let _ = self.space.read();
                self.flush_backlog();
                if self.backlog.is_empty() && self.serial.input_capacity() > 0 {
                    self.start_input(ops);
                }
            }
            other => log::warn!("Serial input: unexpected event token {other}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.space,
            InputToken::Space as u32,
            EventSet::IN,
        )) {
            log::error!("Failed to watch serial input space: {e:?}");
        }
        self.start_input(ops);
        log::debug!("Serial input from fd {}", self.input.as_raw_fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn device() -> (SerialDevice, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let space = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let dev = SerialDevice::new(
            EventFdTrigger(irq.try_clone().expect("clone")),
            space,
            SerialOutput::Sink,
        );
        (dev, irq)
    }

    #[test]
    fn test_escape_parser_ctrl_a_x_quits() {
        let mut parser = EscapeParser::default();
        let mut out = Vec::new();
        assert_eq!(parser.feed(b"ab\x01x", &mut out), Some(InputEvent::Quit));
        assert_eq!(out, b"ab");
    }

    #[test]
    fn test_escape_parser_double_ctrl_a_sends_one() {
        let mut parser = EscapeParser::default();
        let mut out = Vec::new();
        assert_eq!(parser.feed(b"\x01", &mut out), None);
        assert_eq!(parser.feed(b"\x01z\x01q", &mut out), None);
        assert_eq!(out, b"\x01z\x01q");
    }

    #[test]
    fn test_serial_input_reaches_receive_register() {
        let (dev, _irq) = device();
        assert_eq!(dev.enqueue_input(b"hi"), 2);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 1, 0, "data ready");
        let mut rbr = [0u8];
        dev.read(0, &mut rbr);
        assert_eq!(rbr[0], b'h');
    }

    #[test]
    fn test_serial_enqueue_stops_at_fifo_capacity() {
        let (dev, _irq) = device();
        let big = vec![b'a'; 10_000];
        let n = dev.enqueue_input(&big);
        assert!(n < big.len());
        assert_eq!(dev.input_capacity(), 0);
    }

    /// The side-effect-free registers: IER, LCR, MCR, LSR, MSR, scratch.
    fn registers(dev: &SerialDevice) -> Vec<u8> {
        [1u64, 3, 4, 5, 6, 7]
            .iter()
            .map(|&offset| {
                let mut b = [0u8];
                dev.read(offset, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn test_serial_state_round_trip_reads_the_same() {
        let (dev, _irq) = device();
        dev.write(3, &[0x80]); // DLAB: the divisor latch
        dev.write(0, &[0x03]);
        dev.write(3, &[0x1b]); // 8 bits, even parity
        dev.write(1, &[0x01]); // receive interrupt on
        dev.write(4, &[0x0b]);
        dev.write(7, &[0x42]);
        dev.enqueue_input(b"hi");
        let json = serde_json::to_string(&dev.save()).expect("serialize");

        let (fresh, _irq2) = device();
        fresh
            .restore(&serde_json::from_str(&json).expect("deserialize"))
            .expect("restore");

        assert_eq!(registers(&fresh), registers(&dev));
        assert_eq!(fresh.save(), dev.save());
        let mut data = [0u8; 2];
        fresh.read(0, &mut data[..1]);
        fresh.read(0, &mut data[1..]);
        assert_eq!(&data, b"hi");
    }

    #[test]
    fn test_serial_restore_refuses_an_overfull_fifo() {
        let (dev, _irq) = device();
        let mut state = dev.save();
        state.uart.in_buffer = vec![b'x'; 65];
        assert!(matches!(
            dev.restore(&state),
            Err(StateError::Invalid { .. })
        ));
    }
}
