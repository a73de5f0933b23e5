//! Unit tests of `request`: one request at a time against a scratch file and guest memory.

use super::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

struct Fixture {
    mem: GuestMemoryMmap,
    disk: DiskFile,
    path: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}

fn fixture(name: &str, readonly: bool) -> Fixture {
    let path = std::env::temp_dir().join(format!("ember-blk-{name}-{}", std::process::id()));
    let contents: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, contents).expect("disk file");
    let disk = DiskFile::open(&path, readonly).expect("open");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("mem");
    Fixture { mem, disk, path }
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).expect("header");
}

fn run(f: &Fixture, descs: &[RawDescriptor]) -> (Completion, RequestStats) {
    let queue = MockSplitQueue::new(&f.mem, 16);
    let chain = queue.build_desc_chain(descs).expect("chain");
    let mut stats = RequestStats::default();
    let done = process(&f.mem, chain, &f.disk, b"disk-id", &mut stats);
    (done, stats)
}

fn status(f: &Fixture) -> u8 {
    f.mem.read_obj(GuestAddress(STATUS)).expect("status")
}

#[test]
fn test_block_write_then_read_round_trip() {
    let f = fixture("rw", false);
    f.mem
        .write_slice(&[0x5a; 512], GuestAddress(DATA))
        .expect("data");
    header(&f.mem, VIRTIO_BLK_T_OUT, 3);
    let (done, _) = run(
        &f,
        &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
    );
    assert_eq!(
        done,
        Completion {
            used_len: 1,
            status: Some(0)
        }
    );
    f.mem
        .write_slice(&[0; 512], GuestAddress(DATA))
        .expect("clear");
    header(&f.mem, VIRTIO_BLK_T_IN, 3);
    let (done, _) = run(
        &f,
        &[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
    );
    assert_eq!(
        done,
        Completion {
            used_len: 513,
            status: Some(0)
        }
    );
    let mut back = [0u8; 512];
    f.mem
        .read_slice(&mut back, GuestAddress(DATA))
        .expect("read");
    assert_eq!(back, [0x5a; 512]);
    let mut file = vec![0u8; 512];
    f.disk.read_at(3 * 512, &mut file).expect("file");
    assert_eq!(file, vec![0x5a; 512]);
}

#[test]
fn test_block_read_beyond_capacity_is_ioerr() {
    let f = fixture("range", false);
    header(&f.mem, VIRTIO_BLK_T_IN, 15);
    let (done, stats) = run(
        &f,
        &[desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)],
    );
    assert_eq!(done.status, Some(VIRTIO_BLK_S_IOERR as u8));
    assert_eq!(status(&f), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(stats.io_errors, 1);
    assert_eq!(stats.host_errors, 0, "the guest's mistake, not the host's");
}

#[test]
fn test_block_file_truncated_under_guest_is_host_error() {
    let f = fixture("truncated", false);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f.path)
        .and_then(|file| file.set_len(1024))
        .expect("truncate");
    header(&f.mem, VIRTIO_BLK_T_IN, 4);
    let (done, stats) = run(
        &f,
        &[desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)],
    );
    assert_eq!(done.status, Some(VIRTIO_BLK_S_IOERR as u8));
    assert_eq!((stats.io_errors, stats.host_errors), (1, 1));
    let error = stats.last_host_error.expect("reported");
    assert_eq!(error.op, HostOp::Read);
    assert!(error.to_string().contains("truncated"), "{error}");
}

#[test]
fn test_block_huge_sector_does_not_overflow() {
    let f = fixture("overflow", false);
    header(&f.mem, VIRTIO_BLK_T_IN, u64::MAX);
    let (done, _) = run(
        &f,
        &[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
    );
    assert_eq!(done.status, Some(VIRTIO_BLK_S_IOERR as u8));
}

#[test]
fn test_block_write_to_readonly_fails_and_file_unchanged() {
    let f = fixture("ro", true);
    let before = std::fs::read(&f.path).expect("read");
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    let (done, _) = run(
        &f,
        &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
    );
    assert_eq!(done.status, Some(VIRTIO_BLK_S_IOERR as u8));
    assert_eq!(std::fs::read(&f.path).expect("read"), before);
}

#[test]
fn test_block_missing_status_descriptor_is_malformed() {
    let f = fixture("nostatus", false);
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    let (done, stats) = run(&f, &[desc(HDR, 16, 0), desc(DATA, 512, 0)]);
    assert_eq!(
        done,
        Completion {
            used_len: 0,
            status: None
        }
    );
    assert_eq!(stats.malformed, 1);
}

#[test]
fn test_block_descriptor_outside_memory_is_malformed() {
    let f = fixture("oob", false);
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let (done, stats) = run(
        &f,
        &[
            desc(HDR, 16, 0),
            desc(0xffff_0000, 512, W),
            desc(STATUS, 1, W),
        ],
    );
    assert_eq!(done.status, None);
    assert_eq!(stats.malformed, 1);
}

#[test]
fn test_block_short_header_is_ioerr() {
    let f = fixture("short", false);
    let (done, _) = run(&f, &[desc(HDR, 8, 0), desc(STATUS, 1, W)]);
    assert_eq!(done.status, Some(VIRTIO_BLK_S_IOERR as u8));
}

#[test]
fn test_block_unaligned_data_is_ioerr() {
    let f = fixture("unaligned", false);
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let (done, _) = run(
        &f,
        &[desc(HDR, 16, 0), desc(DATA, 100, W), desc(STATUS, 1, W)],
    );
    assert_eq!(done.status, Some(VIRTIO_BLK_S_IOERR as u8));
}

#[test]
fn test_block_unknown_type_is_unsupp() {
    let f = fixture("unsupp", false);
    header(&f.mem, 0x7777, 0);
    let (done, stats) = run(&f, &[desc(HDR, 16, 0), desc(STATUS, 1, W)]);
    assert_eq!(done.status, Some(VIRTIO_BLK_S_UNSUPP as u8));
    assert_eq!(stats.unsupported, 1);
}

#[test]
fn test_block_get_id_writes_serial() {
    let f = fixture("getid", false);
    header(&f.mem, VIRTIO_BLK_T_GET_ID, 0);
    let (done, _) = run(
        &f,
        &[desc(HDR, 16, 0), desc(DATA, 20, W), desc(STATUS, 1, W)],
    );
    assert_eq!(
        done,
        Completion {
            used_len: 21,
            status: Some(0)
        }
    );
    let mut id = [0u8; 20];
    f.mem.read_slice(&mut id, GuestAddress(DATA)).expect("id");
    assert_eq!(&id[..7], b"disk-id");
    assert_eq!(id[7], 0);
}

#[test]
fn test_block_flush_ok() {
    let f = fixture("flush", false);
    header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
    let (done, _) = run(&f, &[desc(HDR, 16, 0), desc(STATUS, 1, W)]);
    assert_eq!(done.status, Some(0));
}

#[test]
fn test_block_flush_parses_to_a_sync_unless_cache_is_unsafe() {
    let mut f = fixture("flush-unsafe", false);
    header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
    let parsed = |f: &Fixture| {
        let queue = MockSplitQueue::new(&f.mem, 16);
        let chain = queue
            .build_desc_chain(&[desc(HDR, 16, 0), desc(STATUS, 1, W)])
            .expect("chain");
        let request = parse(&f.mem, chain, &f.disk, b"id", &mut RequestStats::default())
            .expect("well formed");
        matches!(request.op, Op::Flush)
    };
    assert!(parsed(&f), "Writeback: the host file is synced");
    f.disk.set_flush_ignored(true);
    assert!(!parsed(&f), "Unsafe: acknowledged only");
}

#[test]
fn test_block_discard_zeroes_range() {
    let f = fixture("discard", false);
    if !f.disk.supports_discard() {
        return;
    }
    header(&f.mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&8u64.to_le_bytes());
    seg[8..12].copy_from_slice(&8u32.to_le_bytes());
    f.mem.write_slice(&seg, GuestAddress(DATA)).expect("seg");
    let (done, _) = run(
        &f,
        &[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)],
    );
    assert_eq!(done.status, Some(0));
    let mut buf = vec![0xffu8; 4096];
    f.disk.read_at(4096, &mut buf).expect("read");
    assert!(buf.iter().all(|b| *b == 0));
    let mut before = [0u8; 1];
    f.disk.read_at(4095, &mut before).expect("read");
    assert_eq!(before[0], (4095 % 251) as u8);
}

#[test]
fn test_block_descriptor_loop_terminates() {
    let f = fixture("loop", false);
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let queue = MockSplitQueue::new(&f.mem, 16);
    // Descriptor 1 points back at itself: the chain must end, not spin.
    let looping = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(SplitDescriptor::new(
            DATA,
            512,
            W | VRING_DESC_F_NEXT as u16,
            1,
        )),
    ];
    let chain = queue.build_multiple_desc_chains(&looping).expect("chain");
    let mut stats = RequestStats::default();
    let done = process(&f.mem, chain, &f.disk, b"id", &mut stats);
    // 15 copies of the data descriptor: 7680 bytes, minus the status byte: not a multiple of
    // 512, so the request fails cleanly.
    assert_eq!(done.status, Some(VIRTIO_BLK_S_IOERR as u8));
}
