//! The Intel MultiProcessor Specification table: how a kernel without ACPI learns its CPUs, the
//! I/O APIC and how legacy IRQs are wired.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_PINS, IOAPIC_START};

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for 8-bit APIC ids.
    #[error("{0} vCPUs do not fit in the MP table (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    /// The table could not be written.
    #[error("Failed to write the MP table into guest memory")]
    Write,
}

/// Most CPUs the table describes: APIC ids are 8 bits and the I/O APIC takes the next id.
pub const MAX_CPUS: u8 = 254;

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// CPU signature/feature words in processor entries: family 6, FPU and APIC present.
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const FLOATING_POINTER_SIZE: usize = 16;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP floating pointer followed by the configuration table, as bytes to place at `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let table_addr = base + FLOATING_POINTER_SIZE as u64;
    let ioapic_id = num_cpus;

    let mut entries = Vec::new();
    for cpu in 0..num_cpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION]);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for irq in 0..IOAPIC_PINS as u8 {
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[MPC_SPEC, 0]);
    table.extend_from_slice(b"EMBER   ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&[0u8; 4]); // OEM table pointer
    table.extend_from_slice(&[0u8; 2]); // OEM table size
    let count = u16::from(num_cpus) + 1 + 1 + IOAPIC_PINS as u16 + 2;
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0u8; 4]);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(FLOATING_POINTER_SIZE + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `num_cpus` CPUs at the start of the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|_| MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn test_mptable_checksums_are_zero() {
        let bytes = build(4, EBDA_START).expect("table");
        assert_eq!(sum(&bytes[..16]), 0);
        let len = u16::from_le_bytes([bytes[20], bytes[21]]) as usize;
        assert_eq!(sum(&bytes[16..16 + len]), 0);
        assert_eq!(bytes.len(), 16 + len);
    }

    #[test]
    fn test_mptable_pointer_points_at_table() {
        let bytes = build(1, EBDA_START).expect("table");
        assert_eq!(&bytes[..4], b"_MP_");
        let ptr = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        assert_eq!(u64::from(ptr), EBDA_START + 16);
        assert_eq!(&bytes[16..20], b"PCMP");
    }

    #[test]
    fn test_mptable_one_processor_entry_per_cpu_first_is_bsp() {
        let bytes = build(3, EBDA_START).expect("table");
        let procs: Vec<&[u8]> = (0..3).map(|i| &bytes[60 + 20 * i..80 + 20 * i]).collect();
        for (i, p) in procs.iter().enumerate() {
            assert_eq!(p[0], ENTRY_PROCESSOR);
            assert_eq!(p[1] as usize, i);
            assert_ne!(p[3] & CPU_ENABLED, 0);
        }
        assert_ne!(procs[0][3] & CPU_BSP, 0);
        assert_eq!(procs[1][3] & CPU_BSP, 0);
        let count = u16::from_le_bytes([bytes[16 + 34], bytes[16 + 35]]);
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
    }

    #[test]
    fn test_mptable_zero_or_too_many_cpus_is_error() {
        assert!(build(0, EBDA_START).is_err());
        assert!(build(255, EBDA_START).is_err());
    }
}
