//! virtio-blk on a host file: the device (config space, features, its queues, the event-loop
//! side). A request is charged to the rate limiter by its descriptor lengths (a throttled one
//! stays in the ring untouched), parsed in `request`, and handed to an I/O engine (`engine`:
//! Sync, or the io_uring one in `uring`); the file is in `disk`.

pub mod disk;
pub mod engine;
pub mod persist;
pub mod request;
#[cfg(test)]
mod tests;
mod uring;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use self::disk::{DiskError, DiskFile, SECTOR_SIZE};
use self::engine::{BlockEngine, IoEngine, Submitted, SyncEngine};
use self::request::{HostIoError, MAX_DISCARD_SEGMENTS, RequestStats};
use super::counters::{CounterValues, DeviceCounters};
use super::{
    ActivateContext, ActivateError, Served, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, VirtioInterrupt, read_config_bytes, serve_chains,
};
use crate::config::drive::CacheType;
use crate::config::rate_limiter::RateLimiterConfig;
use crate::devices::rate_limiter::{RateLimiter, RateLimiterError};

/// Default size of each request queue.
pub const QUEUE_SIZE: u16 = 256;
pub use crate::config::drive::MAX_QUEUES;
/// VIRTIO_BLK_F_MQ: `num_queues` in config space is valid.
const VIRTIO_BLK_F_MQ: u32 = 12;
/// Size of virtio_blk_config up to write_zeroes_may_unmap.
const CONFIG_SIZE: usize = 60;

/// Errors while creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file cannot be opened or locked.
    #[error("Cannot open disk {id} backing file {path}")]
    Open {
        /// Drive id.
        id: String,
        /// Path.
        path: String,
        /// Why.
        #[source]
        source: DiskError,
    },
    /// An eventfd could not be created.
    #[error("Failed to create an eventfd for disk {0}")]
    EventFd(String, #[source] std::io::Error),
    /// The rate limiter's timer could not be created.
    #[error("Disk {0}")]
    RateLimiter(String, #[source] RateLimiterError),
    /// `direct=on` and the file system cannot open the file with O_DIRECT.
    #[error("Disk {id}: direct=on: cannot open {path} with O_DIRECT")]
    Direct {
        /// Drive id.
        id: String,
        /// Path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// After the first warning about a kind of host failure, at most one more per this period.
const HOST_ERROR_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Host I/O failures of one disk by kind (operation and error): the first of each kind is
/// reported at once, later ones at most once per `HOST_ERROR_LOG_PERIOD` with their count.
#[derive(Default)]
struct HostErrorLog {
    kinds: HashMap<HostIoError, (Instant, u64)>,
}

impl HostErrorLog {
    /// Notes one failure; returns how many of its kind to report (this one and those not yet
    /// reported), or None while the kind is quiet.
    fn note(&mut self, error: HostIoError, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(&error) {
            None => {
                self.kinds.insert(error, (now, 0));
                Some(1)
            }
            Some((last, unreported)) => {
                *unreported += 1;
                if now.duration_since(*last) < HOST_ERROR_LOG_PERIOD {
                    return None;
                }
                *last = now;
                Some(std::mem::take(unreported))
            }
        }
    }
}

/// Logs the latest host failure in `stats` (the first of each kind at once, later ones at most
/// once per `HOST_ERROR_LOG_PERIOD`).
fn report_host_error(
    name: &str,
    path: &Path,
    stats: &mut RequestStats,
    host_errors: &mut HostErrorLog,
) {
    if let Some(error) = stats.last_host_error.take()
        && let Some(count) = host_errors.note(error, Instant::now())
    {
        log::warn!(
            "Disk {name}: host {} of {} failed: {error}; the guest gets an I/O error ({count} time(s) since the last report; {} host failure(s) in all)",
            error.op,
            path.display(),
            stats.host_errors
        );
    }
}

struct Active {
    mem: GuestMemoryMmap,
    /// Every queue the transport has; the driver set up those that are ready (queue 0 only
    /// without VIRTIO_BLK_F_MQ).
    queues: Vec<Queue>,
    interrupt: Arc<VirtioInterrupt>,
}

/// An engine tag: the queue and the descriptor head of a request.
fn tag(queue: usize, head: u16) -> u32 {
    ((queue as u32) << 16) | u32::from(head)
}

/// A virtio-blk device.
pub struct Block {
    id: String,
    path: PathBuf,
    disk: DiskFile,
    features: u64,
    config: [u8; CONFIG_SIZE],
    queue_sizes: Vec<u16>,
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
    broken: bool,
    /// Quiesced (the VM is paused): the queue is left alone until `wake`.
    quiesced: bool,
    stats: RequestStats,
    host_errors: HostErrorLog,
    counters: Arc<DeviceCounters>,
    limiter: RateLimiter,
    engine: Box<dyn BlockEngine>,
}

impl From<RequestStats> for CounterValues {
    fn from(stats: RequestStats) -> Self {
        CounterValues {
            ops: stats.requests,
            read_bytes: stats.read_bytes,
            written_bytes: stats.written_bytes,
            errors: stats.malformed + stats.io_errors + stats.unsupported,
            drops: 0,
            throttled: 0,
        }
    }
}

fn put_u32(config: &mut [u8], offset: usize, value: u32) {
    config[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

impl Block {
    /// A disk backed by `path`.
    pub fn new(id: &str, path: &Path, readonly: bool) -> Result<Self, BlockError> {
        Self::with_sharing(id, path, (readonly, false))
    }

    /// `new`, where `(readonly, shared)` with `shared` takes a shared lock on a writable image
    /// (see `DiskFile::open_locked`).
    pub fn with_sharing(
        id: &str,
        path: &Path,
        (readonly, shared): (bool, bool),
    ) -> Result<Self, BlockError> {
        let disk =
            DiskFile::open_locked(path, readonly, shared).map_err(|source| BlockError::Open {
                id: id.to_string(),
                path: path.display().to_string(),
                source,
            })?;
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        if disk.supports_discard() {
            features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let mut config = [0u8; CONFIG_SIZE];
        config[0..8].copy_from_slice(&(disk.size() / SECTOR_SIZE).to_le_bytes());
        put_u32(&mut config, 12, u32::from(QUEUE_SIZE) - 2); // seg_max
        put_u32(&mut config, 20, SECTOR_SIZE as u32); // blk_size
        let max_sectors = (request::MAX_REQUEST_BYTES as u64 / SECTOR_SIZE) as u32;
        put_u32(&mut config, 36, u32::MAX / SECTOR_SIZE as u32); // max_discard_sectors
        put_u32(&mut config, 40, MAX_DISCARD_SEGMENTS); // max_discard_seg
        put_u32(&mut config, 44, 8); // discard_sector_alignment: 4 KiB
        put_u32(&mut config, 48, max_sectors.max(1)); // max_write_zeroes_sectors
        put_u32(&mut config, 52, MAX_DISCARD_SEGMENTS); // max_write_zeroes_seg
        config[56] = 1; // write_zeroes_may_unmap
        let queue_evts =
            vec![EventFd::new(EFD_NONBLOCK).map_err(|e| BlockError::EventFd(id.to_string(), e))?];
        log::info!(
            "Disk {id}: {} ({} sectors{}{})",
            path.display(),
            disk.size() / SECTOR_SIZE,
            if readonly { ", read-only" } else { "" },
            if disk.supports_discard() {
                ", discard"
            } else {
                ""
            }
        );
        Ok(Block {
            id: id.to_string(),
            path: path.to_owned(),
            disk,
            features,
            config,
            queue_sizes: vec![QUEUE_SIZE],
            queue_evts,
            active: None,
            broken: false,
            quiesced: false,
            stats: RequestStats::default(),
            host_errors: HostErrorLog::default(),
            counters: Arc::default(),
            limiter: RateLimiter::new(&format!("disk {id}"), None)
                .map_err(|e| BlockError::RateLimiter(id.into(), e))?,
            engine: Box::new(SyncEngine::default()),
        })
    }

    /// Applies a rate limiter configuration or change (see `RateLimiter::update`); a queue
    /// that waited for the old limiter is looked at again.
    pub fn update_rate_limiter(&mut self, update: &RateLimiterConfig) {
        self.limiter.update(update);
        if self.active.is_some() {
            self.kick_queues("new rate limiter");
        }
    }

    /// Counters of malformed and failed requests.
    pub fn stats(&self) -> RequestStats {
        self.stats
    }

    /// Gives the disk `num_queues` request queues of `queue_size` entries (before it is
    /// attached): more than one offers VIRTIO_BLK_F_MQ with `num_queues` in config space.
    pub fn set_queues(&mut self, num_queues: u16, queue_size: u16) -> Result<(), BlockError> {
        let num_queues = num_queues.clamp(1, MAX_QUEUES);
        self.queue_evts = (0..num_queues)
            .map(|_| {
                EventFd::new(EFD_NONBLOCK).map_err(|e| BlockError::EventFd(self.id.clone(), e))
            })
            .collect::<Result<_, _>>()?;
        self.queue_sizes = vec![queue_size; usize::from(num_queues)];
        put_u32(&mut self.config, 12, u32::from(queue_size.max(3)) - 2); // seg_max
        if num_queues > 1 {
            self.features |= 1 << VIRTIO_BLK_F_MQ;
            self.config[34..36].copy_from_slice(&num_queues.to_le_bytes());
        } else {
            self.features &= !(1 << VIRTIO_BLK_F_MQ);
            self.config[34..36].fill(0);
        }
        Ok(())
    }

    /// `direct=on`: aligned transfers bypass the host page cache (O_DIRECT).
    pub fn set_direct(&mut self) -> Result<(), BlockError> {
        self.disk
            .open_direct(&self.path)
            .map_err(|source| BlockError::Direct {
                id: self.id.clone(),
                path: self.path.display().to_string(),
                source,
            })
    }

    /// What a guest FLUSH does: Writeback syncs the host file, Unsafe only acknowledges it.
    pub fn set_cache_type(&mut self, cache: CacheType) {
        self.disk.set_flush_ignored(cache == CacheType::Unsafe);
    }

    fn publish_counters(&self) {
        self.counters.publish(CounterValues {
            throttled: self.limiter.throttled(),
            ..self.stats.into()
        });
    }

    /// Wakes every queue (activation, wake-up, a new rate limiter).
    fn kick_queues(&self, why: &str) {
        for evt in &self.queue_evts {
            if let Err(e) = evt.write(1) {
                log::error!("Disk {}: cannot wake its queues ({why}): {e}", self.id);
            }
        }
    }

    /// Selects the I/O engine (before the driver starts the device): Async falls back to Sync
    /// with one log line where the host has no io_uring.
    pub fn set_io_engine(&mut self, wanted: IoEngine) {
        let mut done = Vec::new();
        self.engine
            .reap(None, &self.disk, &mut self.stats, true, &mut done);
        let in_flight: u16 = self.queue_sizes.iter().sum();
        self.engine = engine::open_engine(&self.id, wanted, in_flight);
    }

    /// The engine serving requests (after any fallback).
    pub fn io_engine(&self) -> IoEngine {
        self.engine.kind()
    }

    /// Puts the requests the engine finished into the used ring (with `wait`, every request in
    /// flight, waited for) and raises the interrupt if the driver wants it.
    fn complete_in_flight(&mut self, wait: bool) {
        let mut done = Vec::new();
        let mem = self.active.as_ref().map(|a| a.mem.clone());
        let answer = if self.broken { None } else { mem.as_ref() };
        self.engine
            .reap(answer, &self.disk, &mut self.stats, wait, &mut done);
        report_host_error(&self.id, &self.path, &mut self.stats, &mut self.host_errors);
        if let (Some(active), Some(mem), false) = (self.active.as_mut(), answer, done.is_empty()) {
            let mut used = vec![false; active.queues.len()];
            for (tag, len) in done {
                let (index, head) = ((tag >> 16) as usize, tag as u16);
                let Some(queue) = active.queues.get_mut(index) else {
                    continue;
                };
                if let Err(e) = queue.add_used(mem, head, len) {
                    log::warn!("Disk {}: cannot complete request {head}: {e}", self.id);
                    self.broken = true;
                    break;
                }
                used[index] = true;
            }
            // Every queue that got entries is asked (EVENT_IDX keeps per-queue state).
            let mut notify = false;
            for (queue, used) in active.queues.iter_mut().zip(used) {
                notify |= used && queue.needs_notification(mem).unwrap_or(true);
            }
            if notify {
                active.interrupt.signal_used_queue();
            }
        }
        self.publish_counters();
    }

    /// Serves every ready queue (after a rate limiter's timer, which does not say which
    /// queue waited).
    fn process_queues(&mut self) {
        let ready = self.active.as_ref().map_or(0, |a| a.queues.len());
        for index in 0..ready {
            self.process_queue(index);
        }
    }

    fn process_queue(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let Some(queue) = active.queues.get_mut(index).filter(|q| q.ready()) else {
            return;
        };
        let id = self.id.as_bytes();
        let (disk, stats, host_errors) = (&self.disk, &mut self.stats, &mut self.host_errors);
        let (name, path) = (&self.id, &self.path);
        let (limiter, engine) = (&mut self.limiter, &mut self.engine);
        let served = serve_chains(&mem, queue, |chain| {
            if !limiter.consume(request::data_len_hint(&chain)) {
                return Some(Served::Throttled);
            }
            let head = tag(index, chain.head_index());
            let done = match request::parse(&mem, chain, disk, id, stats) {
                Err(malformed) => malformed,
                Ok(request) => match engine.submit(&mem, head, request, disk, stats) {
                    Submitted::Done(done) => done,
                    Submitted::InFlight => return Some(Served::InFlight),
                },
            };
            report_host_error(name, path, stats, host_errors);
            Some(Served::Used(done.used_len))
        });
        engine.commit(&mem, disk, stats);
        let used_any = match served {
            Ok(used_any) => used_any,
            Err(e) => {
                log::warn!(
                    "Disk {}: the guest corrupted its queue ({}); stopping it",
                    self.id,
                    e.0
                );
                self.broken = true;
                true
            }
        };
        if used_any && queue.needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        if self.engine.in_flight() > 0 {
            // What completed during the submission (page-cache hits) goes back at once.
            self.complete_in_flight(false);
        }
        self.publish_counters();
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // The kernel may still be writing into guest memory: wait for it.
        let mut done = Vec::new();
        self.engine
            .reap(None, &self.disk, &mut self.stats, true, &mut done);
    }
}

impl VirtioDevice for Block {
    fn id(&self) -> &str {
        &self.id
    }

    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if !ctx.queues.first().is_some_and(|q| q.ready()) {
            return Err(ActivateError::BadQueue(0, "not ready".into()));
        }
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            interrupt: ctx.interrupt,
        });
        self.broken = false;
        // This runs on the vCPU thread that wrote DRIVER_OK, which does no device I/O (its
        // seccomp filter forbids preadv and friends): requests queued before DRIVER_OK are
        // left to the event loop, woken through the queues' eventfds.
        self.kick_queues("activation");
        Ok(())
    }

    fn reset(&mut self) {
        // On the vCPU thread: requests still in flight finish unanswered, retired by the event
        // loop (the driver gave up the queue; guest memory stays mapped for the VM's life).
        self.engine.abandon();
        self.active = None;
        self.broken = false;
    }

    fn quiesce(&mut self) {
        self.quiesced = true;
        // Every request in flight completes before the VM counts as paused.
        self.complete_in_flight(true);
    }

    fn active_queues(&self) -> Option<Vec<QueueState>> {
        // Sync requests complete before `process_queue` returns and async ones before
        // `quiesce` does: none is half done in a paused VM.
        if self.engine.in_flight() > 0 {
            log::warn!(
                "Disk {}: saving its queue with {} request(s) in flight",
                self.id,
                self.engine.in_flight()
            );
        }
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| q.state()).collect())
    }

    fn wake(&mut self) {
        self.quiesced = false;
        self.kick_queues("wake-up");
    }
}

/// Event-loop tokens: queue `i` is token `i` (below `MAX_QUEUES`).
const TOKEN_LIMITER: u32 = 1000;
const TOKEN_COMPLETION: u32 = 1001;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        let queue = match token {
            TOKEN_LIMITER => {
                self.limiter.on_timer();
                None
            }
            TOKEN_COMPLETION => return self.complete_in_flight(false),
            index => match self.queue_evts.get(index as usize) {
                Some(evt) => {
                    let _ = evt.read();
                    Some(index as usize)
                }
                None => return,
            },
        };
        if self.limiter.is_blocked() {
            // Throttled: the limiter's timer comes back here; the avail ring keeps the rest.
            return;
        }
        if self.quiesced {
            // `wake` kicks the queue again; nothing is lost, the avail ring keeps it.
            return;
        }
        if self.broken {
            log::debug!(
                "Disk {}: notification ignored until the driver resets the device",
                self.id
            );
            return;
        }
        match queue {
            Some(index) => self.process_queue(index),
            None => self.process_queues(),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut added = ops.add(Events::with_data(
            &self.limiter,
            TOKEN_LIMITER,
            EventSet::IN,
        ));
        for (index, evt) in self.queue_evts.iter().enumerate() {
            added =
                added.and_then(|()| ops.add(Events::with_data(evt, index as u32, EventSet::IN)));
        }
        if let Some(evt) = self.engine.completion_event() {
            added = added
                .and_then(|()| ops.add(Events::with_data(evt, TOKEN_COMPLETION, EventSet::IN)));
        }
        if let Err(e) = added {
            log::error!("Disk {}: cannot watch its queue: {e:?}", self.id);
        }
    }
}

#[cfg(test)]
mod host_error_tests {
    use super::*;
    use crate::devices::virtio::block::request::HostOp;

    fn efbig() -> HostIoError {
        HostIoError {
            op: HostOp::Write,
            errno: Some(libc::EFBIG),
            kind: std::io::ErrorKind::FileTooLarge,
        }
    }

    #[test]
    fn test_host_error_log_reports_each_kind_once_per_period() {
        let mut log = HostErrorLog::default();
        let start = Instant::now();
        assert_eq!(log.note(efbig(), start), Some(1));
        for i in 1..50 {
            assert_eq!(log.note(efbig(), start + Duration::from_millis(i)), None);
        }
        let eof = HostIoError {
            op: HostOp::Read,
            errno: None,
            kind: std::io::ErrorKind::UnexpectedEof,
        };
        assert_eq!(
            log.note(eof, start),
            Some(1),
            "another kind is reported at once"
        );
        let later = start + HOST_ERROR_LOG_PERIOD;
        assert_eq!(log.note(efbig(), later), Some(50));
    }
}
