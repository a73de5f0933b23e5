//! Device-level tests of `Rng`: guest memory, a virtio-queue mock queue, requests posted as a
//! driver would and processed as the event loop would.

use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{desc, memory, post, used};

const W: u16 = VRING_DESC_F_WRITE as u16;

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// An activated device on `mq`, in an event loop.
fn started(
    mem: &GuestMemoryMmap,
    mq: &MockSplitQueue<'_, GuestMemoryMmap>,
) -> (Arc<Mutex<Rng>>, Loop) {
    let rng = Arc::new(Mutex::new(Rng::new("rng0").expect("rng")));
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    rng.lock()
        .expect("lock")
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![mq.create_queue().expect("queue")],
            acked_features: VIRTIO_F_VERSION_1,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
        })
        .expect("activates");
    let mut events: Loop = EventManager::new().expect("epoll");
    events.add_subscriber(rng.clone());
    (rng, events)
}

#[test]
fn test_rng_fills_each_buffer_with_distinct_random_bytes() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    mem.write_slice(&[0u8; 0x2000], GuestAddress(0x10_0000))
        .expect("zero");
    post(&mq, 0, &[desc(0x10_0000, 0x1000, W)]);
    post(
        &mq,
        1,
        &[desc(0x10_1000, 0x800, W), desc(0x10_1800, 0x800, W)],
    );
    let (rng, mut events) = started(&mem, &mq);

    events.run_with_timeout(0).expect("epoll");

    assert_eq!(used(&mq, 0), (0, 0x1000));
    assert_eq!(used(&mq, 1), (1, 0x1000));
    let mut a = [0u8; 0x1000];
    let mut b = [0u8; 0x1000];
    mem.read_slice(&mut a, GuestAddress(0x10_0000)).expect("a");
    mem.read_slice(&mut b, GuestAddress(0x10_1000)).expect("b");
    assert_ne!(a, b);
    assert!(
        a.iter().filter(|&&x| x == 0).count() < 64,
        "mostly zero: not filled"
    );
    let stats = rng.lock().expect("lock").stats();
    assert_eq!((stats.requests, stats.bytes), (2, 0x2000));
}

#[test]
fn test_rng_read_only_buffer_is_counted_and_completed_empty() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    post(&mq, 0, &[desc(0x10_0000, 64, 0)]);
    let (rng, mut events) = started(&mem, &mq);

    events.run_with_timeout(0).expect("epoll");

    assert_eq!(used(&mq, 0), (0, 0));
    let rng = rng.lock().expect("lock");
    assert_eq!(rng.stats().malformed, 1);
    assert_eq!(rng.counters().values().errors, 1);
}

#[test]
fn test_rng_request_larger_than_the_cap_gets_the_cap() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    post(&mq, 0, &[desc(0x10_0000, 0x20_0000, W)]);
    let (_rng, mut events) = started(&mem, &mq);

    events.run_with_timeout(0).expect("epoll");

    assert_eq!(used(&mq, 0), (0, MAX_REQUEST_BYTES as u32));
}

#[test]
fn test_rng_quiesced_serves_nothing_until_woken() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let (rng, mut events) = started(&mem, &mq);
    events.run_with_timeout(0).expect("epoll");
    rng.lock().expect("lock").quiesce();
    post(&mq, 0, &[desc(0x10_0000, 16, W)]);
    rng.lock().expect("lock").queue_evts[0]
        .write(1)
        .expect("kick");
    events.run_with_timeout(0).expect("epoll");
    assert_eq!(mq.used().idx().load(), 0);

    rng.lock().expect("lock").wake();
    events.run_with_timeout(0).expect("epoll");

    assert_eq!(mq.used().idx().load(), 1);
}

#[test]
fn test_rng_state_round_trips_and_refuses_another_id() {
    let rng = Rng::new("rng0").expect("rng");
    let json = serde_json::to_string(&rng.save()).expect("json");
    let state: persist::RngState = serde_json::from_str(&json).expect("parse");
    let mut fresh = Rng::new("rng0").expect("rng");
    fresh.restore(&state).expect("restore");
    assert_eq!(fresh.save(), rng.save());
    let mut other = Rng::new("other").expect("rng");
    assert!(other.restore(&state).is_err());
}
