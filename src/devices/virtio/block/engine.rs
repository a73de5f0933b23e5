//! Block I/O engines: the step after parsing and rate limiting. A `BlockEngine` takes parsed
//! requests during a pass over the queue (`submit`), merges adjacent reads and adjacent writes
//! into one transfer (`Pending`), starts them when the pass ends (`commit`), and hands back
//! what finished (`reap`). The Sync engine does the transfers in `commit` (preadv, pwritev,
//! fdatasync on the event loop); the Async engine (`uring.rs`) submits them to an io_uring and
//! announces completions on an eventfd the device watches. DISCARD, WRITE_ZEROES, GET_ID and
//! refused requests are finished at once by both.
//!
//! Ordering: transfers start in the order the guest queued them. The virtio-blk driver waits
//! for the writes a FLUSH covers before it sends the FLUSH; on top of that a FLUSH is never
//! merged, and the Async engine starts it only after everything submitted before it
//! (IO_DRAIN).
//!
//! Merging: a read (write) that starts where the previous pending read (write) ends joins it,
//! up to `MAX_MERGED_BYTES`, `MAX_MERGED_REQUESTS` and the iovec limit. A merged transfer that
//! fails or comes up short is redone request by request, synchronously, so each request gets
//! its own status.

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::disk::DiskFile;
use super::request::{
    Completion, HostOp, Op, Reply, Request, RequestError, RequestStats, execute_sync,
};

pub use crate::config::drive::IoEngine;

/// Largest merged transfer. Small enough that a burst of sequential reads still makes several
/// transfers, which the Async engine runs in parallel (measured on the 2-core development host:
/// 4 MiB transfers read at ~2.8 GB/s, 256 KiB ones at ~4.5 GB/s; docs/performance.md).
pub const MAX_MERGED_BYTES: usize = 256 << 10;
/// Most requests in one merged transfer.
pub const MAX_MERGED_REQUESTS: usize = 64;
/// Most iovecs in one transfer (Linux UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;

/// What `submit` did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Finished: put it in the used ring with this completion.
    Done(Completion),
    /// Taken: its completion comes from `reap`.
    InFlight,
}

/// A finished request: its tag (the device's: queue and descriptor head) and used length.
pub type Reaped = (u32, u32);

/// One request of a transfer.
struct Member {
    tag: u32,
    reply: Reply,
    /// Where its bytes start in the transfer, and how many.
    start: usize,
    bytes: usize,
}

/// One transfer: a read, a write (of one or more adjacent requests) or a flush.
pub(crate) struct Transfer {
    pub(crate) op: HostOp,
    pub(crate) offset: u64,
    /// Guest memory, in order; valid while the device is active (the engines drain first).
    pub(crate) iovecs: Vec<libc::iovec>,
    members: Vec<Member>,
    /// The driver reset the device meanwhile: retire it unanswered.
    pub(crate) abandoned: bool,
}

impl Transfer {
    /// Requests in the transfer.
    pub(crate) fn requests(&self) -> usize {
        self.members.len()
    }

    /// Bytes the transfer moves.
    pub(crate) fn len(&self) -> usize {
        self.members.iter().map(|m| m.bytes).sum()
    }

    /// Runs the transfer synchronously: bytes moved, or the error.
    pub(crate) fn run_sync(&self, disk: &DiskFile) -> std::io::Result<usize> {
        let write = self.op == HostOp::Write;
        match self.op {
            HostOp::Flush => disk.flush().map(|()| 0),
            _ => {
                // SAFETY: the iovecs describe guest buffers of requests taken in this pass;
                // guest memory stays mapped while the device is active (module doc).
                let moved = unsafe { disk.iovecs_at(self.offset, &self.iovecs, 0, write) };
                moved.map(|()| self.len())
            }
        }
    }

    fn joins(&self, op: HostOp, offset: u64, bytes: usize, iovecs: usize) -> bool {
        let len = self.len();
        op != HostOp::Flush
            && self.op == op
            && self.offset.checked_add(len as u64) == Some(offset)
            && len + bytes <= MAX_MERGED_BYTES
            && self.members.len() < MAX_MERGED_REQUESTS
            && self.iovecs.len() + iovecs <= MAX_IOVECS
    }

    /// Finishes every member: `result` is the transfer's (bytes done, or the error); a short
    /// or failed merged transfer is redone member by member. Answers go to `done` (none
    /// without `mem`, or when abandoned).
    pub(crate) fn finish(
        self,
        result: std::io::Result<usize>,
        mem: Option<&GuestMemoryMmap>,
        disk: &DiskFile,
        stats: &mut RequestStats,
        done: &mut Vec<Reaped>,
    ) {
        let write = self.op == HostOp::Write;
        let outcome = match result {
            Ok(n) if n >= self.len() => Ok(()),
            // SAFETY: the iovecs still describe the members' guest buffers (module doc).
            Ok(n) => unsafe { disk.iovecs_at(self.offset + n as u64, &self.iovecs, n, write) },
            Err(e) => Err(e),
        };
        let (Some(mem), false) = (mem, self.abandoned) else {
            return;
        };
        let single = self.members.len() == 1;
        for m in &self.members {
            let result = match &outcome {
                Ok(()) => Ok(()),
                Err(e) if single => Err(RequestError::Io(self.op, clone_error(e))),
                Err(_) => {
                    let own = sub_iovecs(&self.iovecs, m.start, m.bytes);
                    let offset = self.offset + m.start as u64;
                    // SAFETY: as above, a part of the same buffers.
                    unsafe { disk.iovecs_at(offset, &own, 0, write) }
                        .map_err(|e| RequestError::Io(self.op, e))
                }
            };
            done.push((m.tag, m.reply.finish(mem, result, stats).used_len));
        }
    }
}

fn clone_error(e: &std::io::Error) -> std::io::Error {
    e.raw_os_error()
        .map(std::io::Error::from_raw_os_error)
        .unwrap_or_else(|| std::io::Error::from(e.kind()))
}

/// The iovecs covering bytes `start..start + len` of `iovecs`.
fn sub_iovecs(iovecs: &[libc::iovec], mut start: usize, mut len: usize) -> Vec<libc::iovec> {
    let mut out = Vec::new();
    for iov in iovecs {
        if len == 0 {
            break;
        }
        if start >= iov.iov_len {
            start -= iov.iov_len;
            continue;
        }
        let take = (iov.iov_len - start).min(len);
        out.push(libc::iovec {
            iov_base: iov.iov_base.cast::<u8>().wrapping_add(start).cast(),
            iov_len: take,
        });
        start = 0;
        len -= take;
    }
    out
}

/// The transfers gathered during one pass over the queue.
#[derive(Default)]
pub(crate) struct Pending {
    transfers: Vec<Transfer>,
}

// SAFETY: the raw pointers (iovecs into guest memory) are only used by the thread that holds
// the device's lock, and by the kernel; guest memory is shared with the guest by design.
unsafe impl Send for Pending {}
// SAFETY: as above.
unsafe impl Send for Transfer {}

impl Pending {
    /// Takes `request` into a transfer (merged with the last one when adjacent); gives back
    /// the requests that are not transfers (to be finished at once).
    pub(crate) fn add<'m>(&mut self, tag: u32, request: Request<'m>) -> Option<Request<'m>> {
        let (op, offset, bufs) = match &request.op {
            Op::Read { offset, bufs } => (HostOp::Read, *offset, &bufs[..]),
            Op::Write { offset, bufs } => (HostOp::Write, *offset, &bufs[..]),
            Op::Flush => (HostOp::Flush, 0, &[][..]),
            _ => return Some(request),
        };
        let iovecs: Vec<libc::iovec> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| libc::iovec {
                iov_base: b.ptr_guard_mut().as_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let bytes: usize = iovecs.iter().map(|v| v.iov_len).sum();
        if iovecs.len() > MAX_IOVECS {
            return Some(request);
        }
        let reply = request.reply;
        match self.transfers.last_mut() {
            Some(last) if last.joins(op, offset, bytes, iovecs.len()) => {
                let start = last.len();
                last.iovecs.extend(iovecs);
                last.members.push(Member {
                    tag,
                    reply,
                    start,
                    bytes,
                });
            }
            _ => self.transfers.push(Transfer {
                op,
                offset,
                iovecs,
                members: vec![Member {
                    tag,
                    reply,
                    start: 0,
                    bytes,
                }],
                abandoned: false,
            }),
        }
        None
    }

    /// The transfers gathered so far, in order.
    pub(crate) fn take(&mut self) -> Vec<Transfer> {
        std::mem::take(&mut self.transfers)
    }

    /// Requests gathered and not started yet.
    pub(crate) fn requests(&self) -> usize {
        self.transfers.iter().map(|t| t.members.len()).sum()
    }
}

/// An I/O engine of a virtio-blk device.
pub(crate) trait BlockEngine: Send {
    /// Which engine this is.
    fn kind(&self) -> IoEngine;
    /// Takes the request tagged `tag` (by the device: its queue and descriptor head): gathered
    /// for `commit`, or finished at once.
    fn submit(
        &mut self,
        mem: &GuestMemoryMmap,
        tag: u32,
        request: Request<'_>,
        disk: &DiskFile,
        stats: &mut RequestStats,
    ) -> Submitted;
    /// Starts what `submit` gathered (the end of a pass over the queue).
    fn commit(&mut self, mem: &GuestMemoryMmap, disk: &DiskFile, stats: &mut RequestStats);
    /// Finished requests, their status written into guest memory, appended to `done`;
    /// with `wait`, until nothing is in flight (pause, reset, exit). Without `mem` (the queue
    /// is gone) the requests are retired without an answer.
    fn reap(
        &mut self,
        mem: Option<&GuestMemoryMmap>,
        disk: &DiskFile,
        stats: &mut RequestStats,
        wait: bool,
        done: &mut Vec<Reaped>,
    );
    /// Forgets the answers of every request in flight (the driver reset the device): they are
    /// retired unanswered when they complete. No system call: this runs on a vCPU thread.
    fn abandon(&mut self);
    /// Requests taken and not reaped yet.
    fn in_flight(&self) -> usize;
    /// The eventfd completions are announced on (async engines).
    fn completion_event(&self) -> Option<&EventFd> {
        None
    }
}

/// Finishes a request that is not a transfer (or could not be gathered) synchronously.
pub(crate) fn finish_now(
    mem: &GuestMemoryMmap,
    request: Request<'_>,
    disk: &DiskFile,
    stats: &mut RequestStats,
) -> Submitted {
    let result = execute_sync(&request.op, disk);
    Submitted::Done(request.reply.finish(mem, result, stats))
}

/// Requests served synchronously on the event loop, adjacent ones merged.
#[derive(Default)]
pub struct SyncEngine {
    pending: Pending,
    done: Vec<Reaped>,
}

impl BlockEngine for SyncEngine {
    fn kind(&self) -> IoEngine {
        IoEngine::Sync
    }

    fn submit(
        &mut self,
        mem: &GuestMemoryMmap,
        tag: u32,
        request: Request<'_>,
        disk: &DiskFile,
        stats: &mut RequestStats,
    ) -> Submitted {
        match self.pending.add(tag, request) {
            None => Submitted::InFlight,
            Some(request) => finish_now(mem, request, disk, stats),
        }
    }

    fn commit(&mut self, mem: &GuestMemoryMmap, disk: &DiskFile, stats: &mut RequestStats) {
        for transfer in self.pending.take() {
            let result = transfer.run_sync(disk);
            transfer.finish(result, Some(mem), disk, stats, &mut self.done);
        }
    }

    fn reap(
        &mut self,
        _mem: Option<&GuestMemoryMmap>,
        _disk: &DiskFile,
        _stats: &mut RequestStats,
        _wait: bool,
        done: &mut Vec<Reaped>,
    ) {
        done.append(&mut self.done);
    }

    fn abandon(&mut self) {
        // Commit runs at the end of every pass: nothing is pending here outside a pass.
        self.done.clear();
    }

    fn in_flight(&self) -> usize {
        self.pending.requests() + self.done.len()
    }
}

/// The engine `wanted` for disk `id`: Async when io_uring works on this host, else Sync with
/// one log line saying why.
pub(crate) fn open_engine(id: &str, wanted: IoEngine, queue_size: u16) -> Box<dyn BlockEngine> {
    match wanted {
        IoEngine::Sync => Box::new(SyncEngine::default()),
        IoEngine::Async => match super::uring::UringEngine::new(queue_size) {
            Ok(engine) => Box::new(engine),
            Err(e) => {
                log::warn!("Disk {id}: io_uring is not available ({e}); using the Sync engine");
                Box::new(SyncEngine::default())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::request::parse;
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use crate::devices::virtio::test_utils::{Scratch, memory};

    const W: u16 = VRING_DESC_F_WRITE as u16;

    struct Fixture {
        mem: GuestMemoryMmap,
        disk: DiskFile,
        scratch: Scratch,
    }

    fn fixture(name: &str) -> Fixture {
        let contents: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
        let scratch = Scratch::new(&format!("engine-{name}"), &contents);
        let disk = DiskFile::open(&scratch.path, false).expect("open");
        Fixture {
            mem: memory(),
            disk,
            scratch,
        }
    }

    /// Request `i`: its header, 4 KiB of data and status at addresses of its own.
    fn submit(
        f: &Fixture,
        engine: &mut dyn BlockEngine,
        i: u32,
        kind: u32,
        sector: u64,
    ) -> Submitted {
        let base = 0x10_0000 + u64::from(i) * 0x2000;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        f.mem.write_slice(&h, GuestAddress(base)).expect("header");
        let desc = |addr: u64, len: u32, flags: u16| {
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
        };
        let mut descs = vec![desc(base, 16, 0)];
        if kind == VIRTIO_BLK_T_IN {
            descs.push(desc(base + 0x1000, 4096, W));
        }
        descs.push(desc(base + 0x100, 1, W));
        let queue = MockSplitQueue::new(&f.mem, 16);
        let chain = queue.build_desc_chain(&descs).expect("chain");
        let mut stats = RequestStats::default();
        let request = parse(&f.mem, chain, &f.disk, b"id", &mut stats).expect("well formed");
        engine.submit(&f.mem, i, request, &f.disk, &mut stats)
    }

    fn data(f: &Fixture, i: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let addr = 0x10_0000 + u64::from(i) * 0x2000 + 0x1000;
        f.mem
            .read_slice(&mut buf, GuestAddress(addr))
            .expect("data");
        buf
    }

    fn file_bytes(f: &Fixture, sector: u64) -> Vec<u8> {
        let start = (sector * 512) as usize;
        std::fs::read(&f.scratch.path).expect("read")[start..start + 4096].to_vec()
    }

    #[test]
    fn test_pending_merges_adjacent_reads_only() {
        let f = fixture("merge");
        let mut engine = SyncEngine::default();
        for (i, sector) in [(0, 0), (1, 8), (2, 40), (3, 48)] {
            assert_eq!(
                submit(&f, &mut engine, i, VIRTIO_BLK_T_IN, sector),
                Submitted::InFlight
            );
        }
        assert_eq!(engine.pending.transfers.len(), 2, "0+8, then 40+48");
        assert_eq!(engine.pending.transfers[0].len(), 8192);
        engine.commit(&f.mem, &f.disk, &mut RequestStats::default());
        let mut done = Vec::new();
        engine.reap(
            None,
            &f.disk,
            &mut RequestStats::default(),
            false,
            &mut done,
        );
        assert_eq!(done, vec![(0, 4097), (1, 4097), (2, 4097), (3, 4097)]);
        for (i, sector) in [(0, 0), (1, 8), (2, 40), (3, 48)] {
            assert_eq!(data(&f, i), file_bytes(&f, sector), "request {i}");
        }
    }

    #[test]
    fn test_pending_never_merges_flushes() {
        let f = fixture("flush");
        let mut engine = SyncEngine::default();
        submit(&f, &mut engine, 0, VIRTIO_BLK_T_FLUSH, 0);
        submit(&f, &mut engine, 1, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(engine.pending.transfers.len(), 2);
        assert_eq!(engine.in_flight(), 2);
    }

    #[test]
    fn test_failed_merged_transfer_is_redone_per_request() {
        let f = fixture("redo");
        let mut engine = SyncEngine::default();
        submit(&f, &mut engine, 0, VIRTIO_BLK_T_IN, 0);
        submit(&f, &mut engine, 1, VIRTIO_BLK_T_IN, 8);
        let transfer = engine.pending.take().pop().expect("one merged transfer");
        assert_eq!(transfer.requests(), 2);
        let mut done = Vec::new();
        let mut stats = RequestStats::default();
        let eio = Err(std::io::Error::from_raw_os_error(libc::EIO));
        transfer.finish(eio, Some(&f.mem), &f.disk, &mut stats, &mut done);
        assert_eq!(
            done,
            vec![(0, 4097), (1, 4097)],
            "each redone alone, and fine"
        );
        assert_eq!(data(&f, 1), file_bytes(&f, 8));
        assert_eq!(stats.io_errors, 0);
    }

    /// The Async engine, or `None` (with a SKIP line) where this host has no io_uring.
    fn uring(test: &str) -> Option<super::super::uring::UringEngine> {
        match super::super::uring::UringEngine::new(16) {
            Ok(engine) => Some(engine),
            Err(e) => {
                eprintln!("SKIP {test}: no io_uring here ({e})");
                None
            }
        }
    }

    #[test]
    fn test_uring_engine_reads_merged_requests_and_reports_them_done() {
        let Some(mut engine) =
            uring("test_uring_engine_reads_merged_requests_and_reports_them_done")
        else {
            return;
        };
        let f = fixture("uring");
        let mut stats = RequestStats::default();
        for (i, sector) in [(0, 0), (1, 8), (2, 40)] {
            assert_eq!(
                submit(&f, &mut engine, i, VIRTIO_BLK_T_IN, sector),
                Submitted::InFlight
            );
        }
        engine.commit(&f.mem, &f.disk, &mut stats);
        let mut done = Vec::new();
        engine.reap(Some(&f.mem), &f.disk, &mut stats, true, &mut done);
        done.sort_unstable();
        assert_eq!(done, vec![(0, 4097), (1, 4097), (2, 4097)]);
        assert_eq!(engine.in_flight(), 0);
        for (i, sector) in [(0, 0), (1, 8), (2, 40)] {
            assert_eq!(data(&f, i), file_bytes(&f, sector), "request {i}");
        }
    }

    #[test]
    fn test_uring_engine_abandoned_requests_are_retired_unanswered() {
        let Some(mut engine) = uring("test_uring_engine_abandoned_requests_are_retired_unanswered")
        else {
            return;
        };
        let f = fixture("uring-abandon");
        let mut stats = RequestStats::default();
        submit(&f, &mut engine, 0, VIRTIO_BLK_T_IN, 0);
        engine.commit(&f.mem, &f.disk, &mut stats);
        engine.abandon();
        let mut done = Vec::new();
        engine.reap(Some(&f.mem), &f.disk, &mut stats, true, &mut done);
        assert!(done.is_empty(), "the driver reset the device: no answer");
        assert_eq!(engine.in_flight(), 0, "but the request was waited for");
    }

    #[test]
    fn test_sub_iovecs_cuts_across_iovecs() {
        let mut a = [0u8; 4];
        let mut b = [0u8; 4];
        let iovs = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 4,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 4,
            },
        ];
        let part = sub_iovecs(&iovs, 3, 3);
        assert_eq!(part.len(), 2);
        assert_eq!((part[0].iov_len, part[1].iov_len), (1, 2));
        assert_eq!(part[1].iov_base, b.as_mut_ptr().cast());
    }
}
