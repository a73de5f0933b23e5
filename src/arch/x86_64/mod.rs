//! x86_64 boot: the guest memory map and the structures a kernel expects to find at entry.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod kernel;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

use layout::{
    ACPI_TABLES_SIZE, ACPI_TABLES_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START,
};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the memory map handed to the guest (e820 and PVH share it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest-physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The guest RAM regions for `mem_size` bytes of memory: one region below the 32-bit MMIO gap
/// and, when the memory does not fit there, a second one from 4 GiB up.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// End of the RAM below the MMIO gap (exclusive).
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The memory map the guest sees: low RAM up to the EBDA, the MP table area and the ACPI table
/// area reserved, RAM from 1 MiB to the MMIO gap (or the end of memory) and RAM above 4 GiB when
/// there is any.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: layout::LOW_RAM_END - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: ACPI_TABLES_START,
            size: ACPI_TABLES_SIZE,
            kind: E820_RESERVED,
        },
    ];
    let low_end = low_ram_end(mem_size);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn test_ram_regions_small_memory_is_one_region() {
        assert_eq!(ram_regions(128 * MIB), vec![(0, 128 * MIB)]);
    }

    #[test]
    fn test_ram_regions_large_memory_splits_around_gap() {
        let regions = ram_regions(5 * GIB);
        assert_eq!(regions, vec![(0, 3 * GIB), (4 * GIB, 2 * GIB)]);
    }

    #[test]
    fn test_ram_regions_exactly_gap_start_is_one_region() {
        assert_eq!(ram_regions(3 * GIB), vec![(0, 3 * GIB)]);
    }

    #[test]
    fn test_e820_map_small_memory_covers_all_ram() {
        let map = e820_map(128 * MIB);
        assert_eq!(map.len(), 4);
        assert_eq!(map[3].addr, HIMEM_START);
        assert_eq!(map[3].addr + map[3].size, 128 * MIB);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 128 * MIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn test_e820_map_large_memory_has_high_entry() {
        let map = e820_map(6 * GIB);
        let last = map.last().expect("map is never empty");
        assert_eq!(last.addr, 4 * GIB);
        assert_eq!(last.size, 3 * GIB);
        assert_eq!(map[3].addr + map[3].size, MMIO_GAP_START);
    }

    #[test]
    fn test_e820_map_reserves_acpi_area() {
        let map = e820_map(128 * MIB);
        assert!(map.contains(&E820Entry {
            addr: ACPI_TABLES_START,
            size: ACPI_TABLES_SIZE,
            kind: E820_RESERVED,
        }));
        assert_eq!(ACPI_TABLES_START + ACPI_TABLES_SIZE, HIMEM_START);
    }

    #[test]
    fn test_e820_map_entries_never_overlap_gap() {
        for entry in e820_map(8 * GIB) {
            let end = entry.addr + entry.size;
            assert!(end <= MMIO_GAP_START || entry.addr >= MMIO_GAP_END);
        }
    }
}
