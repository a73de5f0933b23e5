//! Block I/O engines: the step after parsing and rate limiting. A `BlockEngine` takes a parsed
//! request and either finishes it at once (`Sync`: preadv/pwritev/fdatasync on the event loop)
//! or starts it and hands it back later (`Async`: io_uring, `uring.rs`). Completions of an async
//! engine are announced on its eventfd, which the device watches in the event loop.
//!
//! Ordering: the virtio-blk driver waits for the writes a FLUSH covers before it sends the
//! FLUSH, and Ember keeps it that way on both engines (the Async engine also drains the ring
//! before a flush). DISCARD and WRITE_ZEROES run synchronously on both.

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::disk::DiskFile;
use super::request::{Completion, Request, RequestStats, execute_sync};

pub use crate::config::drive::IoEngine;

/// What `submit` did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Finished: put it in the used ring with this completion.
    Done(Completion),
    /// Started: its completion comes from `reap`.
    InFlight,
}

/// A finished in-flight request: its descriptor head and used length.
pub type Reaped = (u16, u32);

/// An I/O engine of a virtio-blk device.
pub(crate) trait BlockEngine: Send {
    /// Which engine this is.
    fn kind(&self) -> IoEngine;
    /// Starts (or, synchronously, serves) the request of descriptor head `head`.
    fn submit(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        request: Request<'_>,
        disk: &DiskFile,
        stats: &mut RequestStats,
    ) -> Submitted;
    /// Hands what `submit` started to the kernel (one system call per batch).
    fn commit(&mut self) {}
    /// Finished requests, their status written into guest memory, appended to `done`;
    /// with `wait`, until nothing is in flight (pause, reset, exit). Without `mem` (the queue
    /// is gone) the requests are retired without an answer.
    fn reap(
        &mut self,
        _mem: Option<&GuestMemoryMmap>,
        _disk: &DiskFile,
        _stats: &mut RequestStats,
        _wait: bool,
        _done: &mut Vec<Reaped>,
    ) {
    }
    /// Forgets the answers of every request in flight (the driver reset the device): they are
    /// retired unanswered when they complete. No system call: this runs on a vCPU thread.
    fn abandon(&mut self) {}
    /// Requests started and not reaped yet.
    fn in_flight(&self) -> usize {
        0
    }
    /// The eventfd completions are announced on (async engines).
    fn completion_event(&self) -> Option<&EventFd> {
        None
    }
}

/// Requests served synchronously on the event loop.
#[derive(Default)]
pub struct SyncEngine;

impl BlockEngine for SyncEngine {
    fn kind(&self) -> IoEngine {
        IoEngine::Sync
    }

    fn submit(
        &mut self,
        mem: &GuestMemoryMmap,
        _head: u16,
        request: Request<'_>,
        disk: &DiskFile,
        stats: &mut RequestStats,
    ) -> Submitted {
        let result = execute_sync(&request.op, disk);
        Submitted::Done(request.reply.finish(mem, result, stats))
    }
}

/// The engine `wanted` for disk `id`: Async when io_uring works on this host, else Sync with
/// one log line saying why.
pub(crate) fn open_engine(id: &str, wanted: IoEngine, queue_size: u16) -> Box<dyn BlockEngine> {
    match wanted {
        IoEngine::Sync => Box::new(SyncEngine),
        IoEngine::Async => match super::uring::UringEngine::new(queue_size) {
            Ok(engine) => Box::new(engine),
            Err(e) => {
                log::warn!("Disk {id}: io_uring is not available ({e}); using the Sync engine");
                Box::new(SyncEngine)
            }
        },
    }
}
