//! The host file behind a virtio-blk device: positioned reads and writes, flush (fdatasync),
//! discard (punch hole) and write-zeroes.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vmm_sys_util::fallocate::{FallocateMode, fallocate};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// An open backing file.
pub struct DiskFile {
    file: File,
    size: u64,
    readonly: bool,
    punch_hole: bool,
}

impl DiskFile {
    /// Opens `path` (read-only when `readonly`) and probes what the file system supports.
    pub fn open(path: &Path, readonly: bool) -> std::io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(!readonly).open(path)?;
        let size = file.seek(SeekFrom::End(0))?;
        let is_file = file.metadata()?.is_file();
        // Punching a hole past the end with KEEP_SIZE changes nothing, and fails where the file
        // system cannot punch holes at all.
        let punch_hole = !readonly
            && is_file
            && fallocate(&file, FallocateMode::PunchHole, true, size, SECTOR_SIZE).is_ok();
        Ok(DiskFile {
            file,
            size,
            readonly,
            punch_hole,
        })
    }

    /// Size in bytes (at open).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the guest may not write.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Whether discard and write-zeroes are offered.
    pub fn supports_discard(&self) -> bool {
        self.punch_hole
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes every completed write durable (fdatasync).
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset`; they read back as zeroes.
    pub fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    /// Makes `len` bytes at `offset` read back as zeroes.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len).is_ok() {
            return Ok(());
        }
        self.discard(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_disk_write_read_discard_round_trip() {
        let path = std::env::temp_dir().join(format!("ember-disk-test-{}", std::process::id()));
        std::fs::write(&path, vec![0xabu8; 8192]).expect("create");
        let disk = DiskFile::open(&path, false).expect("open");
        assert_eq!(disk.size(), 8192);
        disk.write_at(512, &[1, 2, 3]).expect("write");
        let mut buf = [0u8; 4];
        disk.read_at(511, &mut buf).expect("read");
        assert_eq!(buf, [0xab, 1, 2, 3]);
        disk.flush().expect("flush");
        if disk.supports_discard() {
            disk.discard(4096, 4096).expect("discard");
            disk.read_at(4096, &mut buf).expect("read");
            assert_eq!(buf, [0; 4]);
        }
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn test_disk_readonly_cannot_write() {
        let path = std::env::temp_dir().join(format!("ember-disk-ro-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 1024]).expect("create");
        let disk = DiskFile::open(&path, true).expect("open");
        assert!(disk.readonly());
        assert!(disk.write_at(0, &[1]).is_err());
        std::fs::remove_file(&path).ok();
    }
}
