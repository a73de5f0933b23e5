//! Kernel image loading: arbitrary bytes as a kernel file (ELF vmlinux, bzImage or neither, as
//! the format sniffing decides) loaded into 4 MiB of guest memory with each protocol choice
//! (auto, PVH, 64-bit Linux), then the same file as an initrd above whatever was loaded.
//! Checked: no panic, a loaded kernel ends inside low RAM, an initrd lies between the kernel's
//! end and the limit.
#![no_main]

use std::sync::OnceLock;

use ember::arch::kernel::{ProtocolChoice, load_initrd, load_kernel};
use ember::arch::layout::HIMEM_START;
use ember_fuzz::{Scratch, memory};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;

const GUEST_MEM: usize = 4 << 20;

fn guest() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| memory(GUEST_MEM))
}

fuzz_target!(|image: &[u8]| {
    let mem = guest();
    let file = Scratch::new("kernel", image);
    let mut kernel_end = HIMEM_START;
    for choice in [
        ProtocolChoice::Auto,
        ProtocolChoice::Pvh,
        ProtocolChoice::Linux,
    ] {
        if let Ok(k) = load_kernel(mem, GUEST_MEM as u64, &file.path, choice) {
            assert!(k.end <= GUEST_MEM as u64, "kernel ends at {:#x}", k.end);
            kernel_end = kernel_end.max(k.end);
        }
    }
    let limit = GUEST_MEM as u64;
    if let Ok(initrd) = load_initrd(mem, &file.path, kernel_end, limit) {
        assert!(initrd.addr >= kernel_end && initrd.addr + initrd.size <= limit);
        assert_eq!(initrd.size, image.len() as u64);
    }
});
