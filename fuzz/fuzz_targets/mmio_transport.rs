//! The virtio-mmio register file in front of a real virtio-blk device on a small tmpfs disk:
//! arbitrary register reads and writes (any offset in the window, any size), guest memory
//! written between them, queue notifications run through a real event loop, and a whole
//! driver initialisation as one step so that request processing is reached too.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use ember::devices::bus::BusDevice;
use ember::devices::virtio::block::{Block, QUEUE_SIZE};
use ember::devices::virtio::mmio::{MMIO_WINDOW_SIZE, MmioTransport};
use ember::devices::virtio::{VIRTIO_F_VERSION_1, VirtioInterrupt};
use ember_fuzz::{
    MEM_SIZE, Scratch, TEMPLATE_AVAIL, TEMPLATE_DESC, TEMPLATE_SIZE, TEMPLATE_USED, block_template,
    disk_image, memory, patch, queue_size,
};
use event_manager::{EventManager, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_mmio::*;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A read of `size % 9` bytes (0 to 8) at `offset` in the window.
    Read { offset: u16, size: u8 },
    /// A write of the low `size % 9` bytes of `value`.
    Write { offset: u16, size: u8, value: u64 },
    /// A 32-bit write to one of the registers a driver uses (offset from the list).
    Register { which: u8, value: u32 },
    /// The guest changes its memory (rings, descriptors, buffers).
    Memory { addr: u16, bytes: Vec<u8> },
    /// `block_template`: one request of each type queued on a 16-entry queue.
    Template,
    /// The standard driver initialisation: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK,
    /// queue 0 setup, DRIVER_OK.
    DriverInit {
        /// Use the template's queue layout instead of the fields below.
        template: bool,
        features: u64,
        size: u8,
        desc: u16,
        avail: u16,
        used: u16,
    },
    /// QueueNotify (the transport's fallback path), then one event-loop pass.
    Notify { queue: u32 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    readonly: bool,
    ops: Vec<Op>,
}

const REGISTERS: [u32; 17] = [
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_CONFIG,
];

fn wr(t: &MmioTransport, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

fuzz_target!(|input: Input| {
    let mem = memory(MEM_SIZE);
    let disk = Scratch::new("mmio", &disk_image());
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().expect("eventfd")));
    let block = Arc::new(Mutex::new(
        Block::new("fuzz", &disk.path, input.readonly).expect("block device on a scratch file"),
    ));
    let mut events: EventManager<Arc<Mutex<Block>>> = EventManager::new().expect("epoll");
    events.add_subscriber(block.clone());
    let transport = MmioTransport::new(block, interrupt, mem.clone(), "fuzz".into());

    for op in input.ops {
        match op {
            Op::Read { offset, size } => {
                let mut data = vec![0u8; usize::from(size % 9)];
                transport.read(u64::from(offset) % MMIO_WINDOW_SIZE, &mut data);
            }
            Op::Write {
                offset,
                size,
                value,
            } => {
                let bytes = value.to_le_bytes();
                transport.write(
                    u64::from(offset) % MMIO_WINDOW_SIZE,
                    &bytes[..usize::from(size % 9)],
                );
            }
            Op::Register { which, value } => {
                wr(
                    &transport,
                    REGISTERS[usize::from(which) % REGISTERS.len()],
                    value,
                );
            }
            Op::Memory { addr, bytes } => patch(&mem, u64::from(addr), &bytes),
            Op::Template => block_template(&mem),
            Op::DriverInit {
                template,
                features,
                size,
                desc,
                avail,
                used,
            } => {
                // VERSION_1 always, a size Block accepts, aligned rings: the device activates
                // and processes requests unless the memory says otherwise (raw `Register` and
                // `Write` ops cover the refusals).
                let features = features | VIRTIO_F_VERSION_1;
                let (size, desc, avail, used) = if template {
                    (
                        TEMPLATE_SIZE,
                        TEMPLATE_DESC as u16,
                        TEMPLATE_AVAIL as u16,
                        TEMPLATE_USED as u16,
                    )
                } else {
                    (queue_size(size, QUEUE_SIZE), desc, avail, used)
                };
                wr(&transport, VIRTIO_MMIO_STATUS, 0);
                wr(&transport, VIRTIO_MMIO_STATUS, 1);
                wr(&transport, VIRTIO_MMIO_STATUS, 3);
                for sel in 0..2u32 {
                    wr(&transport, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
                    wr(
                        &transport,
                        VIRTIO_MMIO_DRIVER_FEATURES,
                        (features >> (32 * sel)) as u32,
                    );
                }
                wr(&transport, VIRTIO_MMIO_STATUS, 3 | 8);
                wr(&transport, VIRTIO_MMIO_QUEUE_SEL, 0);
                wr(&transport, VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
                wr(
                    &transport,
                    VIRTIO_MMIO_QUEUE_DESC_LOW,
                    u32::from(desc & !0xf),
                );
                wr(
                    &transport,
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                    u32::from(avail & !1),
                );
                wr(&transport, VIRTIO_MMIO_QUEUE_USED_LOW, u32::from(used & !3));
                wr(&transport, VIRTIO_MMIO_QUEUE_READY, 1);
                wr(&transport, VIRTIO_MMIO_STATUS, 3 | 8 | 4);
            }
            Op::Notify { queue } => {
                wr(&transport, VIRTIO_MMIO_QUEUE_NOTIFY, queue);
                events.run_with_timeout(0).expect("epoll wait");
            }
        }
    }
    let _ = irq.read();
});
