//! virtio-blk request parsing and execution against a small host file (page cache): header
//! read, range checks, the data copy between the file and guest memory, the status byte.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ember::devices::virtio::block::disk::DiskFile;
use ember::devices::virtio::block::request::{RequestStats, process};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const DISK_BYTES: usize = 4 << 20;

fn bench_request(c: &mut Criterion, disk: &DiskFile, name: &str, kind: u32, len: u32) {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory");
    let mock = MockSplitQueue::new(&mem, 16);
    let data_flags = if kind == VIRTIO_BLK_T_IN {
        VRING_DESC_F_WRITE
    } else {
        0
    };
    let descs = [
        SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(DATA, len, (VRING_DESC_F_NEXT | data_flags) as u16, 2),
        SplitDescriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, d) in descs.iter().enumerate() {
        mock.desc_table()
            .store(i as u16, RawDescriptor::from(*d))
            .expect("descriptor");
    }
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&kind.to_le_bytes());
    let mut queue: Queue = mock.create_queue().expect("queue");
    let avail = mock.avail_addr();
    let mut idx: u16 = 0;
    let mut sector: u64 = 0;
    let sectors = (DISK_BYTES as u64 - u64::from(len)) / 512;
    let mut stats = RequestStats::default();
    let mut g = c.benchmark_group("block request");
    g.throughput(Throughput::Bytes(u64::from(len)));
    g.bench_function(name, |b| {
        b.iter(|| {
            sector = (sector + 8) % sectors;
            header[8..16].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&header, GuestAddress(HDR)).expect("header");
            mem.write_obj(0u16, avail.unchecked_add(4 + 2 * u64::from(idx % 16)))
                .expect("ring");
            idx = idx.wrapping_add(1);
            mem.write_obj(idx, avail.unchecked_add(2)).expect("idx");
            let chain = queue.pop_descriptor_chain(&mem).expect("a chain");
            let done = process(&mem, chain, disk, b"bench", &mut stats);
            assert_eq!(done.status, Some(0));
            queue
                .add_used(&mem, 0, black_box(done.used_len))
                .expect("used");
        })
    });
    g.finish();
}

fn bench_block(c: &mut Criterion) {
    let path = std::env::temp_dir().join(format!("ember-bench-blk-{}", std::process::id()));
    std::fs::write(&path, vec![0x5au8; DISK_BYTES]).expect("disk file");
    let disk = DiskFile::open(&path, false).expect("open");
    bench_request(c, &disk, "read 4 KiB", VIRTIO_BLK_T_IN, 4096);
    bench_request(c, &disk, "write 4 KiB", VIRTIO_BLK_T_OUT, 4096);
    bench_request(c, &disk, "read 64 KiB", VIRTIO_BLK_T_IN, 65536);
    bench_request(c, &disk, "write 64 KiB", VIRTIO_BLK_T_OUT, 65536);
    std::fs::remove_file(&path).ok();
}

criterion_group!(benches, bench_block);
criterion_main!(benches);
