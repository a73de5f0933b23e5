//! Every guest-physical address Ember places something at, with what lives there.

/// Boot GDT, written by the VMM for the first vCPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty), right after the GDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (e820-like entries).
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`struct boot_params`) for the 64-bit Linux boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU (the stack grows down towards the zero page).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table (PML4) of the boot identity mapping.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity mapping.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot identity mapping (512 x 2 MiB = the first 1 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line Ember passes, terminating NUL included (Linux x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table goes; the 640 KiB of low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional low memory (start of the legacy VGA/BIOS hole).
pub const LOW_RAM_END: u64 = 0xa0000;
/// ACPI tables: the RSDP first (inside the 0xe0000-0xfffff range Linux scans), then FACS, DSDT,
/// FADT, MADT and XSDT, 64-byte aligned. The e820 map reserves the area up to 1 MiB.
pub const ACPI_TABLES_START: u64 = 0xe_0000;
/// Size of the ACPI table area (to the 1 MiB line).
pub const ACPI_TABLES_SIZE: u64 = 0x2_0000;
/// First I/O port of the ACPI PM registers: the PM1a event block (status, enable; 4 bytes).
pub const ACPI_PM1A_EVT_PORT: u16 = 0x600;
/// I/O port of the ACPI PM1a control block (2 bytes): SLP_TYP and SLP_EN, i.e. S5 power-off.
pub const ACPI_PM1A_CNT_PORT: u16 = 0x604;
/// I/O port of the ACPI reset register (1 byte).
pub const ACPI_RESET_PORT: u16 = 0x606;
/// Interrupt line of the ACPI SCI (FADT `SCI_INT`); no event ever raises it.
pub const ACPI_SCI_IRQ: u16 = 9;
/// Where the kernel is loaded (1 MiB, the traditional "high memory" start).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: guest RAM never overlaps [MMIO_GAP_START, MMIO_GAP_END).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB); RAM above the gap resumes here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Size of the 32-bit MMIO gap.
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;
/// The boot-timer register (first page of the MMIO gap).
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
/// Start of the area virtio-mmio device windows are allocated from, inside the MMIO gap.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of that area (256 MiB, far more than the interrupt lines allow).
pub const MMIO_DEVICES_SIZE: u64 = 0x1000_0000;
/// Size of each virtio-mmio device window.
pub const MMIO_DEVICE_WINDOW: u64 = 0x1000;
/// I/O APIC registers (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers (in-kernel irqchip).
pub const APIC_START: u64 = 0xfee0_0000;
/// Identity-mapped TSS area KVM needs on Intel hosts (`KVM_SET_TSS_ADDR`), three pages.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Interrupt line of the first serial port.
pub const SERIAL_IRQ: u32 = 4;
/// Number of I/O APIC pins (IRQs 0..23).
pub const IOAPIC_PINS: u32 = 24;
/// Interrupt lines with a fixed legacy owner, never handed to a virtio device: 0 PIT, 1 i8042
/// keyboard, 2 the 8259 cascade, 3 COM2/COM4, 4 COM1 (`SERIAL_IRQ`), 8 CMOS RTC, 9 the ACPI SCI
/// (`ACPI_SCI_IRQ`, in the FADT) and 12 the i8042 mouse port. Guests probe these devices by
/// their fixed lines whether Ember emulates them or not.
pub const LEGACY_IRQS: [u32; 8] = [0, 1, 2, 3, 4, 8, 9, 12];
/// Size of a guest page.
pub const PAGE_SIZE: u64 = 0x1000;
