//! The two data paths of virtio-net, independent of epoll so that they can be tested against
//! mock queues: TX gathers a guest chain into one buffer and writes it to the backend (the
//! TAP), RX reads one frame from the backend and scatters it into one guest chain. Malformed
//! chains are dropped and counted; a frame that cannot be placed yet waits (one at most).

use crate::devices::rate_limiter::RateLimiter;
use std::io::ErrorKind;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

use super::frame::{MAX_BUFFER_LEN, NetStats, VNET_HDR_LEN, set_num_buffers};

/// Most frames moved from the backend to the guest in one pass: a busy TAP must not starve the
/// rest of the event loop (epoll is level-triggered, so the rest waits for the next pass).
pub const RX_BUDGET: usize = 256;

/// Where frames go and come from: the TAP, or a fake in tests.
pub trait Backend {
    /// Reads one frame (vnet header included); `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame (vnet header included); `WouldBlock` when the backend is full.
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize>;
}

/// Why a guest chain was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RxTxError {
    /// The chain holds less than a virtio-net header.
    #[error("{0} bytes, shorter than the {VNET_HDR_LEN}-byte header")]
    Short(usize),
    /// The chain is larger than any frame.
    #[error("{0} bytes, more than the {MAX_BUFFER_LEN} bytes of the largest frame")]
    TooLarge(u64),
    /// A descriptor points outside guest memory.
    #[error("descriptor {addr:#x}+{len:#x} lies outside guest memory")]
    OutsideMemory {
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A TX chain has a device-writable descriptor.
    #[error("device-writable descriptor in a TX chain")]
    WriteOnly,
    /// An RX chain has a device-readable descriptor.
    #[error("device-readable descriptor in an RX chain")]
    ReadOnly,
    /// A valid RX chain is too small for the waiting frame.
    #[error("frame of {frame} bytes does not fit the {room}-byte buffer")]
    TooSmall {
        /// Frame size, header included.
        frame: usize,
        /// Room in the chain.
        room: usize,
    },
}

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// The next chain the guest made available, `None` when there is none, or an error when the
/// guest corrupted the avail ring (an index more than the queue size ahead of the device's).
/// `pop_descriptor_chain` reports that corruption as "no chain" while `enable_notification`
/// keeps saying a chain is waiting: a caller looping on the two would spin forever (found by
/// the `net_frames` fuzz target).
fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
) -> Result<Option<Chain<'a>>, virtio_queue::Error> {
    Ok(queue.iter(mem)?.next())
}

/// Copies the readable TX chain into `buf` (which has `MAX_BUFFER_LEN` bytes); returns the
/// frame length, header included.
pub fn gather_tx(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    buf: &mut [u8],
) -> Result<usize, RxTxError> {
    let mut len = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(RxTxError::WriteOnly);
        }
        let dlen = desc.len() as usize;
        let end = len + dlen;
        if end > MAX_BUFFER_LEN || end > buf.len() {
            return Err(RxTxError::TooLarge(end as u64));
        }
        mem.read_slice(&mut buf[len..end], desc.addr())
            .map_err(|_| RxTxError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        len = end;
    }
    if len < VNET_HDR_LEN {
        return Err(RxTxError::Short(len));
    }
    Ok(len)
}

/// Copies `frame` into the writable RX chain after checking the whole chain; returns the bytes
/// written. A malformed chain is an error before anything is written.
pub fn scatter_rx(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    frame: &[u8],
) -> Result<usize, RxTxError> {
    let mut room = 0usize;
    for desc in chain.clone() {
        if !desc.is_write_only() {
            return Err(RxTxError::ReadOnly);
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), desc.len() as usize) {
            return Err(RxTxError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        room = room.saturating_add(desc.len() as usize);
    }
    if room < VNET_HDR_LEN {
        return Err(RxTxError::Short(room));
    }
    if room < frame.len() {
        return Err(RxTxError::TooSmall {
            frame: frame.len(),
            room,
        });
    }
    let mut done = 0usize;
    for desc in chain {
        if done == frame.len() {
            break;
        }
        let n = (desc.len() as usize).min(frame.len() - done);
        mem.write_slice(&frame[done..done + n], desc.addr())
            .map_err(|_| RxTxError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        done += n;
    }
    Ok(done)
}

fn log_drop(name: &str, what: &str, err: &RxTxError, stats: &NetStats, warned: &mut bool) {
    if !*warned {
        *warned = true;
        log::warn!(
            "{name}: dropped a malformed {what} buffer from the guest ({err}); further drops are logged at debug level"
        );
    }
    log::debug!("{name}: dropped a malformed {what} buffer ({err}); counters {stats:?}");
}

/// What one pass over the TX queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxPass {
    /// Chains went to the used ring (the guest may need an interrupt).
    pub used: bool,
    /// The backend would block: a frame waits, retry when it is writable.
    pub blocked: bool,
    /// The rate limiter said wait: the next chain stays in the ring until its timer fires.
    pub throttled: bool,
    /// The guest corrupted the queue; stop using it until reset.
    pub broken: bool,
}

/// The TX side: a bounce buffer and the frame waiting for a writable backend.
pub struct Tx {
    buf: Vec<u8>,
    /// Head index and length of the frame the backend refused with `WouldBlock`.
    pending: Option<(u16, usize)>,
    warned: bool,
}

impl Default for Tx {
    fn default() -> Self {
        Tx {
            buf: vec![0; MAX_BUFFER_LEN],
            pending: None,
            warned: false,
        }
    }
}

impl Tx {
    /// Whether a frame waits for the backend to become writable.
    pub fn is_blocked(&self) -> bool {
        self.pending.is_some()
    }

    /// Forgets the waiting frame (device reset: its chain belongs to the old queue).
    pub fn reset(&mut self) {
        self.pending = None;
    }

    /// Writes the frame in `buf[..len]`: false if it must wait; otherwise counts the outcome
    /// (sent or refused) and returns true.
    fn send(
        &mut self,
        backend: &mut dyn Backend,
        len: usize,
        stats: &mut NetStats,
        name: &str,
    ) -> bool {
        loop {
            match backend.write_frame(&self.buf[..len]) {
                Ok(_) => {
                    stats.tx_frames += 1;
                    stats.tx_bytes += len as u64;
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    stats.tx_blocked += 1;
                    return false;
                }
                Err(e) => {
                    stats.tx_errors += 1;
                    log::debug!("{name}: the TAP refused a {len}-byte frame: {e}");
                    return true;
                }
            }
        }
    }

    /// Sends what the guest queued, the waiting frame first, as far as `limiter` lets it.
    pub fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        backend: &mut dyn Backend,
        limiter: &mut RateLimiter,
        stats: &mut NetStats,
        name: &str,
    ) -> TxPass {
        let mut pass = TxPass::default();
        if let Some((head, len)) = self.pending {
            if !self.send(backend, len, stats, name) {
                pass.blocked = true;
                return pass;
            }
            self.pending = None;
            if queue.add_used(mem, head, 0).is_err() {
                pass.broken = true;
                return pass;
            }
            pass.used = true;
        }
        loop {
            if queue.event_idx_enabled() && queue.disable_notification(mem).is_err() {
                pass.broken = true;
                return pass;
            }
            loop {
                let chain = match pop_chain(queue, mem) {
                    Ok(Some(chain)) => chain,
                    Ok(None) => break,
                    Err(_) => {
                        pass.broken = true;
                        return pass;
                    }
                };
                let head = chain.head_index();
                match gather_tx(mem, chain, &mut self.buf) {
                    Ok(len) => {
                        if !limiter.consume(len as u64) {
                            // The chain goes back to the ring; the limiter's timer wakes us.
                            queue.go_to_previous_position();
                            pass.throttled = true;
                            return pass;
                        }
                        if !self.send(backend, len, stats, name) {
                            self.pending = Some((head, len));
                            pass.blocked = true;
                            return pass;
                        }
                    }
                    Err(e) => {
                        stats.tx_malformed += 1;
                        log_drop(name, "TX", &e, stats, &mut self.warned);
                    }
                }
                if queue.add_used(mem, head, 0).is_err() {
                    pass.broken = true;
                    return pass;
                }
                pass.used = true;
            }
            if !queue.event_idx_enabled() {
                return pass;
            }
            match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return pass,
                Err(_) => {
                    pass.broken = true;
                    return pass;
                }
            }
        }
    }
}

/// What one pass over the RX side did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxPass {
    /// Chains went to the used ring (the guest may need an interrupt).
    pub used: bool,
    /// Keep polling the backend: it may have more frames, and the guest has room.
    pub wants_backend: bool,
    /// The backend failed for good (the TAP went away); stop polling it.
    pub backend_failed: bool,
    /// The guest corrupted the queue; stop using it until reset.
    pub broken: bool,
    /// The rate limiter said wait: a frame waits until its timer fires.
    pub throttled: bool,
}

enum Delivery {
    Delivered,
    Dropped,
    NoBuffers,
    Broken,
}

/// The RX side: the frame buffer and the length of the one frame waiting for a guest buffer.
pub struct Rx {
    buf: Vec<u8>,
    pending: Option<usize>,
    warned: bool,
}

impl Default for Rx {
    fn default() -> Self {
        Rx {
            buf: vec![0; MAX_BUFFER_LEN],
            pending: None,
            warned: false,
        }
    }
}

impl Rx {
    /// Whether a frame waits for a guest buffer.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    fn deliver(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        len: usize,
        stats: &mut NetStats,
        pass: &mut RxPass,
        name: &str,
    ) -> Delivery {
        loop {
            let Ok(next) = pop_chain(queue, mem) else {
                return Delivery::Broken;
            };
            let Some(chain) = next else {
                // With EVENT_IDX the driver kicks only when asked to: ask, then look again in
                // case buffers arrived in between.
                if queue.event_idx_enabled() {
                    match queue.enable_notification(mem) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(_) => return Delivery::Broken,
                    }
                }
                stats.rx_no_buffers += 1;
                return Delivery::NoBuffers;
            };
            let head = chain.head_index();
            match scatter_rx(mem, chain, &self.buf[..len]) {
                Ok(n) => {
                    if queue.add_used(mem, head, n as u32).is_err() {
                        return Delivery::Broken;
                    }
                    pass.used = true;
                    stats.rx_frames += 1;
                    stats.rx_bytes += n as u64;
                    return Delivery::Delivered;
                }
                Err(RxTxError::TooSmall { frame, room }) => {
                    // A sane buffer, just too small: keep it for the next frame.
                    queue.go_to_previous_position();
                    stats.rx_dropped += 1;
                    log::debug!(
                        "{name}: dropped a {frame}-byte frame: the guest's buffer has {room} bytes"
                    );
                    return Delivery::Dropped;
                }
                Err(e) => {
                    stats.rx_malformed += 1;
                    log_drop(name, "RX", &e, stats, &mut self.warned);
                    if queue.add_used(mem, head, 0).is_err() {
                        return Delivery::Broken;
                    }
                    pass.used = true;
                }
            }
        }
    }

    /// Moves frames from the backend into guest buffers, the waiting frame first. Stops when
    /// the backend is empty, when the guest has no buffer (the frame then waits and the backend
    /// should not be polled until the guest posts buffers), when `limiter` says wait (the
    /// frame waits for its timer), or after `RX_BUDGET` frames.
    pub fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        backend: &mut dyn Backend,
        limiter: &mut RateLimiter,
        stats: &mut NetStats,
        name: &str,
    ) -> RxPass {
        let mut pass = RxPass::default();
        for _ in 0..RX_BUDGET {
            let len = match self.pending {
                Some(len) => len,
                None => match backend.read_frame(&mut self.buf) {
                    Ok(n) if n < VNET_HDR_LEN => {
                        stats.rx_dropped += 1;
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        pass.wants_backend = true;
                        return pass;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("{name}: reading the TAP failed, receive stops: {e}");
                        pass.backend_failed = true;
                        return pass;
                    }
                },
            };
            set_num_buffers(&mut self.buf[..len], 1);
            self.pending = Some(len);
            if !limiter.consume(len as u64) {
                pass.throttled = true;
                return pass;
            }
            match self.deliver(mem, queue, len, stats, &mut pass, name) {
                Delivery::Delivered | Delivery::Dropped => self.pending = None,
                Delivery::NoBuffers => {
                    limiter.give_back(len as u64);
                    return pass;
                }
                Delivery::Broken => {
                    pass.broken = true;
                    return pass;
                }
            }
        }
        pass.wants_backend = true;
        pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{desc, memory, post, used};
    use std::collections::VecDeque;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    const BUF: u64 = 0x10_0000;

    fn unlimited() -> RateLimiter {
        RateLimiter::new("test", None).expect("timerfd")
    }
    const W: u16 = VRING_DESC_F_WRITE as u16;

    /// A backend that records writes and hands out queued frames.
    #[derive(Default)]
    struct Fake {
        written: Vec<Vec<u8>>,
        incoming: VecDeque<Vec<u8>>,
        reads: usize,
        write_blocked: bool,
    }

    impl Backend for Fake {
        fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            let frame = self
                .incoming
                .pop_front()
                .ok_or_else(|| std::io::Error::from(ErrorKind::WouldBlock))?;
            buf[..frame.len()].copy_from_slice(&frame);
            Ok(frame.len())
        }
        fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.write_blocked {
                return Err(ErrorKind::WouldBlock.into());
            }
            self.written.push(buf.to_vec());
            Ok(buf.len())
        }
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn test_tx_frame_split_over_three_descriptors_is_sent_whole() {
        let mem = memory();
        let data = frame(12 + 100, 1);
        mem.write_slice(&data, GuestAddress(BUF)).expect("write");
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(
            &mq,
            0,
            &[
                desc(BUF, 12, 0),
                desc(BUF + 12, 50, 0),
                desc(BUF + 62, 50, 0),
            ],
        );
        let (mut tx, mut be, mut st) = (Tx::default(), Fake::default(), NetStats::default());

        let pass = tx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert_eq!(be.written, vec![data]);
        assert!(pass.used && !pass.blocked && !pass.broken);
        assert_eq!(mq.used().idx().load(), 1);
        assert_eq!(used(&mq, 0), (0, 0));
        assert_eq!((st.tx_frames, st.tx_bytes), (1, 112));
    }

    #[test]
    fn test_tx_chain_shorter_than_header_is_dropped_and_counted() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 8, 0)]);
        post(&mq, 1, &[desc(BUF, 12, 0), desc(BUF + 12, 20, 0)]);
        let (mut tx, mut be, mut st) = (Tx::default(), Fake::default(), NetStats::default());

        tx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert_eq!(st.tx_malformed, 1);
        assert_eq!(be.written.len(), 1, "the next good frame still goes out");
        assert_eq!(be.written[0].len(), 32);
        assert_eq!(mq.used().idx().load(), 2);
    }

    #[test]
    fn test_tx_descriptor_outside_memory_is_dropped_and_counted() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 12, 0), desc(0x40_0000_0000, 64, 0)]);
        let (mut tx, mut be, mut st) = (Tx::default(), Fake::default(), NetStats::default());

        let pass = tx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert_eq!(st.tx_malformed, 1);
        assert!(be.written.is_empty());
        assert!(pass.used, "the chain is returned to the guest");
        assert_eq!(used(&mq, 0), (0, 0));
    }

    #[test]
    fn test_tx_frame_over_64k_is_dropped_and_counted() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 12, 0), desc(BUF + 12, 70_000, 0)]);
        let (mut tx, mut be, mut st) = (Tx::default(), Fake::default(), NetStats::default());

        tx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert_eq!(st.tx_malformed, 1);
        assert!(be.written.is_empty());
    }

    #[test]
    fn test_tx_writable_descriptor_is_dropped_and_counted() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 12, 0), desc(BUF + 12, 20, W)]);
        let (mut tx, mut be, mut st) = (Tx::default(), Fake::default(), NetStats::default());

        tx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert_eq!(st.tx_malformed, 1);
        assert!(be.written.is_empty());
    }

    #[test]
    fn test_tx_would_block_keeps_chain_until_writable() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 40, 0)]);
        post(&mq, 1, &[desc(BUF, 50, 0)]);
        let (mut tx, mut st) = (Tx::default(), NetStats::default());
        let mut be = Fake {
            write_blocked: true,
            ..Fake::default()
        };

        let pass = tx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");
        assert!(pass.blocked && !pass.used);
        assert!(tx.is_blocked());
        assert_eq!(mq.used().idx().load(), 0, "nothing completed while blocked");

        be.write_blocked = false;
        let pass = tx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert!(!pass.blocked && pass.used);
        assert_eq!(
            be.written.iter().map(Vec::len).collect::<Vec<_>>(),
            [40, 50]
        );
        assert_eq!(mq.used().idx().load(), 2);
        assert_eq!((st.tx_blocked, st.tx_frames), (1, 2));
    }

    #[test]
    fn test_tx_indirect_chain_is_followed() {
        let mem = memory();
        let data = frame(12 + 20, 9);
        mem.write_slice(&data, GuestAddress(BUF)).expect("write");
        let table = BUF + 0x8000;
        let entries = [
            SplitDescriptor::new(BUF, 12, VRING_DESC_F_NEXT as u16, 1),
            SplitDescriptor::new(BUF + 12, 20, 0, 0),
        ];
        for (i, d) in entries.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(table + 16 * i as u64))
                .expect("indirect entry");
        }
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        let indirect = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
        post(&mq, 0, &[desc(table, 32, indirect)]);
        let (mut tx, mut be, mut st) = (Tx::default(), Fake::default(), NetStats::default());

        tx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert_eq!(be.written, vec![data]);
        assert_eq!(mq.used().idx().load(), 1);
    }

    fn one_frame_per_bucket() -> RateLimiter {
        RateLimiter::new("test", Some(&one_frame_config())).expect("timerfd")
    }

    fn one_frame_config() -> crate::config::rate_limiter::RateLimiterConfig {
        crate::config::rate_limiter::RateLimiterConfig {
            bandwidth: None,
            ops: Some(crate::config::rate_limiter::TokenBucketConfig {
                size: 1,
                one_time_burst: None,
                refill_time: 3_600_000,
            }),
        }
    }

    #[test]
    fn test_tx_throttled_chain_stays_in_the_ring_until_the_limiter_allows() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 12 + 60, 0)]);
        post(&mq, 1, &[desc(BUF + 0x1000, 12 + 60, 0)]);
        let (mut tx, mut be, mut st) = (Tx::default(), Fake::default(), NetStats::default());
        let mut limiter = one_frame_per_bucket();

        let pass = tx.process(&mem, &mut q, &mut be, &mut limiter, &mut st, "t");

        assert!(pass.used && pass.throttled && !pass.blocked);
        assert_eq!((be.written.len(), mq.used().idx().load()), (1, 1));
        assert_eq!(q.next_avail(), 1, "the second chain was given back");
        assert!(limiter.is_blocked());
        limiter.update(&one_frame_config());
        let pass = tx.process(&mem, &mut q, &mut be, &mut limiter, &mut st, "t");
        assert!(pass.used && !pass.throttled, "a full bucket of one again");
        assert_eq!((be.written.len(), mq.used().idx().load()), (2, 2));
    }

    #[test]
    fn test_rx_throttled_frame_waits_and_the_tap_is_not_read() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 2048, W)]);
        post(&mq, 1, &[desc(BUF + 0x1000, 2048, W)]);
        let mut be = Fake::default();
        for seed in 0..3 {
            be.incoming.push_back(frame(40, seed));
        }
        let (mut rx, mut st) = (Rx::default(), NetStats::default());
        let mut limiter = one_frame_per_bucket();

        let pass = rx.process(&mem, &mut q, &mut be, &mut limiter, &mut st, "t");

        assert!(pass.used && pass.throttled && !pass.wants_backend);
        assert_eq!(
            (st.rx_frames, be.reads),
            (1, 2),
            "one delivered, one waiting"
        );
        assert!(rx.has_pending());
        let pass = rx.process(&mem, &mut q, &mut be, &mut limiter, &mut st, "t");
        assert!(pass.throttled && !pass.used);
        assert_eq!(be.reads, 2, "nothing more is read while throttled");
    }

    #[test]
    fn test_rx_frame_lands_in_chain_with_num_buffers_one() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 12, W), desc(BUF + 12, 2000, W)]);
        let mut data = frame(12 + 60, 3);
        let mut be = Fake::default();
        be.incoming.push_back(data.clone());
        let (mut rx, mut st) = (Rx::default(), NetStats::default());

        let pass = rx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert!(pass.used && pass.wants_backend);
        assert_eq!(used(&mq, 0), (0, 72));
        let mut got = vec![0u8; 72];
        mem.read_slice(&mut got, GuestAddress(BUF)).expect("read");
        set_num_buffers(&mut data, 1);
        assert_eq!(got, data);
        assert_eq!((st.rx_frames, st.rx_bytes), (1, 72));
    }

    #[test]
    fn test_rx_without_buffers_keeps_one_frame_and_stops_reading() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        let mut be = Fake::default();
        be.incoming.push_back(frame(40, 1));
        be.incoming.push_back(frame(50, 2));
        let (mut rx, mut st) = (Rx::default(), NetStats::default());

        let pass = rx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");
        assert!(!pass.wants_backend && !pass.used);
        assert!(rx.has_pending());
        assert_eq!(be.reads, 1, "only one frame is taken from the TAP");
        let pass = rx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");
        assert!(!pass.wants_backend);
        assert_eq!(be.reads, 1, "a waiting frame is not joined by another");

        post(&mq, 0, &[desc(BUF, 2048, W)]);
        post(&mq, 1, &[desc(BUF + 4096, 2048, W)]);
        let pass = rx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert!(pass.used && pass.wants_backend && !rx.has_pending());
        assert_eq!(used(&mq, 0), (0, 40));
        assert_eq!(used(&mq, 1), (1, 50));
        assert_eq!(st.rx_no_buffers, 2);
    }

    #[test]
    fn test_rx_malformed_chain_is_returned_empty_and_frame_goes_to_next() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 2048, 0)]);
        post(&mq, 1, &[desc(0x40_0000_0000, 2048, W)]);
        post(&mq, 2, &[desc(BUF, 8, W)]);
        post(&mq, 3, &[desc(BUF, 2048, W)]);
        let mut be = Fake::default();
        be.incoming.push_back(frame(40, 1));
        let (mut rx, mut st) = (Rx::default(), NetStats::default());

        rx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert_eq!(st.rx_malformed, 3);
        assert_eq!(used(&mq, 0), (0, 0));
        assert_eq!(used(&mq, 1), (1, 0));
        assert_eq!(used(&mq, 2), (2, 0));
        assert_eq!(used(&mq, 3), (3, 40));
        assert_eq!(st.rx_frames, 1);
    }

    #[test]
    fn test_rx_frame_too_big_for_buffer_is_dropped_and_buffer_kept() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 100, W)]);
        let mut be = Fake::default();
        be.incoming.push_back(frame(500, 1));
        be.incoming.push_back(frame(60, 2));
        let (mut rx, mut st) = (Rx::default(), NetStats::default());

        rx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert_eq!(st.rx_dropped, 1);
        assert_eq!(mq.used().idx().load(), 1);
        assert_eq!(used(&mq, 0), (0, 60));
    }

    #[test]
    fn test_rx_short_frame_from_backend_is_dropped() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 100, W)]);
        let mut be = Fake::default();
        be.incoming.push_back(frame(5, 1));
        let (mut rx, mut st) = (Rx::default(), NetStats::default());

        let pass = rx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert_eq!(st.rx_dropped, 1);
        assert!(!pass.used && pass.wants_backend);
    }

    #[test]
    fn test_rx_budget_bounds_one_pass() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().expect("queue");
        post(&mq, 0, &[desc(BUF, 100, W)]);
        let mut be = Fake::default();
        for _ in 0..RX_BUDGET + 5 {
            be.incoming.push_back(frame(500, 1));
        }
        let (mut rx, mut st) = (Rx::default(), NetStats::default());

        let pass = rx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert!(pass.wants_backend);
        assert_eq!(st.rx_dropped, RX_BUDGET as u64);
        assert_eq!(be.incoming.len(), 5);
    }

    /// A queue with EVENT_IDX whose avail index the guest moved more than the queue size ahead.
    fn corrupted_event_idx_queue(mq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Queue {
        let mut q: Queue = mq.create_queue().expect("queue");
        q.set_event_idx(true);
        mq.avail().idx().store(17);
        q
    }

    #[test]
    fn test_tx_avail_index_beyond_queue_size_breaks_queue_without_spinning() {
        // Regression (net_frames fuzz target): this spun forever in the EVENT_IDX loop.
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q = corrupted_event_idx_queue(&mq);
        let (mut tx, mut be, mut st) = (Tx::default(), Fake::default(), NetStats::default());

        let pass = tx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert!(pass.broken && !pass.used);
        assert!(be.written.is_empty());
    }

    #[test]
    fn test_rx_avail_index_beyond_queue_size_breaks_queue_without_spinning() {
        // Regression (net_frames fuzz target): this spun forever in the EVENT_IDX loop.
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q = corrupted_event_idx_queue(&mq);
        let mut be = Fake::default();
        be.incoming.push_back(frame(40, 1));
        let (mut rx, mut st) = (Rx::default(), NetStats::default());

        let pass = rx.process(&mem, &mut q, &mut be, &mut unlimited(), &mut st, "t");

        assert!(pass.broken && !pass.used);
    }

    #[test]
    fn test_scatter_rx_rejects_read_only_chain() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let chain = mq.build_desc_chain(&[desc(BUF, 64, 0)]).expect("chain");
        assert_eq!(
            scatter_rx(&mem, chain, &[0u8; 20]),
            Err(RxTxError::ReadOnly)
        );
    }
}
