//! Where each virtio-mmio device lives: its interrupt line and register window, from
//! vm-allocator's allocators with every fixed legacy line reserved. A device gets its slot when it
//! is attached to the device manager; nothing computes a line or an address from an index.

use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};

use crate::arch::layout::{
    IOAPIC_PINS, LEGACY_IRQS, MMIO_DEVICE_WINDOW, MMIO_DEVICES_SIZE, MMIO_DEVICES_START,
};

/// Most virtio-mmio devices one VM can have: one per I/O APIC pin without a legacy owner.
pub const MAX_VIRTIO_DEVICES: usize = IOAPIC_PINS as usize - LEGACY_IRQS.len();

/// The resources of one virtio-mmio device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Base of its register window (`MMIO_DEVICE_WINDOW` bytes).
    pub base: u64,
    /// Its interrupt line (I/O APIC pin and GSI), raised as an edge through an irqfd.
    pub irq: u32,
}

/// Interrupt lines and MMIO windows still free.
pub struct ResourceAllocator {
    irqs: IdAllocator,
    mmio: AddressAllocator,
}

impl Default for ResourceAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceAllocator {
    /// Every I/O APIC pin but the legacy ones, and the virtio window area.
    pub fn new() -> Self {
        let last_pin = IOAPIC_PINS - 1;
        let mut irqs = IdAllocator::new(0, last_pin).expect("0..=23 is a valid range");
        // IdAllocator hands out ids in order, reuses freed ones first (lowest first), and has no
        // call to reserve one id: take every line up to the highest legacy one, then give back
        // those without a legacy owner.
        let highest_legacy = LEGACY_IRQS.into_iter().max().unwrap_or(0);
        for _ in 0..=highest_legacy {
            irqs.allocate_id()
                .expect("the legacy lines are below the pin count");
        }
        for line in (0..=highest_legacy).filter(|l| !LEGACY_IRQS.contains(l)) {
            irqs.free_id(line).expect("the line was just allocated");
        }
        let mmio = AddressAllocator::new(MMIO_DEVICES_START, MMIO_DEVICES_SIZE)
            .expect("the virtio window area is a valid range");
        ResourceAllocator { irqs, mmio }
    }

    /// The next free line and window; `None` when either has run out.
    pub fn allocate_virtio(&mut self) -> Option<VirtioSlot> {
        let irq = self.irqs.allocate_id().ok()?;
        let window = self
            .mmio
            .allocate(
                MMIO_DEVICE_WINDOW,
                MMIO_DEVICE_WINDOW,
                AllocPolicy::FirstMatch,
            )
            .ok()?;
        Some(VirtioSlot {
            base: window.start(),
            irq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::{ACPI_SCI_IRQ, SERIAL_IRQ};

    /// The slots of `count` devices, in order; `None` past `MAX_VIRTIO_DEVICES`.
    fn allocate_virtio_slots(count: usize) -> Option<Vec<VirtioSlot>> {
        let mut allocator = ResourceAllocator::new();
        (0..count).map(|_| allocator.allocate_virtio()).collect()
    }

    #[test]
    fn test_virtio_slots_for_eight_devices_skip_every_legacy_line() {
        let slots = allocate_virtio_slots(8).expect("8 devices fit");
        let irqs: Vec<u32> = slots.iter().map(|s| s.irq).collect();
        assert_eq!(irqs, [5, 6, 7, 10, 11, 13, 14, 15]);
        assert!(!irqs.contains(&u32::from(ACPI_SCI_IRQ)));
        assert!(!irqs.contains(&SERIAL_IRQ));
        let bases: Vec<u64> = slots.iter().map(|s| s.base).collect();
        assert_eq!(bases[0], MMIO_DEVICES_START);
        assert!(bases.windows(2).all(|w| w[1] >= w[0] + MMIO_DEVICE_WINDOW));
    }

    #[test]
    fn test_virtio_slots_run_out_after_the_free_lines() {
        let all = allocate_virtio_slots(MAX_VIRTIO_DEVICES).expect("the maximum fits");
        assert_eq!(all.len(), 16);
        assert!(all.iter().all(|s| !LEGACY_IRQS.contains(&s.irq)));
        assert_eq!(all.last().map(|s| s.irq), Some(IOAPIC_PINS - 1));
        assert_eq!(allocate_virtio_slots(MAX_VIRTIO_DEVICES + 1), None);
    }
}
