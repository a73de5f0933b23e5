//! Emulated devices and the buses that route guest accesses to them.

pub mod acpi;
pub mod bus;
pub mod legacy;
pub mod rate_limiter;
pub mod state;
pub mod virtio;
