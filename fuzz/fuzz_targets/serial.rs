//! The 16550 UART on the port bus as the guest sees it: reads and writes of 1 to 8 bytes at
//! any port near COM1 (through `Bus`, so offsets are what KVM exits produce), host input queued
//! into the receive FIFO between them, and the Ctrl-A escape parser on the same input.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use ember::devices::bus::Bus;
use ember::devices::legacy::EventFdTrigger;
use ember::devices::legacy::serial::{
    COM1_PORT_BASE, EscapeParser, SERIAL_PORT_LEN, SerialDevice, SerialOutput,
};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A read of `1 + size % 8` bytes at `COM1 - 4 + port % 16`.
    Read { port: u8, size: u8 },
    /// A write of `data` (1 to 8 bytes) at `COM1 - 4 + port % 16`.
    Write { port: u8, data: Vec<u8> },
    /// Host input for the guest, through the escape parser.
    Input { bytes: Vec<u8>, escapes: bool },
}

fn port(p: u8) -> u64 {
    COM1_PORT_BASE - 4 + u64::from(p % 16)
}

fuzz_target!(|ops: Vec<Op>| {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let space = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let serial = Arc::new(SerialDevice::new(
        EventFdTrigger(irq.try_clone().expect("eventfd")),
        space.try_clone().expect("eventfd"),
        SerialOutput::Sink,
    ));
    let mut bus = Bus::new("port");
    bus.insert(serial.clone(), COM1_PORT_BASE, SERIAL_PORT_LEN)
        .expect("empty bus");
    let mut parser = EscapeParser::default();
    for op in ops {
        match op {
            Op::Read { port: p, size } => {
                let mut data = vec![0u8; 1 + usize::from(size % 8)];
                bus.read(port(p), &mut data);
            }
            Op::Write { port: p, data } => {
                if (1..=8).contains(&data.len()) {
                    bus.write(port(p), &data);
                }
            }
            Op::Input { bytes, escapes } => {
                let mut out = Vec::new();
                if escapes {
                    let _ = parser.feed(&bytes, &mut out);
                } else {
                    out = bytes;
                }
                let room = serial.input_capacity();
                let queued = serial.enqueue_input(&out);
                assert!(queued <= out.len().min(room), "queued more than fits");
            }
        }
    }
    let _ = irq.read();
    let _ = space.read();
});
