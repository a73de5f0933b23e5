//! Saved state of an entropy device: its id and whether the guest broke its queue (the queue
//! itself is saved with the transport).

use serde::{Deserialize, Serialize};

use super::Rng;
use crate::devices::state::{StateError, check_version};

/// The guest-visible state of one virtio-rng device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Layout version (`RngState::VERSION`).
    pub version: u16,
    /// The device id.
    pub id: String,
    /// The guest corrupted its queue; nothing is served until it resets the device.
    pub broken: bool,
}

impl RngState {
    /// The layout this build writes and reads.
    pub const VERSION: u16 = 1;
}

impl Rng {
    /// The device's guest-visible state.
    pub fn save(&self) -> RngState {
        RngState {
            version: RngState::VERSION,
            id: self.id.clone(),
            broken: self.broken,
        }
    }

    /// Applies `state` to this device, built from the same configuration.
    pub fn restore(&mut self, state: &RngState) -> Result<(), StateError> {
        check_version("virtio-rng", state.version, RngState::VERSION)?;
        if state.id != self.id {
            return Err(StateError::Mismatch {
                what: format!("entropy device {}", self.id),
                field: "the id",
            });
        }
        self.broken = state.broken;
        Ok(())
    }
}
