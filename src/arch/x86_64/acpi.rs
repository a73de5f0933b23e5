//! ACPI tables for an x86_64 microVM, generated with the `acpi_tables` crate: RSDP, XSDT, FADT
//! (PM1a event and control blocks and a reset register on I/O ports), FACS, MADT (local APICs,
//! the I/O APIC, LINT1 as NMI) and a DSDT with one `LNRO0005` device per virtio-mmio transport and
//! the `_S5_` sleep state.
//!
//! Not hardware-reduced ACPI: on x86 a hardware-reduced FADT makes Linux drop the legacy PIC and
//! the PIT (`acpi_reduced_hw_init`), and then it needs the TSC frequency from CPUID leaf 0x15
//! (Intel only) or kvmclock to calibrate its timers. Software-nested (PVM) hosts give neither
//! (Ember hides the KVM leaves there), and such a guest hangs in `calibrate_delay` waiting for a
//! timer tick that never comes. So the FADT describes the fixed PM1 registers instead, with SCI
//! on IRQ 9 and no SMI command port (always in ACPI mode), and the guest keeps the in-kernel PIT.
//!
//! The tables sit in the legacy BIOS area at `ACPI_TABLES_START` (reserved in the e820 map); the
//! kernel learns the RSDP address from the zero page or the PVH start info, and can also find it
//! by scanning 0xe0000-0xfffff. The MP table stays, for kernels without ACPI and for `acpi=off`.

use acpi_tables::Aml;
use acpi_tables::aml::{
    self, Device, EISAName, IO, Interrupt, Memory32Fixed, Name, Package, ResourceTemplate,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_PM1A_CNT_PORT, ACPI_PM1A_EVT_PORT, ACPI_RESET_PORT, ACPI_SCI_IRQ, ACPI_TABLES_SIZE,
    ACPI_TABLES_START, APIC_START, IOAPIC_START, MMIO_DEVICE_WINDOW,
};
use super::mptable::MAX_CPUS;
use crate::devices::acpi::{PM1_CNT_LEN, PM1_EVT_LEN, RESET_VALUE, SLEEP_TYPE_S5};

/// Errors while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// Too many vCPUs for 8-bit APIC ids.
    #[error("{0} vCPUs do not fit in the MADT (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    /// A device window outside the 32-bit space a Memory32Fixed descriptor describes.
    #[error("Virtio-mmio window at {0:#x} is above 4 GiB")]
    WindowAbove4G(u64),
    /// The tables do not fit their area.
    #[error("The ACPI tables need {size:#x} bytes, more than the {ACPI_TABLES_SIZE:#x} reserved")]
    TooLarge {
        /// Bytes needed.
        size: u64,
    },
    /// The tables could not be written.
    #[error("Failed to write the ACPI tables into guest memory")]
    Write,
}

/// OEM id in every table header.
const OEM_ID: [u8; 6] = *b"EMBER ";
/// OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// Table revisions: DSDT 2 gives 64-bit AML integers; MADT revision 5 (ACPI 6.x).
const DSDT_REVISION: u8 = 2;
const MADT_REVISION: u8 = 5;
/// Alignment of each table in the area (the FACS needs 64).
const TABLE_ALIGN: u64 = 64;

/// MADT flags: PCAT_COMPAT, the in-kernel irqchip has the dual 8259.
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LAPIC_ENABLED: u32 = 1;
/// Local APIC NMI entry: every processor (ACPI processor UID 0xff).
const MADT_ALL_PROCESSORS: u8 = 0xff;

/// FADT IA-PC boot architecture flags: no VGA, no MSI, no PCIe ASPM control, no CMOS RTC. The
/// 8042 flag stays clear: Ember has only the i8042's reset line, not a keyboard controller.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5);

/// The `_HID` of a virtio-mmio transport, as Linux's virtio_mmio driver matches it.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// PNP id of a PS/2 keyboard controller (the i8042).
pub const PS2_KEYBOARD_HID: &str = "PNP0303";
/// i8042 data port.
const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
const I8042_COMMAND_PORT: u16 = 0x64;
/// ISA interrupt of the i8042 keyboard.
const I8042_KEYBOARD_IRQ: u32 = 1;

/// One virtio-mmio transport to announce in the DSDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Guest-physical base of the register window (`MMIO_DEVICE_WINDOW` bytes).
    pub base: u64,
    /// Its interrupt line (GSI), raised as an edge through an irqfd.
    pub irq: u32,
}

/// The tables, each with the guest-physical address it belongs at.
#[derive(Debug)]
pub struct AcpiTables {
    /// Where the RSDP is; the zero page and the PVH start info point here.
    pub rsdp_addr: u64,
    /// (address, bytes) of every table, the RSDP first.
    pub tables: Vec<(u64, Vec<u8>)>,
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The `_HID`, `_UID` and `_CRS` of virtio-mmio transport `index`.
fn virtio_device_names(index: usize, dev: &VirtioMmioDevice) -> Result<[Name; 3], AcpiError> {
    let base = u32::try_from(dev.base).map_err(|_| AcpiError::WindowAbove4G(dev.base))?;
    let mem = Memory32Fixed::new(true, base, MMIO_DEVICE_WINDOW as u32);
    // Consumer, edge-triggered, active high, exclusive: an irqfd raises a pulse on the GSI.
    let irq = Interrupt::new(true, true, false, false, dev.irq);
    let uid = index as u32;
    Ok([
        Name::new("_HID".into(), &VIRTIO_MMIO_HID),
        Name::new("_UID".into(), &uid),
        Name::new("_CRS".into(), &ResourceTemplate::new(vec![&mem, &irq])),
    ])
}

/// The DSDT: `\_SB_.VRnn` per virtio-mmio transport and `\_S5_`.
fn build_dsdt(devices: &[VirtioMmioDevice]) -> Result<Vec<u8>, AcpiError> {
    let names = devices
        .iter()
        .enumerate()
        .map(|(index, dev)| virtio_device_names(index, dev))
        .collect::<Result<Vec<_>, _>>()?;
    let aml_devices: Vec<Device> = names
        .iter()
        .enumerate()
        .map(|(index, names)| {
            let children = names.iter().map(|n| n as &dyn Aml).collect();
            Device::new(format!("VR{index:02X}").as_str().into(), children)
        })
        .collect();
    // The i8042 keyboard controller: ACPI kernels find it through PNP0303 (without it Linux's
    // i8042 driver reports "PNP: No PS/2 controller found" and Ctrl-Alt-Del has no keyboard).
    let kbd_hid = EISAName::new(PS2_KEYBOARD_HID);
    let kbd_data = IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let kbd_cmd = IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1);
    let kbd_irq = Interrupt::new(true, true, false, false, I8042_KEYBOARD_IRQ);
    let kbd_crs = ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]);
    let kbd_names = [
        Name::new("_HID".into(), &kbd_hid),
        Name::new("_CRS".into(), &kbd_crs),
    ];
    let kbd = Device::new(
        "PS2K".into(),
        kbd_names.iter().map(|n| n as &dyn Aml).collect(),
    );
    let mut body = Vec::new();
    let mut children: Vec<&dyn Aml> = vec![&kbd];
    children.extend(aml_devices.iter().map(|d| d as &dyn Aml));
    aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);
    // _S5_: SLP_TYPa, SLP_TYPb, reserved, reserved.
    let s5 = SLEEP_TYPE_S5;
    Name::new("_S5_".into(), &Package::new(vec![&s5, &s5, &0u8, &0u8])).to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        *b"EMBRDSDT",
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    Ok(dsdt.as_slice().to_vec())
}

/// The FADT: PM1a event and control blocks (S5), reset register, FACS, 64-bit X_DSDT.
fn build_fadt(dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"EMBRFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .firmware_ctrl_64(facs_addr)
        // Power and sleep buttons, if any, are control-method devices (there are none).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.sci_int = ACPI_SCI_IRQ.into();
    fadt.pm1a_evt_blk = u32::from(ACPI_PM1A_EVT_PORT).into();
    fadt.pm1_evt_len = PM1_EVT_LEN;
    fadt.pm1a_cnt_blk = u32::from(ACPI_PM1A_CNT_PORT).into();
    fadt.pm1_cnt_len = PM1_CNT_LEN;
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        ACPI_RESET_PORT.into(),
    );
    fadt.reset_value = RESET_VALUE;
    bytes_of(&fadt.finalize())
}

/// The MADT: one enabled local APIC per vCPU (APIC id = index, as CPUID says), the I/O APIC
/// (id = number of vCPUs, GSIs from 0) and LINT1 as NMI on every CPU.
///
/// No interrupt source overrides: KVM's default GSI routing wires ISA IRQ n to I/O APIC pin n
/// (the in-kernel PIT included, on GSI 0), which is what ACPI assumes without overrides and what
/// the MP table describes. An IRQ 0 -> GSI 2 override (as on PC firmware) would point the guest
/// at a pin the PIT never raises.
fn build_madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        *b"EMBRMADT",
        OEM_REVISION,
    );
    madt.write_u32(36, APIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for cpu in 0..num_cpus {
        let flags = MADT_LAPIC_ENABLED.to_le_bytes();
        madt.append_slice(&[
            MADT_LOCAL_APIC,
            8,
            cpu,
            cpu,
            flags[0],
            flags[1],
            flags[2],
            flags[3],
        ]);
    }
    let mut ioapic = vec![MADT_IO_APIC, 12, num_cpus, 0];
    ioapic.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    madt.append_slice(&ioapic);
    // Flags 0: polarity and trigger conform to the bus, as in the MP table.
    madt.append_slice(&[MADT_LOCAL_APIC_NMI, 6, MADT_ALL_PROCESSORS, 0, 0, 1]);
    madt.as_slice().to_vec()
}

fn align(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// Builds every table for `num_cpus` vCPUs and the virtio-mmio `devices` the DSDT announces.
pub fn build_tables(num_cpus: u8, devices: &[VirtioMmioDevice]) -> Result<AcpiTables, AcpiError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(AcpiError::TooManyCpus(num_cpus));
    }
    let rsdp_addr = ACPI_TABLES_START;
    let mut next = align(rsdp_addr + Rsdp::len() as u64);
    let mut place = |bytes: &[u8]| {
        let addr = next;
        next = align(addr + bytes.len() as u64);
        addr
    };
    let facs = bytes_of(&FACS::new());
    let facs_addr = place(&facs);
    let dsdt = build_dsdt(devices)?;
    let dsdt_addr = place(&dsdt);
    let fadt = build_fadt(dsdt_addr, facs_addr);
    let fadt_addr = place(&fadt);
    let madt = build_madt(num_cpus);
    let madt_addr = place(&madt);
    let mut xsdt = XSDT::new(OEM_ID, *b"EMBRXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes_of(&xsdt);
    let xsdt_addr = place(&xsdt);
    let end = next;
    if end - ACPI_TABLES_START > ACPI_TABLES_SIZE {
        return Err(AcpiError::TooLarge {
            size: end - ACPI_TABLES_START,
        });
    }
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables {
        rsdp_addr,
        tables: vec![
            (rsdp_addr, rsdp),
            (facs_addr, facs),
            (dsdt_addr, dsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (xsdt_addr, xsdt),
        ],
    })
}

/// Builds the tables and writes them into guest memory; returns the RSDP address.
pub fn setup_acpi(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    devices: &[VirtioMmioDevice],
) -> Result<u64, AcpiError> {
    let tables = build_tables(num_cpus, devices)?;
    for (addr, bytes) in &tables.tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|_| AcpiError::Write)?;
    }
    Ok(tables.rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: usize) -> Vec<VirtioMmioDevice> {
        (0..n)
            .map(|i| VirtioMmioDevice {
                base: 0xd000_0000 + i as u64 * 0x1000,
                irq: 5 + i as u32,
            })
            .collect()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
    }

    /// The table whose bytes start at `addr`.
    fn at(tables: &AcpiTables, addr: u64) -> &[u8] {
        &tables
            .tables
            .iter()
            .find(|(a, _)| *a == addr)
            .unwrap_or_else(|| panic!("no table at {addr:#x}"))
            .1
    }

    /// Follows RSDP -> XSDT -> tables, as a guest does, and returns the table with `signature`.
    fn find<'a>(tables: &'a AcpiTables, signature: &[u8; 4]) -> &'a [u8] {
        let rsdp = at(tables, tables.rsdp_addr);
        let xsdt = at(tables, u64_at(rsdp, 24));
        let count = (u32_at(xsdt, 4) as usize - 36) / 8;
        for i in 0..count {
            let table = at(tables, u64_at(xsdt, 36 + 8 * i));
            if &table[..4] == signature {
                return table;
            }
        }
        panic!("no {:?} table", String::from_utf8_lossy(signature));
    }

    /// The DSDT, through the FADT's X_DSDT.
    fn dsdt(tables: &AcpiTables) -> &[u8] {
        at(tables, u64_at(find(tables, b"FACP"), 140))
    }

    /// PkgLength at `b[0..]`: (length, bytes the encoding takes).
    fn pkg_length(b: &[u8]) -> (usize, usize) {
        let lead = b[0] as usize;
        let extra = lead >> 6;
        if extra == 0 {
            return (lead & 0x3f, 1);
        }
        let mut len = lead & 0x0f;
        for i in 0..extra {
            len |= (b[1 + i] as usize) << (4 + 8 * i);
        }
        (len, 1 + extra)
    }

    /// (name, body) of each `Device` in AML `b`.
    fn aml_devices(b: &[u8]) -> Vec<(String, &[u8])> {
        let mut found = Vec::new();
        let mut i = 0;
        while i + 1 < b.len() {
            if b[i] == 0x5b && b[i + 1] == 0x82 {
                let (len, enc) = pkg_length(&b[i + 2..]);
                let body = &b[i + 2 + enc..i + 2 + len];
                found.push((String::from_utf8_lossy(&body[..4]).to_string(), &body[4..]));
                i += 2 + len;
            } else {
                i += 1;
            }
        }
        found
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn test_dsdt_has_ps2_keyboard_device() {
        let tables = build_tables(1, &[]).expect("tables");
        let body = dsdt(&tables);
        assert!(contains(body, b"PS2K"), "keyboard device");
        // EISAName("PNP0303") encodes as a DWORD constant: 0x0c 41 d0 03 03.
        assert!(
            contains(body, &[0x0c, 0x41, 0xd0, 0x03, 0x03]),
            "PNP0303 _HID"
        );
    }

    #[test]
    fn test_acpi_tables_all_checksums_are_zero_and_lengths_match() {
        let tables = build_tables(2, &devices(3)).expect("tables");
        let rsdp = at(&tables, tables.rsdp_addr);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        assert_eq!(u32_at(rsdp, 20) as usize, rsdp.len());
        for (addr, bytes) in &tables.tables[1..] {
            assert_eq!(
                u32_at(bytes, 4) as usize,
                bytes.len(),
                "length at {addr:#x}"
            );
            if &bytes[..4] != b"FACS" {
                assert_eq!(sum(bytes), 0, "checksum at {addr:#x}");
            }
        }
    }

    #[test]
    fn test_acpi_tables_fit_area_and_do_not_overlap() {
        let tables = build_tables(MAX_CPUS, &devices(19)).expect("tables");
        let mut spans: Vec<(u64, u64)> = tables
            .tables
            .iter()
            .map(|(a, b)| (*a, *a + b.len() as u64))
            .collect();
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{spans:x?}");
        }
        assert!(spans.iter().all(|s| s.0 % 64 == 0));
        assert!(spans[spans.len() - 1].1 <= ACPI_TABLES_START + ACPI_TABLES_SIZE);
    }

    #[test]
    fn test_acpi_xsdt_lists_fadt_and_madt() {
        let tables = build_tables(1, &[]).expect("tables");
        assert_eq!(&find(&tables, b"FACP")[..4], b"FACP");
        assert_eq!(&find(&tables, b"APIC")[..4], b"APIC");
        assert_eq!(&dsdt(&tables)[..4], b"DSDT");
    }

    #[test]
    fn test_acpi_fadt_has_pm1_blocks_reset_port_and_facs() {
        let tables = build_tables(1, &[]).expect("tables");
        let fadt = find(&tables, b"FACP");
        assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT pointer unused");
        assert_eq!(&at(&tables, u64_at(fadt, 140))[..4], b"DSDT");
        let facs = at(&tables, u64_at(fadt, 132));
        assert_eq!((&facs[..4], facs.len()), (&b"FACS"[..], 64));
        assert_eq!(u64_at(fadt, 132) % 64, 0, "FACS 64-byte aligned");
        let flags = u32_at(fadt, 112);
        assert_eq!(
            flags & Flags::HwReducedAcpi as u32,
            0,
            "keeps the legacy PIC and PIT"
        );
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), ACPI_SCI_IRQ);
        assert_eq!(
            u32_at(fadt, 48),
            0,
            "no SMI command port: always in ACPI mode"
        );
        assert_eq!(u32_at(fadt, 56), u32::from(ACPI_PM1A_EVT_PORT));
        assert_eq!(u32_at(fadt, 64), u32::from(ACPI_PM1A_CNT_PORT));
        assert_eq!((fadt[88], fadt[89]), (PM1_EVT_LEN, PM1_CNT_LEN));
        // Reset register: space 1 = system I/O, 8 bits, byte access.
        let gas = (fadt[116], fadt[117], fadt[119], u64_at(fadt, 120));
        assert_eq!(gas, (1, 8, 1, u64::from(ACPI_RESET_PORT)));
        assert_eq!(fadt[128], RESET_VALUE);
    }

    #[test]
    fn test_acpi_madt_has_one_lapic_per_vcpu_ioapic_and_nmi() {
        let tables = build_tables(3, &[]).expect("tables");
        let madt = find(&tables, b"APIC");
        assert_eq!(u32_at(madt, 36), APIC_START as u32);
        let mut entries = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            entries.push(&madt[off..off + len]);
            off += len;
        }
        assert_eq!(off, madt.len());
        // 3 local APICs + the I/O APIC + no overrides + one LINT1 NMI.
        assert_eq!(entries.len(), 3 + 1 + 1);
        for (i, e) in entries[..3].iter().enumerate() {
            assert_eq!((e[0], e[2], e[3]), (MADT_LOCAL_APIC, i as u8, i as u8));
            assert_eq!(u32_at(e, 4), MADT_LAPIC_ENABLED);
        }
        let ioapic = entries[3];
        assert_eq!((ioapic[0], ioapic[2]), (MADT_IO_APIC, 3));
        assert_eq!(u32_at(ioapic, 4), IOAPIC_START as u32);
        assert_eq!(u32_at(ioapic, 8), 0);
        assert_eq!(entries[4], [MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    }

    #[test]
    fn test_acpi_dsdt_has_one_virtio_device_per_transport() {
        let devs = devices(3);
        let tables = build_tables(1, &devs).expect("tables");
        let dsdt = dsdt(&tables);
        let found: Vec<_> = aml_devices(&dsdt[36..])
            .into_iter()
            .filter(|(name, _)| name.starts_with("VR"))
            .collect();
        assert_eq!(found.len(), 3);
        for (i, ((name, body), dev)) in found.iter().zip(&devs).enumerate() {
            assert_eq!(name, &format!("VR{i:02X}"));
            assert!(contains(body, b"_HID\x0dLNRO0005\0"), "{name}: _HID");
            // Memory32Fixed, read-write, the 4 KiB window.
            let mut mem = vec![0x86, 0x09, 0x00, 0x01];
            mem.extend_from_slice(&(dev.base as u32).to_le_bytes());
            mem.extend_from_slice(&0x1000u32.to_le_bytes());
            assert!(contains(body, &mem), "{name}: Memory32Fixed");
            // Extended interrupt: consumer + edge (0x03), active high, exclusive, one IRQ.
            let mut irq = vec![0x89, 0x06, 0x00, 0x03, 0x01];
            irq.extend_from_slice(&dev.irq.to_le_bytes());
            assert!(contains(body, &irq), "{name}: Interrupt");
        }
    }

    #[test]
    fn test_acpi_dsdt_has_s5_package() {
        let tables = build_tables(1, &[]).expect("tables");
        let dsdt = dsdt(&tables);
        // Name(_S5_, Package(4) { 5, 5, 0, 0 }).
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
        ];
        assert!(contains(dsdt, &s5));
        let names: Vec<String> = aml_devices(&dsdt[36..])
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["PS2K"], "no virtio device without transports");
    }

    #[test]
    fn test_acpi_zero_or_too_many_cpus_is_error() {
        assert_eq!(build_tables(0, &[]).unwrap_err(), AcpiError::TooManyCpus(0));
        assert!(build_tables(255, &[]).is_err());
    }

    #[test]
    fn test_acpi_window_above_4g_is_error() {
        let dev = VirtioMmioDevice {
            base: 1 << 32,
            irq: 5,
        };
        assert!(matches!(
            build_tables(1, &[dev]),
            Err(AcpiError::WindowAbove4G(_))
        ));
    }

    #[test]
    fn test_setup_acpi_writes_rsdp_at_area_start() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("memory");
        let rsdp = setup_acpi(&mem, 2, &devices(1)).expect("written");
        assert_eq!(rsdp, ACPI_TABLES_START);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(rsdp)).expect("read");
        assert_eq!(&sig, b"RSD PTR ");
    }
}
