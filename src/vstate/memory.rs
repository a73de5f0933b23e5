//! Guest memory: anonymous private mappings laid out around the 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the mapping.
    #[error("Cannot allocate {mib} MiB of guest memory: {reason}")]
    Allocate {
        /// Requested size.
        mib: u64,
        /// What vm-memory said.
        reason: String,
    },
}

/// Allocates `mem_size` bytes of guest RAM in the regions `arch::ram_regions` gives.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions: Vec<(GuestAddress, usize)> = arch::ram_regions(mem_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&regions).map_err(|e| MemoryError::Allocate {
        mib: mem_size >> 20,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn test_create_guest_memory_splits_above_gap() {
        let mem = create_guest_memory(3 << 30 | 2 << 20).expect("memory");
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress(0x1_0000_0000)));
        assert!(!mem.address_in_range(GuestAddress(0xc000_0000)));
    }
}
