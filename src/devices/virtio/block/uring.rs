//! The Async block engine: reads, writes and flushes go to an io_uring, one submission per
//! pass over the queue, and come back on an eventfd the device watches in the event loop. The
//! event loop never waits for the disk.
//!
//! The ring is created disabled and restricted before it is enabled: only READV, WRITEV and
//! FSYNC requests with no flag but IO_DRAIN, and no further registration. Its kernel workers
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
use super::engine::{BlockEngine, IoEngine, Reaped, Submitted};
use super::request::{HostOp, Op, Reply, Request, RequestError, RequestStats, execute_sync};

/// One request in the ring.
struct InFlight {
    head: u16,
    reply: Reply,
    op: HostOp,
    offset: u64,
    /// Bytes the request moves (0 for a flush).
    expect: usize,
    /// The iovecs the kernel reads at submission; kept until completion for a short transfer.
    iovecs: Vec<libc::iovec>,
    /// The driver reset the device meanwhile: retire it unanswered.
    abandoned: bool,
}

/// The io_uring engine.
pub(crate) struct UringEngine {
    ring: IoUring,
    event: EventFd,
    /// In-flight requests by `user_data`.
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    in_flight: usize,
}

// SAFETY: the raw pointers (iovecs into guest memory) are only used by the kernel and by the
// thread that holds the device's lock; guest memory is shared with the guest by design.
unsafe impl Send for UringEngine {}

impl UringEngine {
    /// A ring of `entries` (the queue size: at most that many requests are in flight), its
    /// completion eventfd registered, restricted to what the engine submits.
    pub fn new(entries: u16) -> std::io::Result<Self> {
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(u32::from(entries.max(1)))?;
        let event = EventFd::new(EFD_NONBLOCK)?;
        let submitter = ring.submitter();
        submitter.register_eventfd(event.as_raw_fd())?;
        let mut allowed = [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_flags_allowed(squeue::Flags::IO_DRAIN.bits()),
        ];
        submitter.register_restrictions(&mut allowed)?;
        submitter.register_enable_rings()?;
        Ok(UringEngine {
            ring,
            event,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
        })
    }

    fn slot(&mut self, request: InFlight) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(request);
                i
            }
            None => {
                self.slots.push(Some(request));
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

    fn finish(
        &mut self,
        slot: usize,
        result: i32,
        mem: Option<&GuestMemoryMmap>,
        disk: &DiskFile,
        stats: &mut RequestStats,
    ) -> Option<Reaped> {
        let mut request = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.in_flight -= 1;
        if request.abandoned {
            return None;
        }
        let outcome = match usize::try_from(result) {
            Err(_) => Err(std::io::Error::from_raw_os_error(-result)),
            Ok(done) if done < request.expect => {
                // SAFETY: the iovecs still describe the request's guest buffers (module doc).
                unsafe {
                    disk.iovecs_at(
                        request.offset + done as u64,
                        &mut request.iovecs,
                        done,
                        request.op == HostOp::Write,
                    )
                }
            }
            Ok(_) => Ok(()),
        };
        let mem = mem?;
        let result = outcome.map_err(|e| RequestError::Io(request.op, e));
        Some((
            request.head,
            request.reply.finish(mem, result, stats).used_len,
        ))
    }
}

impl BlockEngine for UringEngine {
    fn kind(&self) -> IoEngine {
        IoEngine::Async
    }

    fn submit(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        request: Request<'_>,
        disk: &DiskFile,
        stats: &mut RequestStats,
    ) -> Submitted {
        let fd = types::Fd(disk.fd());
        let (op, offset, bufs) = match &request.op {
            Op::Read { offset, bufs } => (HostOp::Read, *offset, &bufs[..]),
            Op::Write { offset, bufs } => (HostOp::Write, *offset, &bufs[..]),
            Op::Flush => (HostOp::Flush, 0, &[][..]),
            _ => {
                let result = execute_sync(&request.op, disk);
                return Submitted::Done(request.reply.finish(mem, result, stats));
            }
        };
        let iovecs: Vec<libc::iovec> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| libc::iovec {
                iov_base: b.ptr_guard_mut().as_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let expect = iovecs.iter().map(|v| v.iov_len).sum();
        let Ok(count) = u32::try_from(iovecs.len()) else {
            let result = execute_sync(&request.op, disk);
            return Submitted::Done(request.reply.finish(mem, result, stats));
        };
        let entry = match op {
            HostOp::Read => opcode::Readv::new(fd, iovecs.as_ptr(), count)
                .offset(offset)
                .build(),
            HostOp::Write => opcode::Writev::new(fd, iovecs.as_ptr(), count)
                .offset(offset)
                .build(),
            _ => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        };
        let slot = self.slot(InFlight {
            head,
            reply: request.reply,
            op,
            offset,
            expect,
            iovecs,
            abandoned: false,
        });
        self.in_flight += 1;
        if let Err(e) = self.push(&entry.user_data(slot as u64)) {
            // Nothing was queued: take it back and serve it here.
            log::debug!("virtio-blk: io_uring refused a request ({e}); served synchronously");
            self.slots[slot] = None;
            self.free.push(slot);
            self.in_flight -= 1;
            let result = execute_sync(&request.op, disk);
            return Submitted::Done(request.reply.finish(mem, result, stats));
        }
        Submitted::InFlight
    }

    fn commit(&mut self) {
        if let Err(e) = self.ring.submit() {
            // The entries stay queued; the next commit or reap submits them.
            log::warn!("virtio-blk: io_uring submission failed: {e}");
        }
    }

    fn reap(
        &mut self,
        mem: Option<&GuestMemoryMmap>,
        disk: &DiskFile,
        stats: &mut RequestStats,
        wait: bool,
        done: &mut Vec<Reaped>,
    ) {
        let _ = self.event.read();
        loop {
            let ready: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (slot, result) in ready {
                let slot = usize::try_from(slot).unwrap_or(usize::MAX);
                if let Some(reaped) = self.finish(slot, result, mem, disk, stats) {
                    done.push(reaped);
                }
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
        for request in self.slots.iter_mut().flatten() {
            request.abandoned = true;
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn completion_event(&self) -> Option<&EventFd> {
        Some(&self.event)
    }
}
