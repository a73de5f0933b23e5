//! Saved state of the virtio-mmio transport and of virtqueues: plain serializable structs. A
//! queue is virtio-queue's `QueueState` (only validated values come back through
//! `Queue::try_from`); the transport keeps the registers the driver wrote.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

/// virtio-queue's `QueueState`, field by field, for serde's remote derive.
#[derive(Serialize, Deserialize)]
#[serde(remote = "QueueState")]
struct QueueStateDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// One virtqueue: sizes, ring addresses, and where the device is in the rings (virtio-queue's
/// `QueueState`, serializable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot(#[serde(with = "QueueStateDef")] pub QueueState);

/// The virtio-mmio register file of one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// Layout version (`TransportState::VERSION`).
    pub version: u16,
    /// The Status register.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Every queue; once the device is activated, as the device uses it (its ring positions).
    pub queues: Vec<QueueSnapshot>,
    /// Queues the driver gave a size the device cannot use.
    pub bad_size: Vec<bool>,
    /// The InterruptStatus register.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The device was activated (DRIVER_OK accepted).
    pub activated: bool,
}

impl TransportState {
    /// The layout this build writes and reads.
    pub const VERSION: u16 = 1;
}
