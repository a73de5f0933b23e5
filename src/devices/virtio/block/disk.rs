//! The host file behind a virtio-blk device: an advisory lock (exclusive when writable, shared
//! when read-only), positioned reads and writes (also straight between the file and guest memory,
//! with preadv/pwritev), flush (fdatasync), discard (punch hole) and write-zeroes.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::VolatileSlice;
use vmm_sys_util::fallocate::{FallocateMode, fallocate};

/// Most iovecs one preadv/pwritev takes (Linux UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Advances `iovs` from index `first` past `bytes` bytes (shrinking the iovec it stops
/// inside); returns the index of the first iovec with bytes left.
fn skip_bytes(iovs: &mut [libc::iovec], mut first: usize, mut bytes: usize) -> usize {
    while bytes > 0 && first < iovs.len() {
        let iov = &mut iovs[first];
        if bytes >= iov.iov_len {
            bytes -= iov.iov_len;
            first += 1;
        } else {
            iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(bytes).cast();
            iov.iov_len -= bytes;
            bytes = 0;
        }
    }
    first
}

/// An open backing file.
pub struct DiskFile {
    file: File,
    size: u64,
    readonly: bool,
    punch_hole: bool,
    /// `cache_type` Unsafe: a guest FLUSH is acknowledged without syncing.
    flush_ignored: bool,
    /// `direct=on`: the same file opened with O_DIRECT, for transfers whose offset and buffers
    /// are sector-aligned (the others go through `file` and the page cache).
    direct: Option<File>,
}

/// Whether a transfer at `offset` over `iovs` can bypass the page cache (O_DIRECT needs the
/// offset, every buffer address and every length aligned to the logical block size).
fn aligned(offset: u64, iovs: &[libc::iovec]) -> bool {
    let sector = SECTOR_SIZE as usize;
    offset.is_multiple_of(SECTOR_SIZE)
        && iovs.iter().all(|v| {
            (v.iov_base as usize).is_multiple_of(sector) && v.iov_len.is_multiple_of(sector)
        })
}

/// Why a backing file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// open, seek or fstat failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Another disk or process holds a conflicting lock on the file.
    #[error(
        "it is in use by another disk or process ({}; see shared=on in docs/usage.md)",
        if *.shared { "a writer holds it exclusively" } else { "a writable disk needs it alone" }
    )]
    Locked {
        /// Whether this disk asked for a shared lock (read-only or `shared=on`).
        shared: bool,
    },
}

impl DiskFile {
    /// Opens `path` (read-only when `readonly`), takes its advisory lock and probes what the
    /// file system supports.
    ///
    /// The lock is `flock(2)` on the open file: exclusive for a writable disk, shared for a
    /// read-only one, so two writers (two disks of one VM, or two Embers) or a writer and a
    /// reader never share an image, while read-only disks may. It is released when the file is
    /// closed. A file system without flock support gets a warning and no lock.
    pub fn open(path: &Path, readonly: bool) -> Result<Self, DiskError> {
        Self::open_locked(path, readonly, false)
    }

    /// `open`, with a shared lock also when writable if `shared` (the user's explicit choice
    /// to share a writable image).
    pub fn open_locked(path: &Path, readonly: bool, shared: bool) -> Result<Self, DiskError> {
        let mut file = OpenOptions::new().read(true).write(!readonly).open(path)?;
        let shared = readonly || shared;
        let locked = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(DiskError::Locked { shared }),
            Err(TryLockError::Error(e)) => {
                log::warn!("Disk {}: cannot lock it ({e}); not locked", path.display());
            }
        }
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
            flush_ignored: false,
            direct: None,
        })
    }

    /// `direct=on`: opens `path` a second time with O_DIRECT; aligned transfers use it from
    /// now on. Fails where the file system has no O_DIRECT.
    pub fn open_direct(&mut self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(!self.readonly)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        self.direct = Some(file);
        Ok(())
    }

    /// Whether aligned transfers bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The descriptor a transfer at `offset` over `iovs` goes through: the O_DIRECT one when
    /// there is one and the transfer is aligned, else the buffered one.
    pub fn fd_for(&self, offset: u64, iovs: &[libc::iovec]) -> std::os::fd::RawFd {
        match &self.direct {
            Some(direct) if aligned(offset, iovs) => direct.as_raw_fd(),
            _ => self.file.as_raw_fd(),
        }
    }

    /// Size in bytes (at open).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the guest may not write.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// With `true` (`cache_type` Unsafe), a guest FLUSH is acknowledged without syncing.
    pub fn set_flush_ignored(&mut self, ignored: bool) {
        self.flush_ignored = ignored;
    }

    /// Whether a guest FLUSH is acknowledged without syncing (read-only, or Unsafe).
    pub fn flush_ignored(&self) -> bool {
        self.readonly || self.flush_ignored
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

    /// Reads exactly the total length of `bufs` at `offset` straight into them (guest memory):
    /// one preadv, no bounce buffer.
    pub fn read_volatile_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> std::io::Result<()> {
        self.vectored_at(offset, bufs, false)
    }

    /// Writes all of `bufs` (guest memory) at `offset`: one pwritev, no bounce buffer.
    pub fn write_volatile_at(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> std::io::Result<()> {
        self.vectored_at(offset, bufs, true)
    }

    fn vectored_at(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_>],
        write: bool,
    ) -> std::io::Result<()> {
        // The guards keep the pointers valid while the iovecs are in use.
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
        let iovs: Vec<libc::iovec> = guards
            .iter()
            .zip(bufs)
            .filter(|(_, b)| !b.is_empty())
            .map(|(g, b)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: the iovecs describe the slices `bufs`, which the guards keep mapped.
        unsafe { self.iovecs_at(offset, &iovs, 0, write) }
    }

    /// Reads into (or, with `write`, writes from) the memory `iovs` describe, at `offset`,
    /// skipping the first `skip` bytes of the iovecs (what an earlier short transfer did).
    /// Short transfers are resumed until everything is done or the file ends.
    ///
    /// # Safety
    /// Every iovec must describe memory that stays valid (and, for a read, writable) for the
    /// whole call.
    pub unsafe fn iovecs_at(
        &self,
        mut offset: u64,
        iovs: &[libc::iovec],
        skip: usize,
        write: bool,
    ) -> std::io::Result<()> {
        if write && self.readonly {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        }
        let iovs = &mut iovs.to_vec();
        let mut first = skip_bytes(iovs, 0, skip);
        while first < iovs.len() {
            let batch = &iovs[first..iovs.len().min(first + IOV_MAX)];
            let pos = libc::off_t::try_from(offset)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            let count = batch.len() as libc::c_int;
            let fd = self.fd_for(offset, batch);
            let done = if write {
                // SAFETY: every iovec describes `len` readable bytes the caller keeps valid for
                // this call (guest memory); the kernel only reads them.
                unsafe { libc::pwritev(fd, batch.as_ptr(), count, pos) }
            } else {
                // SAFETY: every iovec describes `len` writable bytes the caller keeps valid for
                // this call; the guest may touch them concurrently, which for plain bytes is
                // the same benign race as any device DMA.
                unsafe { libc::preadv(fd, batch.as_ptr(), count, pos) }
            };
            if done < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if done == 0 {
                return Err(std::io::Error::from(if write {
                    std::io::ErrorKind::WriteZero
                } else {
                    std::io::ErrorKind::UnexpectedEof
                }));
            }
            offset += done as u64;
            // Skip what is done; a short transfer resumes inside an iovec.
            first = skip_bytes(iovs, first, done as usize);
        }
        Ok(())
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
    fn test_direct_transfers_only_when_aligned() {
        let path = std::env::temp_dir().join(format!("ember-disk-direct-{}", std::process::id()));
        std::fs::write(
            &path,
            (0..8192u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        )
        .expect("create");
        let mut disk = DiskFile::open(&path, false).expect("open");
        if disk.open_direct(&path).is_err() {
            eprintln!("SKIP test_direct_transfers_only_when_aligned: no O_DIRECT in the temp dir");
            std::fs::remove_file(&path).ok();
            return;
        }
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
        // SAFETY: a non-zero size; freed below with the same layout.
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!buf.is_null());
        let whole = [libc::iovec {
            iov_base: buf.cast(),
            iov_len: 4096,
        }];
        let odd = [libc::iovec {
            iov_base: buf.wrapping_add(1).cast(),
            iov_len: 512,
        }];
        assert_ne!(disk.fd_for(512, &whole), disk.fd_for(512, &odd));
        assert_eq!(
            disk.fd_for(100, &whole),
            disk.fd_for(512, &odd),
            "unaligned offset"
        );
        // SAFETY: both iovecs lie inside the 4096-byte allocation, alive until dealloc.
        unsafe {
            disk.iovecs_at(512, &whole, 0, false).expect("direct read");
            assert_eq!(*buf, (512 % 251) as u8);
            disk.iovecs_at(1024, &odd, 0, false).expect("buffered read");
            assert_eq!(*buf.wrapping_add(1), (1024 % 251) as u8);
            std::alloc::dealloc(buf, layout);
        }
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn test_skip_bytes_resumes_inside_an_iovec() {
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        let mut iovs = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        let first = skip_bytes(&mut iovs, 0, 6);
        assert_eq!(first, 1);
        assert_eq!(iovs[1].iov_len, 2);
        assert_eq!(iovs[1].iov_base, b[2..].as_mut_ptr().cast());
        assert_eq!(skip_bytes(&mut iovs, 1, 2), 2, "all done");
    }

    #[test]
    fn test_disk_iovecs_at_skips_what_a_short_transfer_did() {
        let path = std::env::temp_dir().join(format!("ember-disk-skip-{}", std::process::id()));
        std::fs::write(&path, (0..64u8).collect::<Vec<u8>>()).expect("create");
        let disk = DiskFile::open(&path, false).expect("open");
        let mut buf = [0xffu8; 8];
        let iovs = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // As if the first 3 bytes had come from an earlier read at offset 16.
        // SAFETY: the iovec describes `buf`, alive for the call.
        unsafe { disk.iovecs_at(16 + 3, &iovs, 3, false) }.expect("read");
        assert_eq!(buf, [0xff, 0xff, 0xff, 19, 20, 21, 22, 23]);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn test_disk_volatile_io_spans_slices() {
        let path = std::env::temp_dir().join(format!("ember-disk-vec-{}", std::process::id()));
        std::fs::write(&path, (0..8192u32).map(|i| i as u8).collect::<Vec<u8>>()).expect("create");
        let disk = DiskFile::open(&path, false).expect("open");
        let mut a = [0u8; 3];
        let mut b = [0u8; 0];
        let mut c = [0u8; 5];
        let slices = [
            VolatileSlice::from(&mut a[..]),
            VolatileSlice::from(&mut b[..]),
            VolatileSlice::from(&mut c[..]),
        ];
        disk.read_volatile_at(10, &slices).expect("read");
        disk.write_volatile_at(4096, &slices).expect("write");
        // Past the end: the two bytes there land, then the read fails.
        assert!(disk.read_volatile_at(8190, &slices).is_err());
        assert_eq!((a, c), ([254, 255, 12], [13, 14, 15, 16, 17]));
        let mut back = [0u8; 8];
        disk.read_at(4096, &mut back).expect("read back");
        assert_eq!(back, [10, 11, 12, 13, 14, 15, 16, 17]);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn test_disk_writable_image_is_locked_exclusively() {
        let path = std::env::temp_dir().join(format!("ember-disk-lock-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 1024]).expect("create");
        let writer = DiskFile::open(&path, false).expect("open");
        assert!(matches!(
            DiskFile::open(&path, false),
            Err(DiskError::Locked { shared: false })
        ));
        assert!(matches!(
            DiskFile::open(&path, true),
            Err(DiskError::Locked { shared: true })
        ));
        drop(writer);
        let reader = DiskFile::open(&path, true).expect("read-only once the writer left");
        let second = DiskFile::open(&path, true).expect("read-only disks share");
        assert!(
            DiskFile::open(&path, false).is_err(),
            "no writer beside readers"
        );
        drop((reader, second));
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
