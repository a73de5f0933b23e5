//! Device-level tests of `Block`: a real scratch disk, guest memory and a virtio-queue mock queue,
//! requests posted as a driver would and processed as the event loop would.

use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::state::StateError;
use crate::devices::virtio::counters::CounterValues;
use crate::devices::virtio::test_utils::{Scratch, desc, memory, post, used};

const W: u16 = VRING_DESC_F_WRITE as u16;
/// Disk size: 64 sectors.
const DISK_SIZE: usize = 64 * 512;
/// A request type no virtio-blk device knows.
const T_UNKNOWN: u32 = 99;

/// Where request `n` keeps its header, data and status byte.
fn header_at(n: u16) -> u64 {
    0x10_0000 + u64::from(n) * 0x100
}
fn data_at(n: u16) -> u64 {
    0x20_0000 + u64::from(n) * 0x1_0000
}
fn status_at(n: u16) -> u64 {
    0x30_0000 + u64::from(n)
}

/// Posts request `n` (descriptors 3n to 3n+2): header, `len` data bytes, status.
fn post_request(
    mem: &GuestMemoryMmap,
    mq: &MockSplitQueue<'_, GuestMemoryMmap>,
    n: u16,
    kind: u32,
    sector: u64,
    len: u32,
) {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&kind.to_le_bytes());
    header[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&header, GuestAddress(header_at(n)))
        .expect("header");
    let data_flags = if kind == VIRTIO_BLK_T_IN { W } else { 0 };
    post(
        mq,
        n * 3,
        &[
            desc(header_at(n), 16, 0),
            desc(data_at(n), len, data_flags),
            desc(status_at(n), 1, W),
        ],
    );
}

fn status(mem: &GuestMemoryMmap, n: u16) -> u8 {
    mem.read_obj(GuestAddress(status_at(n))).expect("status")
}

fn new_block(disk: &Scratch) -> Block {
    Block::new("test", &disk.path, false).expect("disk")
}

/// Activates `block` with `queues` (fresh from a mock, or at saved positions as the transport's
/// restore gives them); returns the interrupt's eventfd.
fn activate(block: &mut Block, mem: &GuestMemoryMmap, queues: Vec<Queue>) -> EventFd {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().expect("clone")));
    block
        .activate(ActivateContext {
            mem: mem.clone(),
            queues,
            acked_features: VIRTIO_F_VERSION_1,
            interrupt,
        })
        .expect("activates");
    irq
}

fn mock_queue(mq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<Queue> {
    vec![mq.create_queue().expect("queue")]
}

#[test]
fn test_block_counters_count_requests_bytes_and_errors() {
    let disk = Scratch::new("blk-counters", &[0u8; DISK_SIZE]);
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut block = new_block(&disk);
    let _irq = activate(&mut block, &mem, mock_queue(&mq));
    post_request(&mem, &mq, 0, VIRTIO_BLK_T_OUT, 1, 512);
    post_request(&mem, &mq, 1, VIRTIO_BLK_T_IN, 0, 1024);
    post_request(&mem, &mq, 2, T_UNKNOWN, 0, 512);

    block.process_queue(0);

    assert_eq!(
        block.counters().values(),
        CounterValues {
            ops: 3,
            read_bytes: 1024,
            written_bytes: 512,
            errors: 1,
            drops: 0,
            throttled: 0,
        }
    );
    assert_eq!([status(&mem, 0), status(&mem, 1)], [0, 0]);
}

#[test]
fn test_block_quiesced_leaves_queue_until_wake() {
    let disk = Scratch::new("blk-quiesce", &[0x33u8; DISK_SIZE]);
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let block = Arc::new(Mutex::new(new_block(&disk)));
    let mut events: EventManager<Arc<Mutex<Block>>> = EventManager::new().expect("epoll");
    events.add_subscriber(block.clone());
    let _irq = activate(&mut block.lock().expect("lock"), &mem, mock_queue(&mq));
    block.lock().expect("lock").quiesce();
    post_request(&mem, &mq, 0, VIRTIO_BLK_T_IN, 0, 512);
    block.lock().expect("lock").queue_evts[0]
        .write(1)
        .expect("notify");

    events.run_with_timeout(0).expect("epoll");
    let while_quiesced = mq.used().idx().load();
    block.lock().expect("lock").wake();
    events.run_with_timeout(0).expect("epoll");

    assert_eq!(while_quiesced, 0, "nothing served while quiesced");
    assert_eq!(mq.used().idx().load(), 1, "served after the wake-up");
    assert_eq!(status(&mem, 0), 0);
}

#[test]
fn test_block_state_round_trip_serves_the_next_request_only() {
    let disk = Scratch::new("blk-state", &[0u8; DISK_SIZE]);
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut block = new_block(&disk);
    let _irq = activate(&mut block, &mem, mock_queue(&mq));
    mem.write_slice(&[0x5a; 512], GuestAddress(data_at(0)))
        .expect("data");
    post_request(&mem, &mq, 0, VIRTIO_BLK_T_OUT, 2, 512);
    block.process_queue(0);
    let json = serde_json::to_string(&block.save()).expect("serialize");
    let queues = block
        .active_queues()
        .expect("activated")
        .into_iter()
        .map(|q| Queue::try_from(q).expect("saved queue"))
        .collect();
    drop(block);

    let mut restored = new_block(&disk);
    let _irq = activate(&mut restored, &mem, queues);
    restored
        .restore(&serde_json::from_str(&json).expect("deserialize"))
        .expect("restore");
    post_request(&mem, &mq, 1, VIRTIO_BLK_T_IN, 2, 512);
    restored.process_queue(0);

    assert_eq!(
        restored.counters().values().ops,
        1,
        "request 0 not served again"
    );
    assert_eq!(mq.used().idx().load(), 2);
    assert_eq!(used(&mq, 1), (3, 513));
    let mut back = [0u8; 512];
    mem.read_slice(&mut back, GuestAddress(data_at(1)))
        .expect("read");
    assert_eq!(back, [0x5a; 512]);
    assert_eq!(serde_json::to_string(&restored.save()).expect("json"), json);
}

#[test]
fn test_block_restore_refuses_another_disk() {
    let disk = Scratch::new("blk-state-mismatch", &[0u8; DISK_SIZE]);
    let bigger = Scratch::new("blk-state-bigger", &[0u8; 2 * DISK_SIZE]);
    let saved = new_block(&disk).save();
    let mut other_size = new_block(&bigger);
    let mut newer = saved.clone();
    newer.version += 1;

    // Each device is dropped before the next opens the image: a writable one locks it.
    let mut readonly = Block::new("test", &disk.path, true).expect("disk");
    assert!(matches!(
        readonly.restore(&saved),
        Err(StateError::Mismatch {
            field: "read-only",
            ..
        })
    ));
    drop(readonly);
    assert!(matches!(
        other_size.restore(&saved),
        Err(StateError::Mismatch { .. })
    ));
    assert!(matches!(
        new_block(&disk).restore(&newer),
        Err(StateError::Version { .. })
    ));
    let mut four_queues = new_block(&disk);
    four_queues.set_queues(4, QUEUE_SIZE).expect("eventfds");
    assert!(matches!(
        four_queues.restore(&saved),
        Err(StateError::Mismatch {
            field: "the number of request queues (num_queues)",
            ..
        })
    ));
}

#[test]
fn test_block_four_queues_offer_mq_and_serve_each_queue() {
    let disk = Scratch::new("blk-mq", &[0x5au8; DISK_SIZE]);
    let mem = memory();
    let mut block = new_block(&disk);
    block.set_queues(4, 16).expect("eventfds");
    assert_eq!(block.queue_max_sizes(), &[16, 16, 16, 16]);
    assert_ne!(block.avail_features() & (1 << VIRTIO_BLK_F_MQ), 0);
    let mut num_queues = [0u8; 2];
    block.read_config(34, &mut num_queues);
    assert_eq!(u16::from_le_bytes(num_queues), 4);
    let mq0 = MockSplitQueue::new(&mem, 16);
    let mq1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let queues = vec![
        mq0.create_queue().expect("queue 0"),
        mq1.create_queue().expect("queue 1"),
    ];
    let _irq = activate(&mut block, &mem, queues);
    post_request(&mem, &mq1, 0, VIRTIO_BLK_T_IN, 0, 512);

    block.process_queue(1);

    assert_eq!(status(&mem, 0), 0);
    assert_eq!(
        mq1.used().idx().load(),
        1,
        "completed on the queue it came from"
    );
    assert_eq!(mq0.used().idx().load(), 0);
    assert_eq!(block.active_queues().map(|q| q.len()), Some(2));
    block.set_queues(1, 256).expect("eventfds");
    assert_eq!(block.avail_features() & (1 << VIRTIO_BLK_F_MQ), 0);
}
