//! Saved state of a vsock device: the guest's CID. Connections are host sockets and are not
//! saved: a restored device owes the guest a TRANSPORT_RESET event (as Firecracker sends), so
//! the guest drops the connections it had.

use serde::{Deserialize, Serialize};

use super::Vsock;
use crate::devices::state::{StateError, check_version};

/// The guest-visible state of one virtio-vsock device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// Layout version (`VsockState::VERSION`).
    pub version: u16,
    /// The device id.
    pub id: String,
    /// The guest's context id.
    pub guest_cid: u64,
}

impl VsockState {
    /// The layout this build writes and reads.
    pub const VERSION: u16 = 1;
}

impl Vsock {
    /// The device's guest-visible state.
    pub fn save(&self) -> VsockState {
        VsockState {
            version: VsockState::VERSION,
            id: self.id.clone(),
            guest_cid: self.guest_cid,
        }
    }

    /// Applies `state` to this device, built from the same configuration; the guest is told
    /// (TRANSPORT_RESET) that its connections are gone.
    pub fn restore(&mut self, state: &VsockState) -> Result<(), StateError> {
        check_version("virtio-vsock", state.version, VsockState::VERSION)?;
        let mismatch = |field| StateError::Mismatch {
            what: format!("vsock {}", self.id),
            field,
        };
        if state.id != self.id {
            return Err(mismatch("the id"));
        }
        if state.guest_cid != self.guest_cid {
            return Err(mismatch("the guest CID"));
        }
        self.transport_reset_owed = true;
        Ok(())
    }
}
