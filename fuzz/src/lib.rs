//! Shared pieces of Ember's fuzz targets: small guest memory, scratch files on tmpfs and split
//! virtqueues laid out in guest memory the way a driver would.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory size of the device targets: big enough for a 256-entry queue and some buffers,
/// small enough that most fuzzer addresses land inside it.
pub const MEM_SIZE: usize = 0x1_0000;

/// Fresh guest memory of `size` bytes at guest-physical 0.
pub fn memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("anonymous guest memory")
}

/// Writes `bytes` at `addr`, clipped to the memory's end (fuzzer patches may run past it).
pub fn patch(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
    let end = MEM_SIZE as u64;
    if addr >= end {
        return;
    }
    let n = bytes.len().min((end - addr) as usize);
    mem.write_slice(&bytes[..n], GuestAddress(addr))
        .expect("clipped to guest memory");
}

/// A scratch file on tmpfs (when there is one), removed on drop. Each target process uses its
/// own names, so parallel fuzzing jobs do not share files.
pub struct Scratch {
    /// Where the file is.
    pub path: PathBuf,
}

impl Scratch {
    /// A new scratch file named after `what` with `contents`.
    pub fn new(what: &str, contents: &[u8]) -> Scratch {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("ember-fuzz-{what}-{}-{n}", std::process::id()));
        std::fs::write(&path, contents).expect("scratch file");
        Scratch { path }
    }

    /// Replaces the contents.
    pub fn rewrite(&self, contents: &[u8]) {
        std::fs::write(&self.path, contents).expect("scratch file");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Disk contents the block targets start from: 16 KiB (32 sectors) of a recognisable pattern.
pub fn disk_image() -> Vec<u8> {
    (0..16 * 1024u32).map(|i| (i % 251) as u8).collect()
}

/// A split queue of `size` at the given ring addresses, ready, as a driver would set it up;
/// `None` when the transport would refuse it (bad size, rings misaligned or outside `mem`).
pub fn queue(
    mem: &GuestMemoryMmap,
    max_size: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
) -> Option<Queue> {
    let mut q = Queue::new(max_size).expect("device queue sizes are powers of two");
    q.try_set_size(size).ok()?;
    q.try_set_desc_table_address(GuestAddress(desc)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
    q.try_set_used_ring_address(GuestAddress(used)).ok()?;
    q.set_ready(true);
    q.set_event_idx(event_idx);
    q.is_valid(mem).then_some(q)
}

/// A power of two between 1 and `max` picked by `pick`.
pub fn queue_size(pick: u8, max: u16) -> u16 {
    let shift = u32::from(pick) % (max.trailing_zeros() + 1);
    1 << shift
}

/// Where `block_template` and `net_template` put the rings of a 16-entry queue.
pub const TEMPLATE_DESC: u64 = 0x0;
/// Avail ring of the template queue.
pub const TEMPLATE_AVAIL: u64 = 0x100;
/// Used ring of the template queue.
pub const TEMPLATE_USED: u64 = 0x180;
/// Size of the template queue.
pub const TEMPLATE_SIZE: u16 = 16;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

fn put_desc(mem: &GuestMemoryMmap, table: u64, i: u16, d: (u64, u32, u16, u16)) {
    let raw = virtio_queue::desc::split::Descriptor::new(d.0, d.1, d.2, d.3);
    mem.write_obj(raw, GuestAddress(table + 16 * u64::from(i)))
        .expect("template inside guest memory");
}

/// Writes `chains` into the descriptor table at `base` and makes them available.
fn put_chains(mem: &GuestMemoryMmap, base: u64, chains: &[&[(u64, u32, u16)]]) {
    let mut next = 0u16;
    let mut heads = Vec::new();
    for chain in chains {
        heads.push(next);
        for (k, &(addr, len, flags)) in chain.iter().enumerate() {
            let last = k + 1 == chain.len();
            let flags = if last { flags } else { flags | NEXT };
            put_desc(
                mem,
                base + TEMPLATE_DESC,
                next,
                (addr, len, flags, next + 1),
            );
            next += 1;
        }
    }
    for (i, head) in heads.iter().enumerate() {
        mem.write_obj(
            *head,
            GuestAddress(base + TEMPLATE_AVAIL + 4 + 2 * i as u64),
        )
        .expect("avail ring");
    }
    mem.write_obj(heads.len() as u16, GuestAddress(base + TEMPLATE_AVAIL + 2))
        .expect("avail idx");
}

/// Writes what a virtio-blk driver would queue on a 16-entry queue at the template addresses:
/// OUT, IN, FLUSH, GET_ID, WRITE_ZEROES and DISCARD requests and an IN request through an
/// indirect table, avail index 7. Fuzzer changes on top of it reach request execution.
pub fn block_template(mem: &GuestMemoryMmap) {
    let header = |addr: u64, kind: u32, sector: u64| {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(addr)).expect("header");
    };
    // Types: IN 0, OUT 1, FLUSH 4, GET_ID 8, DISCARD 11, WRITE_ZEROES 13.
    for (i, (kind, sector)) in [(1, 1), (0, 2), (4, 0), (8, 0), (13, 4), (11, 8), (0, 3)]
        .into_iter()
        .enumerate()
    {
        header(0x300 + 16 * i as u64, kind, sector);
    }
    let segment = |addr: u64, sector: u64, count: u32, flags: u32| {
        let mut s = [0u8; 16];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&count.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&s, GuestAddress(addr)).expect("segment");
    };
    segment(0x3a0, 4, 8, 1);
    segment(0x3b0, 16, 8, 0);
    mem.write_slice(&[0x5a; 512], GuestAddress(0x400))
        .expect("data");
    // The indirect table: header, data, status.
    for (i, d) in [
        (0x360, 16, NEXT, 1),
        (0xa00, 512, WRITE | NEXT, 2),
        (0x38f, 1, WRITE, 0),
    ]
    .into_iter()
    .enumerate()
    {
        put_desc(mem, 0x3c0, i as u16, d);
    }
    put_chains(
        mem,
        0,
        &[
            &[(0x300, 16, 0), (0x400, 512, 0), (0x380, 1, WRITE)],
            &[(0x310, 16, 0), (0x600, 512, WRITE), (0x381, 1, WRITE)],
            &[(0x320, 16, 0), (0x382, 1, WRITE)],
            &[(0x330, 16, 0), (0x800, 20, WRITE), (0x383, 1, WRITE)],
            &[(0x340, 16, 0), (0x3a0, 16, 0), (0x384, 1, WRITE)],
            &[(0x350, 16, 0), (0x3b0, 16, 0), (0x385, 1, WRITE)],
            &[(0x3c0, 48, INDIRECT)],
        ],
    );
}

/// Where `net_template` puts the rings of the RX (0) and TX (1) queue.
pub fn net_template_base(tx: bool) -> u64 {
    if tx { 0x8000 } else { 0 }
}

/// Writes what a virtio-net driver would post on a 16-entry queue with its rings at
/// `net_template_base(tx)` plus the template offsets: for TX, a frame split over header and
/// payload descriptors and one in a single descriptor; for RX, a chain of a header buffer and a
/// 2 KiB buffer and one 2060-byte buffer. Avail index 2.
pub fn net_template(mem: &GuestMemoryMmap, tx: bool) {
    let base = net_template_base(tx);
    if tx {
        let frame: Vec<u8> = (0..12 + 100).map(|i| i as u8).collect();
        mem.write_slice(&frame, GuestAddress(base + 0x400))
            .expect("frame");
        put_chains(
            mem,
            base,
            &[
                &[(base + 0x400, 12, 0), (base + 0x40c, 100, 0)],
                &[(base + 0x400, 112, 0)],
            ],
        );
    } else {
        put_chains(
            mem,
            base,
            &[
                &[(base + 0x400, 12, WRITE), (base + 0x800, 2048, WRITE)],
                &[(base + 0x1000, 2060, WRITE)],
            ],
        );
    }
}
