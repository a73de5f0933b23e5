//! Virtio devices: the device trait every device implements, the interrupt they raise, and the
//! virtio-mmio transport that exposes them to the guest (in `mmio`). Devices never see MMIO
//! offsets; the transport never looks inside a queue.

pub mod block;
pub mod counters;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod state;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use self::counters::DeviceCounters;

/// Feature bit every Ember device offers: the modern (1.x) interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// used_event / avail_event notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// The interrupt line of one transport plus its interrupt status register.
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl VirtioInterrupt {
    /// An interrupt raised by writing `irq` (an irqfd).
    pub fn new(irq: EventFd) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            irq,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            log::error!("Failed to raise a virtio interrupt: {e}");
        }
    }

    /// Tells the driver a used ring changed.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver the configuration space (or device status) changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears everything (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Sets the status register to saved `bits`, raising nothing (a pending interrupt is
    /// restored with the irqchip).
    pub fn restore_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The eventfd that raises the line, to register as the KVM irqfd of its GSI.
    pub fn eventfd(&self) -> &EventFd {
        &self.irq
    }
}

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a queue the device cannot use.
    #[error("Queue {0} is not usable: {1}")]
    BadQueue(usize, String),
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them (size, addresses, ready, event_idx).
    pub queues: Vec<Queue>,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// The transport's interrupt, raised when a used ring changes.
    pub interrupt: Arc<VirtioInterrupt>,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The device's id (the drive or interface id of the configuration).
    fn id(&self) -> &str;
    /// The device's counters, shared: the device publishes, anyone reads.
    fn counters(&self) -> Arc<DeviceCounters>;
    /// Virtio device id (VIRTIO_ID_BLOCK, VIRTIO_ID_NET, ...).
    fn device_type(&self) -> u32;
    /// Features the device offers (VERSION_1 included).
    fn avail_features(&self) -> u64;
    /// Largest size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The eventfds the queue notifications arrive on, one per queue.
    fn queue_events(&self) -> &[EventFd];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored by default).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::warn!(
            "Guest wrote {} bytes to read-only virtio config at offset {offset:#x}; ignored",
            data.len()
        );
    }
    /// Starts the device: the driver set DRIVER_OK.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the device and forgets the queues: the driver wrote 0 to Status.
    fn reset(&mut self);
    /// Stops serving the guest (the VM is pausing): no descriptor is processed and no
    /// interrupt raised until `wake`. Queue notifications that arrive meanwhile are consumed;
    /// nothing is lost, the avail rings keep the requests.
    fn quiesce(&mut self);
    /// Serves the guest again and looks at every queue once, for what it queued meanwhile.
    fn wake(&mut self);
    /// The queues as the device uses them, ring positions included, while it is activated
    /// (`None` before). A chain the device took but has not completed is given back (its
    /// position rewound), so that a device restored from this state takes it again.
    fn active_queues(&self) -> Option<Vec<QueueState>>;
}

/// The guest corrupted a queue: the device stops serving it until the driver resets it.
#[derive(Debug)]
pub struct QueueBroken(pub String);

/// What `serve_chains`' callback did with one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Done: the chain goes to the used ring with this used length.
    Used(u32),
    /// The rate limiter said wait: the chain goes back to the avail ring, the pass stops and
    /// the limiter's timer wakes the device.
    Throttled,
    /// Started: the device puts it in the used ring when it completes.
    InFlight,
}

/// Serves every chain the driver made available on `queue`: `serve` handles one chain and
/// says what became of it (or `None` to stop, the queue broken); a used chain goes to the used
/// ring. With EVENT_IDX the loop re-checks after re-enabling notifications, so a chain posted
/// meanwhile is not missed. Returns whether any chain was used; the caller raises the
/// interrupt when `needs_notification` says so. A throttled pass leaves the rest of the chains
/// where they were (the queue's position rewound to the throttled one).
pub fn serve_chains(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    mut serve: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> Option<Served>,
) -> Result<bool, QueueBroken> {
    let broken = |e: &dyn std::fmt::Display| QueueBroken(e.to_string());
    let mut used_any = false;
    loop {
        if queue.event_idx_enabled() {
            queue.disable_notification(mem).map_err(|e| broken(&e))?;
        }
        let start = queue.next_avail();
        let chains: Vec<_> = queue.iter(mem).map_err(|e| broken(&e))?.collect();
        for (taken, chain) in chains.into_iter().enumerate() {
            let head = chain.head_index();
            match serve(chain).ok_or_else(|| QueueBroken("a request broke the queue".into()))? {
                Served::Used(len) => queue
                    .add_used(mem, head, len)
                    .map_err(|e| broken(&format!("cannot complete request {head}: {e}")))?,
                Served::Throttled => {
                    // `taken` < the ring size, which is at most 32768.
                    queue.set_next_avail(start.wrapping_add(taken as u16));
                    return Ok(used_any);
                }
                Served::InFlight => continue,
            }
            used_any = true;
        }
        if !queue.event_idx_enabled() || !queue.enable_notification(mem).map_err(|e| broken(&e))? {
            return Ok(used_any);
        }
    }
}

/// Bytes in `chain`'s writable (or readable) descriptors: what a request asks for, as rate
/// limiters count it before the request is served (a chain that turns out malformed is
/// refused later, by the device, at no more than this cost).
pub fn chain_len(chain: &DescriptorChain<&GuestMemoryMmap>, writable: bool) -> u64 {
    if writable {
        chain.clone().writable().map(|d| u64::from(d.len())).sum()
    } else {
        chain.clone().readable().map(|d| u64::from(d.len())).sum()
    }
}

/// The one queue of a single-queue device, checked ready (at activation).
pub fn single_queue(queues: Vec<Queue>) -> Result<Queue, ActivateError> {
    let queue = queues
        .into_iter()
        .next()
        .ok_or_else(|| ActivateError::BadQueue(0, "missing".into()))?;
    if !queue.ready() {
        return Err(ActivateError::BadQueue(0, "not ready".into()));
    }
    Ok(queue)
}

/// Copies `data.len()` bytes of `config` at `offset` (zeroes past its end).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn test_interrupt_status_set_and_ack() {
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let irq = VirtioInterrupt::new(evt.try_clone().expect("clone"));
        irq.signal_used_queue();
        irq.signal_config_change();
        assert_eq!(irq.status(), 3);
        assert_eq!(evt.read().expect("irq fired"), 2);
        irq.ack(1);
        assert_eq!(irq.status(), 2);
    }

    #[test]
    fn test_read_config_bytes_past_end_is_zero() {
        let mut data = [0xffu8; 4];
        read_config_bytes(&[1, 2, 3], 1, &mut data);
        assert_eq!(data, [2, 3, 0, 0]);
        read_config_bytes(&[1, 2, 3], u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
