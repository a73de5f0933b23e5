//! Helpers for the device tests: guest memory, descriptors, chains posted on a virtio-queue mock
//! queue, used-ring entries, and a scratch file removed on drop.

use std::path::PathBuf;

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Size of the test guest memory; the mock queue lives at 0, buffers from 1 MiB.
pub const MEM_SIZE: u64 = 0x40_0000;

/// Guest memory of `MEM_SIZE` bytes.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("mem")
}

/// One descriptor.
pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Posts one chain made of `descs` at descriptor index `first` (NEXT links filled in).
pub fn post(mq: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, descs: &[RawDescriptor]) {
    let linked: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = SplitDescriptor::from(*d);
            let last = i == descs.len() - 1;
            let flags = if last {
                d.flags() & !(VRING_DESC_F_NEXT as u16)
            } else {
                d.flags() | VRING_DESC_F_NEXT as u16
            };
            let next = if last { 0 } else { first + i as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
        })
        .collect();
    mq.add_desc_chains(&linked, first).expect("post chain");
}

/// The used-ring entry `i`: (head index, length).
pub fn used(mq: &MockSplitQueue<'_, GuestMemoryMmap>, i: u16) -> (u32, u32) {
    let e = mq
        .used()
        .ring()
        .ref_at(usize::from(i))
        .expect("slot")
        .load();
    (e.id(), e.len())
}

/// A file in the temporary directory, removed on drop.
pub struct Scratch {
    /// Where it is.
    pub path: PathBuf,
}

impl Scratch {
    /// A file named after `name` and the process, holding `contents`.
    pub fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("ember-{name}-{}", std::process::id()));
        std::fs::write(&path, contents).expect("scratch file");
        Scratch { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}
