//! Saved state of a disk: what the guest sees of it (config space, offered features, read-only)
//! and whether the guest broke its queue. The backing file comes from the configuration and the
//! queue is saved with the transport (`MmioTransport::save`), so neither is here.

use serde::{Deserialize, Serialize};

use super::Block;
use crate::devices::state::{StateError, check_version};

/// The guest-visible state of one virtio-blk device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Layout version (`BlockState::VERSION`).
    pub version: u16,
    /// The drive id (also the guest's serial number, VIRTIO_BLK_T_GET_ID).
    pub id: String,
    /// The features offered to the guest.
    pub features: u64,
    /// The disk is read-only.
    pub readonly: bool,
    /// The config space (capacity, segment and discard limits).
    pub config: Vec<u8>,
    /// The guest corrupted its queue; nothing is served until it resets the device.
    pub broken: bool,
}

impl BlockState {
    /// The layout this build writes and reads.
    pub const VERSION: u16 = 1;
}

impl Block {
    /// The device's guest-visible state.
    pub fn save(&self) -> BlockState {
        BlockState {
            version: BlockState::VERSION,
            id: self.id.clone(),
            features: self.features,
            readonly: self.disk.readonly(),
            config: self.config.to_vec(),
            broken: self.broken,
        }
    }

    /// Applies `state` to this device, built from the same configuration. The guest must find
    /// the disk it knew: same id, same capacity and limits, same read-only flag, and no feature
    /// this host cannot give (discard on a file system without hole punching).
    pub fn restore(&mut self, state: &BlockState) -> Result<(), StateError> {
        check_version("virtio-blk", state.version, BlockState::VERSION)?;
        let mismatch = |field| StateError::Mismatch {
            what: format!("disk {}", self.id),
            field,
        };
        if state.id != self.id {
            return Err(mismatch("the id"));
        }
        if state.readonly != self.disk.readonly() {
            return Err(mismatch("read-only"));
        }
        if state.config.get(34..36) != self.config.get(34..36) {
            // Snapshots from before num_queues had one queue whatever the vCPU count.
            return Err(mismatch("the number of request queues (num_queues)"));
        }
        if state.config[..] != self.config[..] {
            return Err(mismatch("the config space (capacity)"));
        }
        if state.features & !self.features != 0 {
            return Err(mismatch("the features"));
        }
        self.features = state.features;
        self.broken = state.broken;
        Ok(())
    }
}
