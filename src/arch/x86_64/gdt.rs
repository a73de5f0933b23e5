//! The boot GDT and the conversion of its descriptors into KVM segment registers.

use kvm_bindings::kvm_segment;

/// Builds a segment descriptor from its flags (access byte in bits 0..8, flags nibble in bits
/// 12..16), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Index of the code segment in the boot GDT (selector 0x08).
pub const CODE_INDEX: u8 = 1;
/// Index of the data segment in the boot GDT (selector 0x10).
pub const DATA_INDEX: u8 = 2;
/// Index of the TSS in the boot GDT (selector 0x18).
pub const TSS_INDEX: u8 = 3;

/// GDT for the 64-bit Linux boot protocol: null, 64-bit code, data, TSS.
pub const LONG_MODE_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// GDT for PVH entry (32-bit protected mode): null, 32-bit flat code, flat data, TSS.
pub const PROTECTED_MODE_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

fn base(entry: u64) -> u64 {
    (((entry) & 0xff00_0000_0000_0000) >> 32)
        | (((entry) & 0x0000_00ff_0000_0000) >> 16)
        | (((entry) & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = ((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff);
    // With the granularity bit set the limit counts 4 KiB pages.
    if entry & (1 << 55) != 0 {
        ((raw << 12) | 0xfff) as u32
    } else {
        raw as u32
    }
}

fn bit(entry: u64, shift: u32) -> u8 {
    ((entry >> shift) & 1) as u8
}

/// The KVM segment register loaded from descriptor `entry` at GDT `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(entry, 47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(bit(entry, 47) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_gdt_entry_long_mode_code_has_l_bit() {
        let seg = segment_from_gdt(LONG_MODE_GDT[1], CODE_INDEX);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.db, 0);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.selector, 0x08);
        assert_eq!(seg.type_, 0xb);
    }

    #[test]
    fn test_gdt_entry_flat_data_covers_4g() {
        let seg = segment_from_gdt(PROTECTED_MODE_GDT[2], DATA_INDEX);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.g, 1);
        assert_eq!(seg.db, 1);
        assert_eq!(seg.selector, 0x10);
    }

    #[test]
    fn test_gdt_entry_roundtrips_base_and_limit() {
        let entry = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let seg = segment_from_gdt(entry, 5);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde);
        assert_eq!(seg.g, 0);
    }

    #[test]
    fn test_gdt_null_entry_is_unusable() {
        let seg = segment_from_gdt(LONG_MODE_GDT[0], 0);
        assert_eq!(seg.present, 0);
        assert_eq!(seg.unusable, 1);
    }
}
