//! Snapshots: the whole state of a paused microVM (configuration, memory layout, every vCPU,
//! the in-kernel irqchip, PIT and clock, every device) in one checked file (format.rs), and
//! guest RAM in a second, raw file that a restore maps copy-on-write (restore.rs). The API
//! bodies of `PUT /snapshot/create` and `PUT /snapshot/load` and the `--restore` option are in
//! params.rs.

pub mod diff;
pub mod format;
pub mod params;
pub mod restore;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::config::file::ConfigDocument;
use crate::device_manager::persist::DevicesState;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::VmState;

pub use format::FormatError;

/// Everything a restore needs besides guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// The configuration the VM was built from (the JSON config document).
    pub config: ConfigDocument,
    /// Guest RAM: the regions, in the order the memory file holds them.
    pub memory: MemoryLayout,
    /// Every vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// The irqchip, PIT and clock.
    pub vm: VmState,
    /// Every device and transport.
    pub devices: DevicesState,
}

/// Where guest RAM lies and how large the memory file must be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    /// (guest-physical start, length in bytes) of each region, in file order.
    pub regions: Vec<(u64, u64)>,
}

impl MemoryLayout {
    /// The layout of `mem`.
    pub fn of(mem: &GuestMemoryMmap) -> Self {
        MemoryLayout {
            regions: mem.iter().map(|r| (r.start_addr().0, r.len())).collect(),
        }
    }

    /// The size the memory file must have.
    pub fn total(&self) -> u64 {
        self.regions.iter().map(|r| r.1).sum()
    }
}

/// Why a snapshot could not be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot file is not a valid snapshot.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The snapshot file's contents do not parse.
    #[error("snapshot file {path}: invalid contents: {reason}")]
    Contents {
        /// The file.
        path: PathBuf,
        /// serde's message.
        reason: String,
    },
    /// The memory file could not be opened, read or written.
    #[error("memory file {path}")]
    MemoryIo {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The memory file's size is not the snapshot's guest RAM.
    #[error("memory file {path}: {actual} bytes, the snapshot's guest RAM is {expected} bytes")]
    MemorySize {
        /// The file.
        path: PathBuf,
        /// The size the snapshot needs.
        expected: u64,
        /// The file's size.
        actual: u64,
    },
    /// The state does not fit together (vCPU count, layout).
    #[error("snapshot file {path}: {reason}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
}

/// The paths of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPaths {
    /// The state file.
    pub snapshot: PathBuf,
    /// The guest RAM file.
    pub mem: PathBuf,
}

fn create_file(path: &Path) -> std::io::Result<File> {
    // Write-only, created or truncated: the only kind of open the main thread's seccomp filter
    // lets through (see seccomp.rs).
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// What goes into the memory file.
#[derive(Clone, Copy)]
pub enum MemoryContents<'a> {
    /// All of guest RAM.
    Full,
    /// Only the pages that differ from the memory file the VM was restored from, found
    /// through this `/proc/self/pagemap` handle (diff.rs).
    Diff(&'a File),
}

/// Writes `snapshot` and guest memory `mem` (all of it, or its diff) to `paths`; returns the
/// bytes of guest memory written. On failure the files written so far are removed.
pub fn write(
    snapshot: &Snapshot,
    mem: &GuestMemoryMmap,
    paths: &SnapshotPaths,
    contents: MemoryContents<'_>,
) -> Result<u64, SnapshotError> {
    let result = write_files(snapshot, mem, paths, contents);
    if result.is_err() {
        let _ = std::fs::remove_file(&paths.snapshot);
        let _ = std::fs::remove_file(&paths.mem);
    }
    result
}

fn write_files(
    snapshot: &Snapshot,
    mem: &GuestMemoryMmap,
    paths: &SnapshotPaths,
    contents: MemoryContents<'_>,
) -> Result<u64, SnapshotError> {
    let snap_io = |source| FormatError::Io {
        path: paths.snapshot.clone(),
        source,
    };
    let mem_io = |source| SnapshotError::MemoryIo {
        path: paths.mem.clone(),
        source,
    };
    let body = serde_json::to_vec(snapshot).map_err(|e| SnapshotError::Contents {
        path: paths.snapshot.clone(),
        reason: e.to_string(),
    })?;
    let mut mem_file = create_file(&paths.mem).map_err(mem_io)?;
    let bytes = match contents {
        MemoryContents::Full => {
            for region in mem.iter() {
                let len = usize::try_from(region.len()).map_err(|_| {
                    mem_io(std::io::Error::other(
                        "region larger than the address space",
                    ))
                })?;
                mem.write_all_volatile_to(region.start_addr(), &mut mem_file, len)
                    .map_err(|e| mem_io(std::io::Error::other(e.to_string())))?;
            }
            mem_file.sync_all().map_err(mem_io)?;
            snapshot.memory.total()
        }
        MemoryContents::Diff(pagemap) => {
            diff::write_written_pages(mem, pagemap, &mut mem_file).map_err(mem_io)? * 4096
        }
    };
    let mut snap_file = create_file(&paths.snapshot).map_err(snap_io)?;
    snap_file
        .write_all(&format::encode(&body))
        .and_then(|()| snap_file.sync_all())
        .map_err(snap_io)?;
    Ok(bytes)
}

/// Reads and checks the snapshot at `paths.snapshot` and opens its memory file, checking its
/// size. Nothing is built: a file that fails any check is refused whole.
pub fn load(paths: &SnapshotPaths) -> Result<(Snapshot, File), SnapshotError> {
    let path = &paths.snapshot;
    let snap_io = |source| FormatError::Io {
        path: path.clone(),
        source,
    };
    let mut file = File::open(path).map_err(snap_io)?;
    let size = file.metadata().map_err(snap_io)?.len();
    if size > format::MAX_BODY + 64 {
        return Err(FormatError::Length {
            path: path.clone(),
            expected: format::MAX_BODY,
            actual: size,
        }
        .into());
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.read_to_end(&mut bytes).map_err(snap_io)?;
    let snapshot = parse(path, &bytes)?;

    let mem_io = |source| SnapshotError::MemoryIo {
        path: paths.mem.clone(),
        source,
    };
    let mem_file = File::open(&paths.mem).map_err(mem_io)?;
    let actual = mem_file.metadata().map_err(mem_io)?.len();
    let expected = snapshot.memory.total();
    if actual != expected {
        return Err(SnapshotError::MemorySize {
            path: paths.mem.clone(),
            expected,
            actual,
        });
    }
    Ok((snapshot, mem_file))
}

/// The snapshot in `bytes` (the contents of the file at `path`), once the framing, the
/// contents and their consistency are all checked.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let body = format::decode(path, bytes)?;
    let snapshot: Snapshot =
        crate::config::file::parse_json(body).map_err(|reason| SnapshotError::Contents {
            path: path.to_path_buf(),
            reason,
        })?;
    check_consistent(path, &snapshot)?;
    Ok(snapshot)
}

/// The checks that need the whole snapshot: one vCPU state per configured vCPU, guest RAM as
/// the machine configuration lays it out.
fn check_consistent(path: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let inconsistent = |reason: String| SnapshotError::Inconsistent {
        path: path.to_path_buf(),
        reason,
    };
    let machine = snapshot.config.machine_config.as_ref();
    let vcpus = machine.map_or(1, |m| usize::from(m.vcpu_count));
    if snapshot.vcpus.len() != vcpus {
        return Err(inconsistent(format!(
            "{} vCPU states for {vcpus} vCPUs",
            snapshot.vcpus.len()
        )));
    }
    let mib = machine.map_or(128, |m| m.mem_size_mib);
    let layout = mib.checked_mul(1 << 20).map(crate::arch::ram_regions);
    if layout.as_ref() != Some(&snapshot.memory.regions) {
        return Err(inconsistent(format!(
            "the memory layout does not match {mib} MiB of guest RAM"
        )));
    }
    Ok(())
}
