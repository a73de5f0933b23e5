//! Loading the guest kernel (ELF vmlinux or bzImage) and the initrd into guest memory.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile};

use super::layout::{HIMEM_START, PAGE_SIZE};
use super::low_ram_end;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// 64-bit Linux boot protocol: long mode, RSI points at the zero page.
    Linux64,
    /// PVH: 32-bit protected mode, EBX points at `hvm_start_info`.
    Pvh,
}

/// Which entry the user asked for; `Auto` prefers PVH when the kernel has the note
/// (`"auto"`, `"pvh"`, `"linux"` in JSON).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolChoice {
    /// PVH if the ELF carries the note, else the 64-bit Linux entry.
    #[default]
    Auto,
    /// PVH only (an error when the kernel has no PVH note).
    Pvh,
    /// The 64-bit Linux entry even when a PVH note is present.
    Linux,
}

/// What the kernel loader produced.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Guest-physical address the boot vCPU starts at.
    pub entry: u64,
    /// Entry protocol.
    pub protocol: BootProtocol,
    /// First guest-physical address past the kernel image.
    pub end: u64,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Where the initrd landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Errors while loading the kernel or the initrd.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel file cannot be opened or read.
    #[error("Cannot read kernel image {path}")]
    OpenKernel {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel path is not a regular file.
    #[error("Kernel image {path} is not a regular file")]
    KernelNotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The kernel file is empty.
    #[error("Kernel image {path} is empty")]
    KernelEmpty {
        /// The path given.
        path: PathBuf,
    },
    /// Neither ELF nor bzImage.
    #[error("Kernel image {path} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat {
        /// The path given.
        path: PathBuf,
    },
    /// linux-loader rejected the ELF image.
    #[error("Invalid ELF kernel {path}: {reason}")]
    Elf {
        /// The path given.
        path: PathBuf,
        /// linux-loader's description.
        reason: String,
    },
    /// linux-loader rejected the bzImage.
    #[error("Invalid bzImage kernel {path}: {reason}")]
    BzImage {
        /// The path given.
        path: PathBuf,
        /// linux-loader's description.
        reason: String,
    },
    /// A bzImage too old for the 64-bit boot protocol.
    #[error(
        "bzImage {path} uses boot protocol {version:#x}; 2.06 or newer with a 64-bit entry is needed"
    )]
    BzImageTooOld {
        /// The path given.
        path: PathBuf,
        /// Boot protocol version in the header.
        version: u16,
    },
    /// `--boot-protocol pvh` on a kernel without the PVH note.
    #[error("Kernel image {path} has no PVH entry note, so it cannot boot with the PVH protocol")]
    NoPvhEntry {
        /// The path given.
        path: PathBuf,
    },
    /// The kernel would overlap memory Ember uses or lies outside RAM.
    #[error("Kernel image {path} does not fit in guest memory (it ends at {end:#x})")]
    KernelTooBig {
        /// The path given.
        path: PathBuf,
        /// End of the image.
        end: u64,
    },
    /// The initrd file cannot be opened or read.
    #[error("Cannot read initrd {path}")]
    OpenInitrd {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initrd path is not a regular file.
    #[error("Initrd {path} is not a regular file")]
    InitrdNotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error(
        "Initrd {path} ({size} bytes) does not fit in guest memory: {available} bytes are free below {limit:#x}"
    )]
    InitrdTooBig {
        /// The path given.
        path: PathBuf,
        /// Initrd size.
        size: u64,
        /// Bytes free between the kernel and the limit.
        available: u64,
        /// The highest address the initrd may reach.
        limit: u64,
    },
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const BZIMAGE_BOOT_FLAG_OFFSET: usize = 0x1fe;
const BZIMAGE_HDRS_OFFSET: usize = 0x202;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// XLF_KERNEL_64: the bzImage has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;

enum Format {
    Elf,
    BzImage,
}

fn detect_format(path: &Path, file: &mut File) -> Result<Format, KernelError> {
    let mut head = [0u8; 0x210];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(source) => {
                return Err(KernelError::OpenKernel {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    if got == 0 {
        return Err(KernelError::KernelEmpty {
            path: path.to_owned(),
        });
    }
    if got >= 4 && &head[..4] == ELF_MAGIC {
        return Ok(Format::Elf);
    }
    if got >= BZIMAGE_HDRS_OFFSET + 4
        && head[BZIMAGE_BOOT_FLAG_OFFSET..BZIMAGE_BOOT_FLAG_OFFSET + 2] == [0x55, 0xaa]
        && &head[BZIMAGE_HDRS_OFFSET..BZIMAGE_HDRS_OFFSET + 4] == b"HdrS"
    {
        return Ok(Format::BzImage);
    }
    Err(KernelError::UnknownFormat {
        path: path.to_owned(),
    })
}

fn open_regular(path: &Path) -> Result<(File, u64), std::io::Error> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    Ok((file, if meta.is_file() { meta.len() } else { u64::MAX }))
}

/// Loads the kernel at `path` into `mem` and picks the entry protocol.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    choice: ProtocolChoice,
) -> Result<LoadedKernel, KernelError> {
    let (mut file, len) = open_regular(path).map_err(|source| KernelError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    if len == u64::MAX {
        return Err(KernelError::KernelNotAFile {
            path: path.to_owned(),
        });
    }
    let loaded =
        match detect_format(path, &mut file)? {
            Format::Elf => {
                let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                    .map_err(|e| KernelError::Elf {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })?;
                let pvh_entry = match result.pvh_boot_cap {
                    PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
                    _ => None,
                };
                let (entry, protocol) = match (choice, pvh_entry) {
                    (ProtocolChoice::Auto | ProtocolChoice::Pvh, Some(addr)) => {
                        (addr, BootProtocol::Pvh)
                    }
                    (ProtocolChoice::Pvh, None) => {
                        return Err(KernelError::NoPvhEntry {
                            path: path.to_owned(),
                        });
                    }
                    _ => (result.kernel_load.0, BootProtocol::Linux64),
                };
                LoadedKernel {
                    entry,
                    protocol,
                    end: result.kernel_end,
                    setup_header: None,
                }
            }
            Format::BzImage => {
                if choice == ProtocolChoice::Pvh {
                    return Err(KernelError::NoPvhEntry {
                        path: path.to_owned(),
                    });
                }
                let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                    .map_err(|e| KernelError::BzImage {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
                let header = result
                    .setup_header
                    .expect("the bzImage loader always returns the setup header");
                if header.version < 0x0206 || header.xloadflags & XLF_KERNEL_64 == 0 {
                    return Err(KernelError::BzImageTooOld {
                        path: path.to_owned(),
                        version: header.version,
                    });
                }
                LoadedKernel {
                    entry: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                    protocol: BootProtocol::Linux64,
                    end: result.kernel_end,
                    setup_header: Some(header),
                }
            }
        };
    if loaded.end > low_ram_end(mem_size) {
        return Err(KernelError::KernelTooBig {
            path: path.to_owned(),
            end: loaded.end,
        });
    }
    Ok(loaded)
}

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible below `limit`, above
/// `kernel_end`. `None` when it does not fit.
pub fn initrd_placement(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let addr = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Loads the initrd at `path` at the top of low RAM (below `limit`), above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<LoadedInitrd, KernelError> {
    let open_err = |source| KernelError::OpenInitrd {
        path: path.to_owned(),
        source,
    };
    let (mut file, size) = open_regular(path).map_err(open_err)?;
    if size == u64::MAX {
        return Err(KernelError::InitrdNotAFile {
            path: path.to_owned(),
        });
    }
    let kernel_end = kernel_end.next_multiple_of(PAGE_SIZE);
    let addr = initrd_placement(size, kernel_end, limit).ok_or(KernelError::InitrdTooBig {
        path: path.to_owned(),
        size,
        available: limit.saturating_sub(kernel_end),
        limit,
    })?;
    read_into(mem, addr, &mut file, size).map_err(open_err)?;
    Ok(LoadedInitrd { addr, size })
}

fn read_into<R: ReadVolatile>(
    mem: &GuestMemoryMmap,
    addr: u64,
    file: &mut R,
    size: u64,
) -> Result<(), std::io::Error> {
    use vm_memory::Bytes;
    mem.read_exact_volatile_from(GuestAddress(addr), file, size as usize)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_initrd_placement_is_page_aligned_below_limit() {
        let addr = initrd_placement(0x1234, 0x20_0000, 0x800_0000).expect("fits");
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + 0x1234 <= 0x800_0000);
        assert!(addr + 0x1234 + PAGE_SIZE > 0x800_0000);
    }

    #[test]
    fn test_initrd_placement_too_big_is_none() {
        assert_eq!(initrd_placement(0x800_0000, 0x20_0000, 0x800_0000), None);
        assert_eq!(initrd_placement(0x900_0000, 0, 0x800_0000), None);
    }

    #[test]
    fn test_detect_format_rejects_random_bytes() {
        let dir = std::env::temp_dir().join(format!("ember-kernel-test-{}", std::process::id()));
        std::fs::write(&dir, [0x42u8; 4096]).expect("temp file");
        let mut file = File::open(&dir).expect("open");
        let result = detect_format(&dir, &mut file);
        std::fs::remove_file(&dir).ok();
        assert!(matches!(result, Err(KernelError::UnknownFormat { .. })));
    }
}
