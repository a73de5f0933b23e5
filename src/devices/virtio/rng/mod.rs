//! virtio-rng (entropy device): one request queue whose writable buffers Ember fills with bytes
//! from the host's `getrandom(2)`. Requests are served on the event loop; a request larger than
//! `MAX_REQUEST_BYTES` is filled only that far (the used length says how much, as the spec
//! allows). An optional rate limiter (`devices/rate_limiter.rs`) counts requests and bytes; a
//! throttled queue waits for the limiter's timerfd.

pub mod persist;

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{DescriptorChain, Queue, QueueState, QueueT, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::counters::{CounterValues, DeviceCounters};
use super::{
    ActivateContext, ActivateError, Served, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, VirtioInterrupt, chain_len, serve_chains,
    single_queue,
};
use crate::config::rate_limiter::RateLimiterConfig;
use crate::devices::rate_limiter::{RateLimiter, RateLimiterError};

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Most bytes one request gets: a guest asking for more is served this much (Linux asks for
/// at most a page or two).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Errors while creating an entropy device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// An eventfd could not be created.
    #[error("Failed to create an eventfd for entropy device {0}")]
    EventFd(String, #[source] std::io::Error),
    /// The rate limiter's timer could not be created.
    #[error("Entropy device {0}")]
    RateLimiter(String, #[source] RateLimiterError),
}

/// What the device did, for the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RngStats {
    /// Requests served.
    pub requests: u64,
    /// Random bytes given to the guest.
    pub bytes: u64,
    /// Requests without a writable buffer, or that guest memory refused.
    pub malformed: u64,
    /// getrandom failures (the request is completed with 0 bytes).
    pub host_errors: u64,
}

impl From<RngStats> for CounterValues {
    fn from(stats: RngStats) -> Self {
        CounterValues {
            ops: stats.requests,
            read_bytes: stats.bytes,
            written_bytes: 0,
            errors: stats.malformed + stats.host_errors,
            drops: 0,
            throttled: 0,
        }
    }
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-rng device.
pub struct Rng {
    id: String,
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
    broken: bool,
    quiesced: bool,
    stats: RngStats,
    counters: Arc<DeviceCounters>,
    limiter: RateLimiter,
}

/// Fills `buf` from the host's entropy pool (`getrandom(2)`, blocking only until the pool is
/// initialised at boot, which it is long before a VMM runs).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Serves one request: fills its writable part (at most `MAX_REQUEST_BYTES`); returns the
/// number of bytes written.
fn serve(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    stats: &mut RngStats,
) -> u32 {
    let mut writer = match Writer::new(mem, chain) {
        Ok(w) if w.available_bytes() > 0 => w,
        _ => {
            stats.malformed += 1;
            return 0;
        }
    };
    let len = writer.available_bytes().min(MAX_REQUEST_BYTES);
    let mut bytes = vec![0u8; len];
    if fill_random(&mut bytes).is_err() {
        stats.host_errors += 1;
        return 0;
    }
    match std::io::Write::write_all(&mut writer, &bytes) {
        Ok(()) => {
            stats.requests += 1;
            stats.bytes += len as u64;
            len as u32
        }
        Err(_) => {
            stats.malformed += 1;
            0
        }
    }
}

impl Rng {
    /// An entropy device named `id`.
    pub fn new(id: &str) -> Result<Self, RngError> {
        let queue_evts =
            vec![EventFd::new(EFD_NONBLOCK).map_err(|e| RngError::EventFd(id.to_string(), e))?];
        log::info!("Entropy device {id}: getrandom(2)");
        Ok(Rng {
            id: id.to_string(),
            queue_evts,
            active: None,
            broken: false,
            quiesced: false,
            stats: RngStats::default(),
            counters: Arc::default(),
            limiter: RateLimiter::new(&format!("rng {id}"), None)
                .map_err(|e| RngError::RateLimiter(id.into(), e))?,
        })
    }

    /// Applies a rate limiter configuration or change (see `RateLimiter::update`); a queue
    /// that waited for the old limiter is looked at again.
    pub fn update_rate_limiter(&mut self, update: &RateLimiterConfig) {
        self.limiter.update(update);
        if self.active.is_some()
            && let Err(e) = self.queue_evts[0].write(1)
        {
            log::error!("Entropy device {}: cannot wake its queue: {e}", self.id);
        }
    }

    /// What the device did so far.
    pub fn stats(&self) -> RngStats {
        self.stats
    }

    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queue;
        let stats = &mut self.stats;
        let limiter = &mut self.limiter;
        let served = serve_chains(mem, queue, |chain| {
            let wanted = chain_len(&chain, true).min(MAX_REQUEST_BYTES as u64);
            if !limiter.consume(wanted) {
                return Some(Served::Throttled);
            }
            Some(Served::Used(serve(mem, chain, stats)))
        });
        let used_any = match served {
            Ok(used_any) => used_any,
            Err(e) => {
                log::warn!(
                    "Entropy device {}: the guest corrupted its queue ({})",
                    self.id,
                    e.0
                );
                self.broken = true;
                true
            }
        };
        if used_any && queue.needs_notification(mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        self.counters.publish(CounterValues {
            throttled: self.limiter.throttled(),
            ..self.stats.into()
        });
    }
}

impl VirtioDevice for Rng {
    fn id(&self) -> &str {
        &self.id
    }

    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let queue = single_queue(ctx.queues)?;
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            interrupt: ctx.interrupt,
        });
        self.broken = false;
        // On the vCPU thread: requests posted before DRIVER_OK are left to the event loop.
        if let Err(e) = self.queue_evts[0].write(1) {
            log::error!("Entropy device {}: cannot wake its queue: {e}", self.id);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }

    fn quiesce(&mut self) {
        self.quiesced = true;
    }

    fn wake(&mut self) {
        self.quiesced = false;
        if let Err(e) = self.queue_evts[0].write(1) {
            log::error!("Entropy device {}: cannot wake its queue: {e}", self.id);
        }
    }

    fn active_queues(&self) -> Option<Vec<QueueState>> {
        // Requests complete before `process_queue` returns.
        self.active.as_ref().map(|a| vec![a.queue.state()])
    }
}

/// Event-loop tokens.
const TOKEN_QUEUE: u32 = 0;
const TOKEN_LIMITER: u32 = 1;

impl MutEventSubscriber for Rng {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == TOKEN_LIMITER {
            self.limiter.on_timer();
        } else {
            let _ = self.queue_evts[0].read();
        }
        if self.quiesced || self.broken || self.limiter.is_blocked() {
            // Quiesced: `wake` kicks the queue again. Broken: until the driver resets.
            // Throttled: the limiter's timer comes back here.
            return;
        }
        self.process_queue();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let queue = Events::with_data(&self.queue_evts[0], TOKEN_QUEUE, EventSet::IN);
        let limiter = Events::with_data(&self.limiter, TOKEN_LIMITER, EventSet::IN);
        if let Err(e) = ops.add(queue).and_then(|()| ops.add(limiter)) {
            log::error!("Entropy device {}: cannot watch its queue: {e:?}", self.id);
        }
    }
}

#[cfg(test)]
mod tests;
