//! A real virtio-blk device processing a queue the fuzzer laid out: guest memory contents
//! (descriptor table, avail ring, buffers, request headers), the queue's size and ring
//! addresses, EVENT_IDX, the avail index, then more rounds of memory changes and notifications
//! through the event loop, as a guest driver would post requests.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use ember::devices::virtio::block::{Block, QUEUE_SIZE};
use ember::devices::virtio::{
    ActivateContext, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice, VirtioInterrupt,
};
use ember_fuzz::{
    MEM_SIZE, Scratch, TEMPLATE_AVAIL, TEMPLATE_DESC, TEMPLATE_SIZE, TEMPLATE_USED, block_template,
    disk_image, memory, patch, queue, queue_size,
};
use event_manager::{EventManager, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

#[derive(Arbitrary, Debug)]
struct Round {
    /// Memory changes before the notification.
    patches: Vec<(u16, Vec<u8>)>,
    /// A new avail index, written into the avail ring.
    avail_idx: Option<u16>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    readonly: bool,
    event_idx: bool,
    /// Start from `block_template` (a 16-entry queue with one request of each type) instead of
    /// the layout below.
    template: bool,
    size: u8,
    desc: u16,
    avail: u16,
    used: u16,
    /// Guest memory written at `image_at` (after the template).
    image_at: u16,
    image: Vec<u8>,
    rounds: Vec<Round>,
}

fuzz_target!(|input: Input| {
    let mem = memory(MEM_SIZE);
    let (size, desc, avail, used) = if input.template {
        block_template(&mem);
        (TEMPLATE_SIZE, TEMPLATE_DESC, TEMPLATE_AVAIL, TEMPLATE_USED)
    } else {
        (
            queue_size(input.size, QUEUE_SIZE),
            u64::from(input.desc & !0xf),
            u64::from(input.avail & !1),
            u64::from(input.used & !3),
        )
    };
    patch(&mem, u64::from(input.image_at), &input.image);
    let Some(q) = queue(&mem, QUEUE_SIZE, size, desc, avail, used, input.event_idx) else {
        return;
    };
    let disk = Scratch::new("vq", &disk_image());
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq));
    let block = Arc::new(Mutex::new(
        Block::new("fuzz", &disk.path, input.readonly).expect("block device on a scratch file"),
    ));
    let mut features = VIRTIO_F_VERSION_1;
    if input.event_idx {
        features |= VIRTIO_RING_F_EVENT_IDX;
    }
    let before = std::fs::read(&disk.path).expect("disk");
    // Activation processes whatever the image already queued.
    let activated = block.lock().expect("lock").activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![q],
        acked_features: features,
        interrupt,
    });
    assert!(activated.is_ok(), "a ready, valid queue activates");

    let mut events: EventManager<Arc<Mutex<Block>>> = EventManager::new().expect("epoll");
    events.add_subscriber(block.clone());
    for round in input.rounds {
        for (addr, bytes) in &round.patches {
            patch(&mem, u64::from(*addr), bytes);
        }
        if let Some(idx) = round.avail_idx {
            let _ = mem.write_obj(idx, GuestAddress(avail + 2));
        }
        let device = block.lock().expect("lock");
        device.queue_events()[0].write(1).expect("queue eventfd");
        drop(device);
        events.run_with_timeout(0).expect("epoll wait");
    }
    if input.readonly {
        assert_eq!(
            std::fs::read(&disk.path).expect("disk"),
            before,
            "a read-only disk changed"
        );
    }
});
