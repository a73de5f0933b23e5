//! The boot information a kernel finds at entry: the Linux zero page (64-bit boot protocol) or
//! the PVH start info, each with the e820 memory map, command line, initrd and ACPI RSDP address.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::E820Entry;
use super::kernel::LoadedInitrd;
use super::layout::{
    CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};

/// `boot_params` as plain bytes for guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct BootParams(pub boot_params);
// SAFETY: boot_params is a repr(C) struct of integers and arrays of integers; every bit pattern
// is valid and it holds no references.
unsafe impl ByteValued for BootParams {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: repr(C) struct of integers only; every bit pattern is valid.
unsafe impl ByteValued for StartInfo {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: repr(C) struct of integers only; every bit pattern is valid.
unsafe impl ByteValued for ModlistEntry {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: repr(C) struct of integers only; every bit pattern is valid.
unsafe impl ByteValued for MemmapEntry {}

/// Errors while writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// More memory map entries than the zero page holds.
    #[error("The memory map has {0} entries, more than the zero page holds")]
    TooManyE820Entries(usize),
    /// A write to guest memory failed.
    #[error("Failed to write the {0} into guest memory")]
    Write(&'static str),
}

/// Magic value of `hvm_start_info`.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `boot_flag` magic in the setup header.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS" in the setup header.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// type_of_loader: "undefined" boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags: LOADED_HIGH (protected-mode code at 1 MiB).
const LOADED_HIGH: u8 = 0x01;
/// loadflags: CAN_USE_HEAP.
const CAN_USE_HEAP: u8 = 0x80;
/// Default kernel alignment (2 MiB) when the image does not give one.
const KERNEL_ALIGNMENT: u32 = 0x20_0000;

/// Builds the zero page for the 64-bit Linux boot protocol; `rsdp` is the ACPI RSDP address
/// (`acpi_rsdp_addr`), if there are ACPI tables.
pub fn build_zero_page(
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    e820: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<BootParams, BootParamsError> {
    let mut params = boot_params {
        acpi_rsdp_addr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some(header) = header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = BOOT_FLAG_MAGIC;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = (CMDLINE_START >> 32) as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(BootParams(params))
}

/// Writes the zero page for the 64-bit Linux boot protocol.
pub fn write_zero_page(mem: &GuestMemoryMmap, params: &BootParams) -> Result<(), BootParamsError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BootParamsError::Write("zero page"))
}

/// Writes the PVH start info, module list (the initrd) and memory map; `rsdp` is the ACPI RSDP
/// address (`rsdp_paddr`), if there are ACPI tables.
pub fn write_pvh_info(
    mem: &GuestMemoryMmap,
    initrd: Option<LoadedInitrd>,
    e820: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<(), BootParamsError> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(ModlistEntry(module), GuestAddress(PVH_MODLIST_START))
            .map_err(|_| BootParamsError::Write("PVH module list"))?;
    }
    let entry_size = std::mem::size_of::<MemmapEntry>() as u64;
    for (i, entry) in e820.iter().enumerate() {
        let raw = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        };
        mem.write_obj(
            MemmapEntry(raw),
            GuestAddress(PVH_MEMMAP_START + i as u64 * entry_size),
        )
        .map_err(|_| BootParamsError::Write("PVH memory map"))?;
    }
    mem.write_obj(StartInfo(info), GuestAddress(PVH_INFO_START))
        .map_err(|_| BootParamsError::Write("PVH start info"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::e820_map;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("memory")
    }

    #[test]
    fn test_zero_page_without_header_has_magics_and_cmdline() {
        let params =
            build_zero_page(None, 42, None, &e820_map(128 << 20), None).expect("zero page");
        let hdr = params.0.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.type_of_loader }, LOADER_TYPE_UNDEFINED);
        assert_eq!({ hdr.ramdisk_image }, 0);
        assert_eq!({ params.0.acpi_rsdp_addr }, 0);
    }

    #[test]
    fn test_zero_page_rsdp_address_set() {
        let params = build_zero_page(None, 1, None, &[], Some(0xe0000)).expect("zero page");
        assert_eq!({ params.0.acpi_rsdp_addr }, 0xe0000);
    }

    #[test]
    fn test_zero_page_e820_matches_memory_map() {
        let map = e820_map(5 << 30);
        let params = build_zero_page(None, 1, None, &map, None).expect("zero page");
        assert_eq!(params.0.e820_entries as usize, map.len());
        for (raw, entry) in params.0.e820_table.iter().zip(&map) {
            assert_eq!({ raw.addr }, entry.addr);
            assert_eq!({ raw.size }, entry.size);
            assert_eq!({ raw.r#type }, entry.kind);
        }
    }

    #[test]
    fn test_zero_page_initrd_fields_set() {
        let initrd = LoadedInitrd {
            addr: 0x7f0_0000,
            size: 0x1234,
        };
        let params = build_zero_page(None, 1, Some(initrd), &[], None).expect("zero page");
        assert_eq!({ params.0.hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ params.0.hdr.ramdisk_size }, 0x1234);
    }

    #[test]
    fn test_zero_page_too_many_entries_is_error() {
        let map = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: 1
            };
            200
        ];
        assert!(build_zero_page(None, 1, None, &map, None).is_err());
    }

    #[test]
    fn test_pvh_info_written_with_magic_memmap_and_module() {
        let mem = memory();
        let map = e820_map(128 << 20);
        let initrd = LoadedInitrd {
            addr: 0x5000_0000,
            size: 77,
        };
        write_pvh_info(&mem, Some(initrd), &map, Some(0xe0000)).expect("pvh info");
        let info: StartInfo = mem.read_obj(GuestAddress(PVH_INFO_START)).expect("read");
        assert_eq!(info.0.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.0.memmap_entries as usize, map.len());
        assert_eq!(info.0.nr_modules, 1);
        assert_eq!(info.0.rsdp_paddr, 0xe0000);
        let module: ModlistEntry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).expect("read");
        assert_eq!(module.0.paddr, 0x5000_0000);
        assert_eq!(module.0.size, 77);
        let last: MemmapEntry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 24 * (map.len() as u64 - 1)))
            .expect("read");
        assert_eq!(last.0.addr, map[map.len() - 1].addr);
    }
}
