//! Diff snapshots of a restored VM: the memory file holds only the pages that differ from the
//! memory file the VM was restored from, at their offsets in a sparse file of the full size
//! (holes elsewhere); `scripts/merge-diff-snapshot` copies them onto (a copy of) that base.
//!
//! The pages are found in the process's own page table (`/proc/self/pagemap`, opened at the
//! restore, before the seccomp filter): guest RAM is a private mapping of the base file, so a
//! page that the guest (through KVM) or a device wrote was copied on write and is now anonymous
//! (or swapped out), while a page only read is still the file's. This sees every writer, the
//! VMM's device emulation included, which KVM's dirty log alone does not.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The page size of guest memory mappings.
const PAGE: u64 = 4096;
/// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE_OR_SHARED: u64 = 1 << 61;
/// Pagemap entries read at once.
const CHUNK: usize = 4096;

/// Whether a page with pagemap entry `entry` no longer matches the file it maps: present and
/// anonymous (a private copy), or swapped out (only anonymous pages are).
pub fn is_written(entry: u64) -> bool {
    entry & PM_SWAPPED != 0 || (entry & PM_PRESENT != 0 && entry & PM_FILE_OR_SHARED == 0)
}

/// Writes the written pages of `mem` (mapped from a base memory file) into `out` at their
/// offsets in that file, after sizing `out` to the whole of guest RAM. Returns the number of
/// pages written.
pub fn write_written_pages(
    mem: &GuestMemoryMmap,
    pagemap: &File,
    out: &mut File,
) -> std::io::Result<u64> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    out.set_len(total)?;
    let mut file_offset = 0u64;
    let mut written = 0u64;
    let mut entries = vec![0u8; CHUNK * 8];
    for region in mem.iter() {
        let host = region.as_ptr() as u64;
        let pages = region.len() / PAGE;
        let mut page = 0u64;
        while page < pages {
            let n = (pages - page).min(CHUNK as u64) as usize;
            let bytes = &mut entries[..n * 8];
            pagemap.read_exact_at(bytes, (host / PAGE + page) * 8)?;
            for (i, raw) in bytes.chunks_exact(8).enumerate() {
                let mut e = [0u8; 8];
                e.copy_from_slice(raw);
                if !is_written(u64::from_le_bytes(e)) {
                    continue;
                }
                let at = (page + i as u64) * PAGE;
                out.seek(SeekFrom::Start(file_offset + at))?;
                mem.write_all_volatile_to(
                    region.start_addr().unchecked_add(at),
                    out,
                    PAGE as usize,
                )
                .map_err(|e| std::io::Error::other(e.to_string()))?;
                written += 1;
            }
            page += n as u64;
        }
        file_offset += region.len();
    }
    out.sync_all()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_is_written_only_for_private_copies_and_swap() {
        assert!(!is_written(0), "not present");
        assert!(
            !is_written(PM_PRESENT | PM_FILE_OR_SHARED | 0x1234),
            "the file's page"
        );
        assert!(is_written(PM_PRESENT | 0x1234), "an anonymous copy");
        assert!(is_written(PM_SWAPPED), "swapped out");
    }
}
