//! Guest memory: anonymous private mappings laid out around the 32-bit MMIO gap, or (for a
//! restore) private copy-on-write mappings of a snapshot's memory file.

use std::fs::File;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

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

/// Maps `file` as guest memory in `regions` (guest address, length), the regions one after
/// the other in the file from offset 0. The mappings are private (`MAP_PRIVATE`): pages are
/// read from the file on first touch and copied on first write, so the file is never changed
/// and several VMs restored from it share the host's page cache.
pub fn map_guest_memory_file(
    file: &File,
    regions: &[(u64, u64)],
) -> Result<GuestMemoryMmap, MemoryError> {
    let total: u64 = regions.iter().map(|r| r.1).sum();
    let fail = |reason: String| MemoryError::Allocate {
        mib: total >> 20,
        reason,
    };
    let mut offset = 0u64;
    let mut mapped = Vec::with_capacity(regions.len());
    for &(start, len) in regions {
        let size = usize::try_from(len).map_err(|_| fail(format!("region of {len} bytes")))?;
        let handle = file
            .try_clone()
            .map_err(|e| fail(format!("cannot duplicate the memory file handle: {e}")))?;
        let region = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::new(handle, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| fail(format!("region at {start:#x} overflows")))?;
        mapped.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| fail(e.to_string()))
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

    #[test]
    fn test_map_guest_memory_file_is_copy_on_write() {
        use std::io::Write;
        use vm_memory::Bytes;
        let path = std::env::temp_dir().join(format!("ember-memfile-{}", std::process::id()));
        let mut file = File::create(&path).expect("create");
        file.write_all(&[0x11u8; 8192]).expect("write");
        file.write_all(&[0x22u8; 4096]).expect("write");
        let file = File::open(&path).expect("open");
        let mem = map_guest_memory_file(&file, &[(0, 8192), (0x10_0000, 4096)]).expect("map");
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x10_0000)).expect("read"),
            0x22
        );
        mem.write_obj(0x33u8, GuestAddress(0)).expect("write");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0)).expect("read"), 0x33);
        let on_disk = std::fs::read(&path).expect("read back");
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(on_disk[0], 0x11, "the file changed");
    }
}
