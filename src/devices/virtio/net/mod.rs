//! virtio-net on a host TAP device: the device (features, config space with the MAC and link
//! status, activation with TAP offloads) and its event-loop side (TAP readiness, RX and TX
//! queue notifications, back-pressure). The data paths are in `rxtx`, the TAP in `tap`, the
//! header, offloads and counters in `frame`.
//!
//! Back-pressure: the TAP is watched for EPOLLIN only while the guest has RX buffers; when a
//! frame finds none it waits (one frame at most) and the TAP is dropped from epoll until the
//! guest posts buffers and notifies the RX queue. When a TAP write would block, the chain waits
//! and the TAP is watched for EPOLLOUT. Nothing is ever polled that cannot make progress.

pub mod frame;
pub mod persist;
pub mod rxtx;
pub mod tap;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use self::frame::{NetStats, offered_features, tap_offload_flags};
use self::rxtx::{Rx, Tx};
use self::tap::{Tap, TapError};
use super::counters::{CounterValues, DeviceCounters};
use super::{ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt, read_config_bytes};
use crate::config::net::MacAddr;
use crate::config::rate_limiter::RateLimiterConfig;
use crate::devices::rate_limiter::{RateLimiter, RateLimiterError};

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// Queue indexes.
const RX_INDEX: usize = 0;
const TX_INDEX: usize = 1;
/// `virtio_net_config` up to `status`: mac[6], status.
const CONFIG_SIZE: usize = 8;

/// Errors while creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP cannot be used.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// An eventfd could not be created.
    #[error("Failed to create an eventfd for network interface {0}")]
    EventFd(String, #[source] std::io::Error),
    /// A rate limiter's timer could not be created.
    #[error("Network interface {0}")]
    RateLimiter(String, #[source] RateLimiterError),
}

/// Event-loop tokens.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    RxQueue = 0,
    TxQueue = 1,
    Tap = 2,
    RxLimiter = 3,
    TxLimiter = 4,
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-net device backed by a TAP.
pub struct Net {
    id: String,
    tap: Tap,
    config: [u8; CONFIG_SIZE],
    queue_evts: Vec<EventFd>,
    /// Quiesced (the VM is paused): queues and TAP are left alone until `wake`.
    quiesced: bool,
    active: Option<Active>,
    rx: Rx,
    tx: Tx,
    /// The guest has RX buffers (as far as Ember knows): worth reading the TAP.
    rx_ready: bool,
    /// Reading the TAP failed for good.
    tap_failed: bool,
    /// The guest corrupted a queue; nothing moves until it resets the device.
    broken: bool,
    /// What the TAP is registered for in epoll (empty: not registered).
    tap_interest: EventSet,
    stats: NetStats,
    counters: Arc<DeviceCounters>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
}

impl From<NetStats> for CounterValues {
    fn from(stats: NetStats) -> Self {
        CounterValues {
            ops: stats.rx_frames + stats.tx_frames,
            read_bytes: stats.rx_bytes,
            written_bytes: stats.tx_bytes,
            errors: stats.tx_malformed + stats.tx_errors + stats.rx_malformed,
            drops: stats.rx_dropped,
            throttled: 0,
        }
    }
}

/// `virtio_net_config` as far as Ember fills it: the MAC, then the status with the link up.
fn config_space(mac: MacAddr) -> [u8; CONFIG_SIZE] {
    let mut config = [0u8; CONFIG_SIZE];
    config[..6].copy_from_slice(&mac.0);
    config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    config
}

impl Net {
    /// A NIC on the existing TAP `tap` with guest MAC `mac`.
    pub fn new(id: &str, tap: &str, mac: MacAddr) -> Result<Self, NetError> {
        Self::with_tap(id, Tap::open(tap, id)?, mac)
    }

    /// A NIC on the open `tap`.
    fn with_tap(id: &str, tap: Tap, mac: MacAddr) -> Result<Self, NetError> {
        let config = config_space(mac);
        let queue_evts = (0..QUEUE_SIZES.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(|e| NetError::EventFd(id.to_string(), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let limiter = |side: &str| {
            RateLimiter::new(&format!("net {id} {side}"), None)
                .map_err(|e| NetError::RateLimiter(id.into(), e))
        };
        let (rx_limiter, tx_limiter) = (limiter("rx")?, limiter("tx")?);
        log::info!("Network interface {id}: TAP {}, MAC {mac}", tap.name());
        Ok(Net {
            id: id.to_string(),
            tap,
            config,
            queue_evts,
            quiesced: false,
            active: None,
            rx: Rx::default(),
            tx: Tx::default(),
            rx_ready: false,
            tap_failed: false,
            broken: false,
            tap_interest: EventSet::empty(),
            stats: NetStats::default(),
            counters: Arc::default(),
            rx_limiter,
            tx_limiter,
        })
    }

    /// Applies rate limiter configurations or changes (see `RateLimiter::update`) to the
    /// receive and transmit sides; queues that waited for the old limiters are looked at again.
    pub fn update_rate_limiters(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) {
        for (update, limiter, evt) in [
            (rx, &mut self.rx_limiter, &self.queue_evts[RX_INDEX]),
            (tx, &mut self.tx_limiter, &self.queue_evts[TX_INDEX]),
        ] {
            if let Some(update) = update {
                limiter.update(update);
                if self.active.is_some()
                    && let Err(e) = evt.write(1)
                {
                    log::error!("net {}: cannot wake its queue: {e}", self.id);
                }
            }
        }
    }

    /// Traffic and drop counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn name(&self) -> String {
        format!("net {}", self.id)
    }

    /// Moves frames from the TAP to the guest.
    fn process_rx(&mut self) {
        let name = self.name();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let pass = self.rx.process(
            &active.mem,
            &mut active.rx,
            &mut self.tap,
            &mut self.rx_limiter,
            &mut self.stats,
            &name,
        );
        self.rx_ready = pass.wants_backend;
        self.tap_failed |= pass.backend_failed;
        if pass.broken {
            log::warn!("{name}: the guest corrupted its RX queue; stopping until reset");
            self.broken = true;
        }
        if pass.used && active.rx.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }

    /// Moves frames from the guest to the TAP.
    fn process_tx(&mut self) {
        let name = self.name();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let pass = self.tx.process(
            &active.mem,
            &mut active.tx,
            &mut self.tap,
            &mut self.tx_limiter,
            &mut self.stats,
            &name,
        );
        if pass.broken {
            log::warn!("{name}: the guest corrupted its TX queue; stopping until reset");
            self.broken = true;
        }
        if pass.used && active.tx.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }

    /// What the TAP should be watched for now.
    fn wanted_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.active.is_none() || self.broken || self.tap_failed || self.quiesced {
            return set;
        }
        if self.rx_ready && !self.rx.has_pending() {
            set |= EventSet::IN;
        }
        if self.tx.is_blocked() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Brings the epoll registration of the TAP in line with `wanted_interest`.
    fn update_tap_interest(&mut self, ops: &mut EventOps) {
        let want = self.wanted_interest();
        if want == self.tap_interest {
            return;
        }
        let fd = self.tap.as_raw_fd();
        let token = Token::Tap as u32;
        let result = if want.is_empty() {
            ops.remove(Events::with_data_raw(fd, token, self.tap_interest))
        } else if self.tap_interest.is_empty() {
            ops.add(Events::with_data_raw(fd, token, want))
        } else {
            ops.modify(Events::with_data_raw(fd, token, want))
        };
        match result {
            Ok(()) => self.tap_interest = want,
            Err(e) => log::error!(
                "{}: cannot change the TAP's epoll registration: {e:?}",
                self.name()
            ),
        }
    }

    fn handle_tap(&mut self, set: EventSet) {
        if set.intersects(EventSet::ERROR | EventSet::HANG_UP) && !set.contains(EventSet::IN) {
            log::error!("{}: the TAP reported an error; receive stops", self.name());
            self.tap_failed = true;
            return;
        }
        if set.contains(EventSet::OUT) {
            self.process_tx();
        }
        if set.contains(EventSet::IN) {
            self.process_rx();
        }
    }
}

impl VirtioDevice for Net {
    fn id(&self) -> &str {
        &self.id
    }

    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn avail_features(&self) -> u64 {
        offered_features()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut queues = ctx.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::BadQueue(RX_INDEX, "missing".into()));
        };
        for (i, q) in [(RX_INDEX, &rx), (TX_INDEX, &tx)] {
            if !q.ready() {
                return Err(ActivateError::BadQueue(i, "not ready".into()));
            }
        }
        let offload = tap_offload_flags(ctx.acked_features);
        if let Err(e) = self.tap.set_offload(offload) {
            // The TAP then finishes checksums and segments itself: slower, still correct.
            log::warn!("{}: {e}; continuing without receive offloads", self.name());
        }
        log::debug!(
            "{}: activated, features {:#x}, TAP offloads {offload:#x}",
            self.name(),
            ctx.acked_features
        );
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            interrupt: ctx.interrupt,
        });
        self.broken = false;
        self.rx_ready = true;
        // This runs on a vCPU thread: wake the event loop to look at both queues and start
        // watching the TAP (buffers may have been posted before DRIVER_OK).
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        self.rx_ready = false;
        self.tx.reset();
        // The TAP stays registered until its next event, which then finds nothing to do and
        // drops the registration.
    }

    fn active_queues(&self) -> Option<Vec<QueueState>> {
        let active = self.active.as_ref()?;
        let mut tx = active.tx.state();
        if self.tx.is_blocked() {
            // The frame the TAP refused is the last chain taken: give it back. (A frame read
            // from the TAP and waiting for an RX buffer holds no chain; it is not saved.)
            tx.next_avail = tx.next_avail.wrapping_sub(1);
        }
        Some(vec![active.rx.state(), tx])
    }

    fn quiesce(&mut self) {
        // As after a reset, the TAP's next event finds nothing to do and drops its registration.
        self.quiesced = true;
    }

    fn wake(&mut self) {
        self.quiesced = false;
        for evt in &self.queue_evts {
            if let Err(e) = evt.write(1) {
                log::error!("{}: cannot wake its queues: {e}", self.name());
            }
        }
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        if token == Token::RxQueue as u32 || token == Token::TxQueue as u32 {
            let _ = self.queue_evts[token as usize].read();
        }
        // A fired timer is disarmed whatever happens next (it would stay readable otherwise).
        if token == Token::RxLimiter as u32 {
            self.rx_limiter.on_timer();
        } else if token == Token::TxLimiter as u32 {
            self.tx_limiter.on_timer();
        }
        let runnable = self.active.is_some() && !self.broken && !self.quiesced;
        if runnable {
            match token {
                t if t == Token::RxQueue as u32 => {
                    // New buffers: deliver the waiting frame, then read the TAP again.
                    self.rx_ready = true;
                    if !self.tap_failed {
                        self.process_rx();
                    }
                }
                // Throttled: the limiter's timer comes back for the queue.
                t if t == Token::TxQueue as u32 && self.tx_limiter.is_blocked() => {}
                t if t == Token::TxQueue as u32 => self.process_tx(),
                t if t == Token::RxLimiter as u32 => {
                    if !self.tap_failed {
                        self.process_rx();
                    }
                }
                t if t == Token::TxLimiter as u32 => self.process_tx(),
                t if t == Token::Tap as u32 => self.handle_tap(events.event_set()),
                other => log::warn!("{}: unexpected event token {other}", self.name()),
            }
        } else if self.quiesced {
            // `wake` kicks the queues, which re-arms the TAP.
            log::debug!("{}: quiesced; event left for the wake-up", self.name());
        }
        self.update_tap_interest(ops);
        self.counters.publish(CounterValues {
            throttled: self.rx_limiter.throttled() + self.tx_limiter.throttled(),
            ..self.stats.into()
        });
        log::trace!("{}: {:?}", self.name(), self.stats);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (evt, token) in self.queue_evts.iter().zip([Token::RxQueue, Token::TxQueue]) {
            if let Err(e) = ops.add(Events::with_data(evt, token as u32, EventSet::IN)) {
                log::error!("{}: cannot watch its queues: {e:?}", self.name());
            }
        }
        for (limiter, token) in [
            (&self.rx_limiter, Token::RxLimiter),
            (&self.tx_limiter, Token::TxLimiter),
        ] {
            if let Err(e) = ops.add(Events::with_data(limiter, token as u32, EventSet::IN)) {
                log::error!("{}: cannot watch its rate limiters: {e:?}", self.name());
            }
        }
        // The TAP is watched once the driver activates the device.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_space_has_mac_then_link_up() {
        let mac = MacAddr([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
        let config = config_space(mac);
        let mut got = [0u8; 10];
        read_config_bytes(&config, 0, &mut got);
        assert_eq!(got, [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 1, 0, 0, 0]);
    }

    #[test]
    fn test_queue_layout_is_rx_then_tx_of_256() {
        assert_eq!(QUEUE_SIZES, [256, 256]);
        assert_eq!((RX_INDEX, TX_INDEX), (0, 1));
        assert_eq!(Token::TxQueue as usize, TX_INDEX);
    }
}
