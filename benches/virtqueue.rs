//! Virtqueue hot path with virtio-queue's mock rings: the driver publishes one chain, the
//! device pops it, walks its descriptors and pushes it to the used ring.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE_SIZE: u16 = 256;

fn bench_virtqueue(c: &mut Criterion) {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
    let mock = MockSplitQueue::new(&mem, QUEUE_SIZE);
    // One three-descriptor chain at index 0 (header, data, status), as a block request has.
    let descs = [
        SplitDescriptor::new(0x10_0000, 16, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(
            0x20_0000,
            4096,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            2,
        ),
        SplitDescriptor::new(0x30_0000, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, d) in descs.iter().enumerate() {
        mock.desc_table()
            .store(i as u16, RawDescriptor::from(*d))
            .expect("descriptor");
    }
    let mut queue: Queue = mock.create_queue().expect("queue");
    let avail = mock.avail_addr();
    let mut idx: u16 = 0;

    c.bench_function("virtqueue pop + walk 3 descriptors + push", |b| {
        b.iter(|| {
            // Driver side: publish head 0.
            mem.write_obj(
                0u16,
                avail.unchecked_add(4 + 2 * u64::from(idx % QUEUE_SIZE)),
            )
            .expect("ring");
            idx = idx.wrapping_add(1);
            mem.write_obj(idx, avail.unchecked_add(2)).expect("idx");
            // Device side.
            let chain = queue.pop_descriptor_chain(&mem).expect("a chain");
            let head = chain.head_index();
            let len: u32 = chain.map(|d| d.len()).sum();
            queue.add_used(&mem, head, black_box(len)).expect("used");
        })
    });
}

criterion_group!(benches, bench_virtqueue);
criterion_main!(benches);
