//! virtio-blk request parsing and execution on one descriptor chain: the fuzzer writes a
//! 16-entry descriptor table (addresses, lengths, flags, next links: loops, indirect tables,
//! buffers outside memory) and buffer contents, the chain is popped with virtio-queue and handed
//! to `request::process` (`parse`, the step every engine starts from, then the synchronous
//! execution and `Reply::finish`). The rate limiter's cost estimate
//! (`request::data_len_hint`) runs on the same chain first. Checked: no panic, the used length never exceeds the chain's writable
//! bytes, a status is reported only when the status byte was written, a read-only disk never
//! changes.
#![no_main]

use arbitrary::Arbitrary;
use ember::devices::virtio::block::disk::DiskFile;
use ember::devices::virtio::block::request::{RequestStats, data_len_hint, process};
use ember_fuzz::{
    MEM_SIZE, Scratch, TEMPLATE_AVAIL, TEMPLATE_DESC, TEMPLATE_SIZE, TEMPLATE_USED, block_template,
    disk_image, memory, patch, queue,
};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

const DESC: u64 = TEMPLATE_DESC;
const AVAIL: u64 = TEMPLATE_AVAIL;
const USED: u64 = TEMPLATE_USED;
const QSIZE: u16 = TEMPLATE_SIZE;

#[derive(Arbitrary, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    readonly: bool,
    /// Small addresses (`addr % MEM_SIZE`) unless set: then the raw 64-bit address.
    raw_addresses: bool,
    /// Start from `block_template` and its request number `t % 7` (the descriptors below then
    /// replace the template's first ones).
    template: Option<u8>,
    head: u16,
    descs: Vec<Desc>,
    /// Buffer contents (request headers, data, discard segments, indirect tables).
    buffers_at: u16,
    buffers: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mem = memory(MEM_SIZE);
    let mut head = input.head;
    if let Some(t) = input.template {
        block_template(&mem);
        head = mem
            .read_obj(GuestAddress(AVAIL + 4 + 2 * u64::from(t % 7)))
            .expect("template avail ring");
    }
    patch(&mem, u64::from(input.buffers_at), &input.buffers);
    for (i, d) in input.descs.iter().take(usize::from(QSIZE)).enumerate() {
        let addr = if input.raw_addresses {
            d.addr
        } else {
            d.addr % MEM_SIZE as u64
        };
        let raw = Descriptor::new(addr, d.len, d.flags, d.next);
        mem.write_obj(raw, GuestAddress(DESC + 16 * i as u64))
            .expect("descriptor table in memory");
    }
    mem.write_obj(head, GuestAddress(AVAIL + 4))
        .expect("avail ring");
    mem.write_obj(1u16, GuestAddress(AVAIL + 2))
        .expect("avail idx");
    let mut q = queue(&mem, QSIZE, QSIZE, DESC, AVAIL, USED, false).expect("valid queue");
    let Some(chain) = q.pop_descriptor_chain(&mem) else {
        return;
    };
    let writable: u64 = chain
        .clone()
        .filter(|d| d.is_write_only())
        .map(|d| u64::from(d.len()))
        .sum();

    let disk_file = Scratch::new("req", &disk_image());
    let disk = DiskFile::open(&disk_file.path, input.readonly).expect("scratch disk");
    let mut stats = RequestStats::default();
    let hint = data_len_hint(&chain);
    assert!(hint <= chain.clone().map(|d| u64::from(d.len())).sum::<u64>());
    let done = process(&mem, chain, &disk, b"fuzz-disk", &mut stats);

    assert!(
        u64::from(done.used_len) <= writable,
        "used length {} beyond the {writable} writable bytes",
        done.used_len
    );
    if done.status.is_some() {
        assert!(
            done.used_len >= 1,
            "a status byte was reported but not counted"
        );
    }
    if input.readonly {
        assert_eq!(
            std::fs::read(&disk_file.path).expect("disk"),
            disk_image(),
            "a read-only disk changed"
        );
    }
});
