//! The i8042 controller and its PS/2 keyboard on the port bus: reads and writes of 1 to 8
//! bytes at any port from 0x5c to 0x6b (data, status/command and the gap between them), and
//! host-injected key sequences (Ctrl-Alt-Del, arbitrary scancodes) in between. Checked: no
//! panic, the output buffer stays bounded (reads drain it).
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use ember::devices::bus::Bus;
use ember::devices::legacy::EventFdTrigger;
use ember::devices::legacy::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A read of `1 + size % 8` bytes at `0x5c + port % 16`.
    Read { port: u8, size: u8 },
    /// A write of `data` (1 to 8 bytes) at `0x5c + port % 16`.
    Write { port: u8, data: Vec<u8> },
    /// Command then data, the usual two-step controller commands (0x60, 0xd1, 0xd2, ...).
    Command { cmd: u8, param: u8 },
    /// The API's SendCtrlAltDel.
    CtrlAltDel,
    /// Host-typed scancodes.
    Keys(Vec<u8>),
}

fn port(p: u8) -> u64 {
    I8042_PORT_BASE - 4 + u64::from(p % 16)
}

fuzz_target!(|ops: Vec<Op>| {
    let reset = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let dev = Arc::new(I8042::new(
        EventFdTrigger(reset.try_clone().expect("eventfd")),
        EventFdTrigger(irq.try_clone().expect("eventfd")),
    ));
    let mut bus = Bus::new("port");
    bus.insert(dev.clone(), I8042_PORT_BASE, I8042_PORT_LEN)
        .expect("empty bus");
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
            Op::Command { cmd, param } => {
                bus.write(I8042_PORT_BASE + 4, &[cmd]);
                bus.write(I8042_PORT_BASE, &[param]);
            }
            Op::CtrlAltDel => {
                let _ = dev.send_ctrl_alt_del();
            }
            Op::Keys(bytes) => {
                let _ = dev.send_scancodes(&bytes);
            }
        }
    }
    // The output buffer is bounded: at most 32 bytes come out before it reads empty.
    let mut drained = 0;
    loop {
        let mut status = [0u8];
        bus.read(I8042_PORT_BASE + 4, &mut status);
        if status[0] & 1 == 0 {
            break;
        }
        let mut data = [0u8];
        bus.read(I8042_PORT_BASE, &mut data);
        drained += 1;
        assert!(drained <= 32, "output buffer beyond its bound");
    }
    let _ = reset.read();
    let _ = irq.read();
});
