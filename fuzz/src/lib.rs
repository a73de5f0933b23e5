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
