//! The Async block engine: reads, writes and flushes go to an io_uring, one submission per
//! pass over the queue, and come back on an eventfd the device watches in the event loop. The
//! event loop never waits for the disk.
//!
//! Reads carry IOSQE_ASYNC: they go to io_uring's worker threads even when the data is in the
//! page cache, so the transfers of a pass are copied in parallel, off the event loop (a cached
//! read would otherwise be copied inline by `io_uring_enter`, on the event loop, one after the
//! other).
//!
//! The ring is created disabled and restricted before it is enabled: only READV, WRITEV and
//! FSYNC requests with no flag but IO_DRAIN and ASYNC, and no further registration. Its kernel workers
//! are outside Ember's seccomp filters, so this is what bounds them; the main thread's filter
//! adds `io_uring_enter` only (the ring is set up before the filter is installed).
//!
//! Buffers: the iovecs point straight into guest memory (no bounce buffer), as for preadv. The
//! mapping outlives every request: the device drains the ring (waits for every request) before
//! it lets go of guest memory (reset, pause, drop). A FLUSH carries IO_DRAIN: it starts only
//! once every request submitted before it has completed. A short transfer (a regular file's
//! tail, a signal) is finished synchronously.

use std::os::fd::AsRawFd;

use io_uring::register::Restriction;
use io_uring::{IoUring, opcode, squeue, types};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::disk::DiskFile;
use super::engine::{BlockEngine, IoEngine, Pending, Reaped, Submitted, Transfer, finish_now};
use super::request::{HostOp, Request, RequestStats};

/// The io_uring engine.
pub(crate) struct UringEngine {
    ring: IoUring,
    event: EventFd,
    /// Gathered during the current pass over the queue.
    pending: Pending,
    /// Transfers in the ring, by `user_data`.
    slots: Vec<Option<Transfer>>,
    free: Vec<usize>,
    /// Requests in the ring.
    in_flight: usize,
    /// Requests the ring refused, finished synchronously, waiting for `reap`.
    refused_done: Vec<Reaped>,
}

// SAFETY: the raw pointers (iovecs into guest memory) are only used by the kernel and by the
// thread that holds the device's lock; guest memory is shared with the guest by design.
unsafe impl Send for UringEngine {}

impl UringEngine {
    /// A ring of `entries` (the queue size: at most that many requests are in flight), its
    /// completion eventfd registered, restricted to what the engine submits.
    pub fn new(entries: u16) -> std::io::Result<Self> {
        let entries = u32::from(entries.max(1));
        // COOP_TASKRUN: a completion by an io_uring worker does not IPI the event loop's CPU
        // (a profile of a sequential read showed the workers' IPIs, each an MSR write that
        // traps on a nested host; an A/B of 2 x 2 bench runs showed no difference beyond the
        // noise); the event loop still wakes from epoll for it. Kernels before 5.19 lack it:
        // build the ring without.
        let ring = IoUring::builder()
            .setup_r_disabled()
            .setup_coop_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_r_disabled().build(entries))?;
        let event = EventFd::new(EFD_NONBLOCK)?;
        let submitter = ring.submitter();
        submitter.register_eventfd(event.as_raw_fd())?;
        let mut allowed = [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_flags_allowed((squeue::Flags::IO_DRAIN | squeue::Flags::ASYNC).bits()),
        ];
        submitter.register_restrictions(&mut allowed)?;
        submitter.register_enable_rings()?;
        Ok(UringEngine {
            ring,
            event,
            pending: Pending::default(),
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            refused_done: Vec::new(),
        })
    }

    fn slot(&mut self, transfer: Transfer) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(transfer);
                i
            }
            None => {
                self.slots.push(Some(transfer));
                self.slots.len() - 1
            }
        }
    }

    /// Queues `entry`, submitting what is queued first when the submission ring is full.
    fn push(&mut self, entry: &squeue::Entry) -> std::io::Result<()> {
        for _ in 0..2 {
            // SAFETY: the entry's iovecs live in its slot until the completion is reaped, and
            // point into guest memory that stays mapped until the ring is drained (module doc).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
        Err(std::io::Error::from_raw_os_error(libc::EBUSY))
    }

    fn entry(transfer: &Transfer, disk: &DiskFile) -> squeue::Entry {
        let fd = types::Fd(disk.fd_for(transfer.offset, &transfer.iovecs));
        // At most MAX_IOVECS iovecs (engine.rs): the count fits.
        let count = transfer.iovecs.len() as u32;
        match transfer.op {
            HostOp::Read => opcode::Readv::new(fd, transfer.iovecs.as_ptr(), count)
                .offset(transfer.offset)
                .build()
                .flags(squeue::Flags::ASYNC),
            HostOp::Write => opcode::Writev::new(fd, transfer.iovecs.as_ptr(), count)
                .offset(transfer.offset)
                .build(),
            _ => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        }
    }
}

impl BlockEngine for UringEngine {
    fn kind(&self) -> IoEngine {
        IoEngine::Async
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
        let mut refused = Vec::new();
        for transfer in self.pending.take() {
            let entry = Self::entry(&transfer, disk);
            let requests = transfer.requests();
            let slot = self.slot(transfer);
            if let Err(e) = self.push(&entry.user_data(slot as u64)) {
                // Not queued: served synchronously below.
                log::debug!("virtio-blk: io_uring refused a transfer ({e}); served synchronously");
                self.free.push(slot);
                if let Some(transfer) = self.slots[slot].take() {
                    refused.push(transfer);
                }
                continue;
            }
            self.in_flight += requests;
        }
        if let Err(e) = self.ring.submit() {
            // The entries stay queued; the next commit or reap submits them.
            log::warn!("virtio-blk: io_uring submission failed: {e}");
        }
        let mut done = Vec::new();
        for transfer in refused {
            let result = transfer.run_sync(disk);
            transfer.finish(result, Some(mem), disk, stats, &mut done);
        }
        self.refused_done.append(&mut done);
    }

    fn reap(
        &mut self,
        mem: Option<&GuestMemoryMmap>,
        disk: &DiskFile,
        stats: &mut RequestStats,
        wait: bool,
        done: &mut Vec<Reaped>,
    ) {
        done.append(&mut self.refused_done);
        let _ = self.event.read();
        loop {
            let ready: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (slot, result) in ready {
                let slot = usize::try_from(slot).unwrap_or(usize::MAX);
                let Some(transfer) = self.slots.get_mut(slot).and_then(Option::take) else {
                    continue;
                };
                self.free.push(slot);
                self.in_flight -= transfer.requests();
                let result =
                    usize::try_from(result).map_err(|_| std::io::Error::from_raw_os_error(-result));
                transfer.finish(result, mem, disk, stats, done);
            }
            if !wait || self.in_flight == 0 {
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!(
                        "virtio-blk: waiting for {} io_uring request(s) failed: {e}",
                        self.in_flight
                    );
                    return;
                }
            }
        }
    }

    fn abandon(&mut self) {
        for transfer in self.slots.iter_mut().flatten() {
            transfer.abandoned = true;
        }
        self.refused_done.clear();
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.pending.requests() + self.refused_done.len()
    }

    fn completion_event(&self) -> Option<&EventFd> {
        Some(&self.event)
    }
}
