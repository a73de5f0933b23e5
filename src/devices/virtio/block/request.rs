//! One virtio-blk request: parsing the descriptor chain (any framing: the header is read through
//! a `Reader`, the status byte written through a `Writer`) and executing it against the disk.
//! Read and write data go straight between the file and the guest's buffers (preadv/pwritev on
//! the chain's guest-memory slices), with no bounce buffer. Everything the guest controls is
//! checked; a bad request gets an error status, never a panic.

use std::io::{Read, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::disk::{DiskFile, SECTOR_SIZE};

/// Largest data transfer Ember accepts in one request (the guest is told through seg_max and
/// the queue size; this bounds the bounce buffer).
pub const MAX_REQUEST_BYTES: usize = 32 << 20;
/// Most discard / write-zeroes segments in one request (advertised in config space).
pub const MAX_DISCARD_SEGMENTS: u32 = 32;

/// Counters of requests, their data and what went wrong, for the device counters and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestStats {
    /// Chains taken from the queue.
    pub requests: u64,
    /// Data bytes read from the disk into guest buffers.
    pub read_bytes: u64,
    /// Data bytes written from guest buffers to the disk.
    pub written_bytes: u64,
    /// Chains that could not even carry a status byte.
    pub malformed: u64,
    /// Requests completed with VIRTIO_BLK_S_IOERR.
    pub io_errors: u64,
    /// Requests completed with VIRTIO_BLK_S_UNSUPP.
    pub unsupported: u64,
    /// Of `io_errors`, those where the host file failed (not the guest's request).
    pub host_errors: u64,
    /// The latest host failure, for the device to report (it takes it).
    pub last_host_error: Option<HostIoError>,
}

/// What the device asked of the host file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostOp {
    /// preadv.
    Read,
    /// pwritev.
    Write,
    /// fdatasync.
    Flush,
    /// fallocate(PUNCH_HOLE).
    Discard,
    /// fallocate(ZERO_RANGE), or a punched hole.
    WriteZeroes,
}

impl std::fmt::Display for HostOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostOp::Read => "read",
            HostOp::Write => "write",
            HostOp::Flush => "flush",
            HostOp::Discard => "discard",
            HostOp::WriteZeroes => "write-zeroes",
        })
    }
}

/// A host I/O failure: the operation and the error (errno, or the kind for a short transfer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostIoError {
    /// What failed.
    pub op: HostOp,
    /// The errno, when the system call failed.
    pub errno: Option<i32>,
    /// The error's kind (`UnexpectedEof` for a file shorter than the disk).
    pub kind: std::io::ErrorKind,
}

impl HostIoError {
    fn new(op: HostOp, e: &std::io::Error) -> Self {
        HostIoError {
            op,
            errno: e.raw_os_error(),
            kind: e.kind(),
        }
    }
}

impl std::fmt::Display for HostIoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.errno {
            Some(errno) => write!(f, "{}", std::io::Error::from_raw_os_error(errno)),
            None if self.kind == std::io::ErrorKind::UnexpectedEof => {
                f.write_str("the file ends before the disk (truncated?)")
            }
            None => write!(f, "{}", self.kind),
        }
    }
}

/// Why a request failed, logged at debug level and turned into a status byte.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("header shorter than 16 bytes")]
    ShortHeader,
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(usize),
    #[error("request of {0} bytes is larger than {MAX_REQUEST_BYTES}")]
    TooLarge(usize),
    #[error("sectors {sector}+{count} beyond capacity {capacity}")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("bad discard/write-zeroes segment list")]
    BadSegments,
    #[error("guest memory access failed: {0}")]
    Memory(std::io::Error),
    #[error("host {0} failed: {1}")]
    Io(HostOp, std::io::Error),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

/// The result to put in the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Bytes written into guest buffers (data + status).
    pub used_len: u32,
    /// The status byte, or `None` when the chain had no writable byte for it.
    pub status: Option<u8>,
}

fn check_range(disk: &DiskFile, sector: u64, bytes: u64) -> Result<u64, RequestError> {
    let capacity = disk.size() / SECTOR_SIZE;
    let count = bytes / SECTOR_SIZE;
    let offset = sector.checked_mul(SECTOR_SIZE);
    match (offset, sector.checked_add(count)) {
        (Some(offset), Some(end)) if end <= capacity => Ok(offset),
        _ => Err(RequestError::OutOfRange {
            sector,
            count,
            capacity,
        }),
    }
}

fn data_len(len: usize) -> Result<usize, RequestError> {
    if len > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge(len));
    }
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Unaligned(len));
    }
    Ok(len)
}

/// The guest-memory slices of `chain`'s readable (or writable) descriptors, `len` bytes from
/// byte `skip` of that part on: the data of a request, for I/O straight into or out of guest
/// memory. The descriptors are walked as `Reader` (readable ones, up to the first writable) and
/// `Writer` (writable ones) walk them, so the slices are the bytes those would have copied.
fn data_slices<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    writable: bool,
    mut skip: usize,
    mut len: usize,
) -> Result<Vec<VolatileSlice<'m>>, RequestError> {
    let memory_error = |e: vm_memory::GuestMemoryError| {
        RequestError::Memory(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let mut slices = Vec::new();
    let descriptors: Box<dyn Iterator<Item = _>> = if writable {
        Box::new(chain.writable())
    } else {
        Box::new(chain.readable())
    };
    for desc in descriptors {
        if len == 0 {
            break;
        }
        for slice in mem.get_slices(desc.addr(), desc.len() as usize) {
            let mut slice = slice.map_err(memory_error)?;
            if skip >= slice.len() {
                skip -= slice.len();
                continue;
            }
            slice = slice.offset(skip).map_err(|e| memory_error(e.into()))?;
            skip = 0;
            let take = slice.len().min(len);
            slices.push(
                slice
                    .subslice(0, take)
                    .map_err(|e| memory_error(e.into()))?,
            );
            len -= take;
            if len == 0 {
                break;
            }
        }
    }
    if len != 0 {
        return Err(RequestError::Memory(
            std::io::ErrorKind::UnexpectedEof.into(),
        ));
    }
    Ok(slices)
}

/// What a parsed request asks of the disk.
pub(crate) enum Op<'m> {
    /// Read into the guest's buffers (IN).
    Read {
        /// Byte offset in the disk.
        offset: u64,
        /// The guest's buffers, in order.
        bufs: Vec<VolatileSlice<'m>>,
    },
    /// Write the guest's buffers (OUT).
    Write {
        /// Byte offset in the disk.
        offset: u64,
        /// The guest's buffers, in order.
        bufs: Vec<VolatileSlice<'m>>,
    },
    /// Make every completed write durable (FLUSH on a writable disk).
    Flush,
    /// Punch these (offset, bytes) ranges (DISCARD).
    Discard(Vec<(u64, u64)>),
    /// Zero these (offset, bytes) ranges (WRITE_ZEROES).
    WriteZeroes(Vec<(u64, u64)>),
    /// Nothing left for the disk: done while parsing (GET_ID, FLUSH of a read-only disk) or
    /// refused (`Err`).
    Done(Result<(), RequestError>),
}

/// How a request ends, kept apart from its buffers so that an engine can hold it while the
/// I/O is in flight: where the status byte goes and what success adds to the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    /// Guest address of the status byte (the chain's last writable byte).
    status: GuestAddress,
    /// Data bytes the request puts into guest memory on success (IN, GET_ID).
    data_in: u32,
    /// Bytes read from / written to the disk on success, for the counters.
    read: u64,
    written: u64,
}

/// A parsed request: what to do, and how it ends.
pub(crate) struct Request<'m> {
    /// What the disk must do.
    pub(crate) op: Op<'m>,
    /// Where and how it is answered.
    pub(crate) reply: Reply,
}

fn segments(
    disk: &DiskFile,
    kind: u32,
    reader: &mut Reader<'_>,
) -> Result<Vec<(u64, u64)>, RequestError> {
    if disk.readonly() {
        return Err(RequestError::ReadOnly);
    }
    if !disk.supports_discard() {
        return Err(RequestError::Unsupported(kind));
    }
    let avail = reader.available_bytes();
    if avail == 0 || !avail.is_multiple_of(16) || avail / 16 > MAX_DISCARD_SEGMENTS as usize {
        return Err(RequestError::BadSegments);
    }
    let mut ranges = Vec::with_capacity(avail / 16);
    for _ in 0..avail / 16 {
        let mut seg = [0u8; 16];
        reader.read_exact(&mut seg).map_err(RequestError::Memory)?;
        let start = u64::from_le_bytes(seg[0..8].try_into().expect("8 bytes"));
        let sectors = u32::from_le_bytes(seg[8..12].try_into().expect("4 bytes"));
        let flags = u32::from_le_bytes(seg[12..16].try_into().expect("4 bytes"));
        // Only the "unmap" flag (bit 0) exists, and only for write-zeroes.
        let allowed = if kind == VIRTIO_BLK_T_WRITE_ZEROES {
            1
        } else {
            0
        };
        if flags & !allowed != 0 {
            return Err(RequestError::Unsupported(kind));
        }
        let bytes = u64::from(sectors) * SECTOR_SIZE;
        let offset = check_range(disk, start, bytes)?;
        if bytes != 0 {
            ranges.push((offset, bytes));
        }
    }
    Ok(ranges)
}

/// Parses the header and data of a request whose status byte is known to exist: the op, and
/// the data bytes a successful one puts into guest memory (GET_ID is served here).
fn parse_op<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    disk: &DiskFile,
    id: &[u8],
    reader: &mut Reader<'_>,
    data: &mut Writer<'_>,
) -> Result<(Op<'m>, usize), RequestError> {
    let mut header = [0u8; 16];
    reader
        .read_exact(&mut header)
        .map_err(|_| RequestError::ShortHeader)?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    match kind {
        VIRTIO_BLK_T_IN => {
            let len = data_len(data.available_bytes())?;
            let offset = check_range(disk, sector, len as u64)?;
            let bufs = data_slices(mem, chain, true, 0, len)?;
            Ok((Op::Read { offset, bufs }, len))
        }
        VIRTIO_BLK_T_OUT => {
            if disk.readonly() {
                return Err(RequestError::ReadOnly);
            }
            let len = data_len(reader.available_bytes())?;
            let offset = check_range(disk, sector, len as u64)?;
            let bufs = data_slices(mem, chain, false, reader.bytes_read(), len)?;
            Ok((Op::Write { offset, bufs }, 0))
        }
        VIRTIO_BLK_T_FLUSH if disk.flush_ignored() => Ok((Op::Done(Ok(())), 0)),
        VIRTIO_BLK_T_FLUSH => Ok((Op::Flush, 0)),
        VIRTIO_BLK_T_GET_ID => {
            let mut serial = [0u8; VIRTIO_BLK_ID_BYTES as usize];
            let n = id.len().min(serial.len());
            serial[..n].copy_from_slice(&id[..n]);
            let room = data.available_bytes().min(serial.len());
            data.write_all(&serial[..room])
                .map_err(RequestError::Memory)?;
            Ok((Op::Done(Ok(())), room))
        }
        VIRTIO_BLK_T_DISCARD => Ok((Op::Discard(segments(disk, kind, reader)?), 0)),
        VIRTIO_BLK_T_WRITE_ZEROES => Ok((Op::WriteZeroes(segments(disk, kind, reader)?), 0)),
        other => Err(RequestError::Unsupported(other)),
    }
}

/// The guest address of `chain`'s last writable byte (the status byte), if it has one.
fn status_address(chain: &DescriptorChain<&GuestMemoryMmap>) -> Option<GuestAddress> {
    let last = chain.clone().writable().filter(|d| d.len() > 0).last()?;
    last.addr().checked_add(u64::from(last.len()) - 1)
}

/// Parses the request in `chain` (the first step: nothing reaches the disk here). A chain that
/// cannot even carry a status byte is answered at once: `Err` with its completion.
pub(crate) fn parse<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    disk: &DiskFile,
    id: &[u8],
    stats: &mut RequestStats,
) -> Result<Request<'m>, Completion> {
    stats.requests += 1;
    let malformed = |stats: &mut RequestStats| {
        stats.malformed += 1;
        Completion {
            used_len: 0,
            status: None,
        }
    };
    let data_chain = chain.clone();
    let status = status_address(&chain);
    let readers = Reader::new(mem, chain.clone()).and_then(|r| Ok((r, Writer::new(mem, chain)?)));
    let (mut reader, writer) = match readers {
        Ok(pair) => pair,
        Err(e) => {
            log::debug!("virtio-blk: descriptor chain outside guest memory: {e}");
            return Err(malformed(stats));
        }
    };
    let (Some(status), Some(data_room)) = (status, writer.available_bytes().checked_sub(1)) else {
        log::debug!("virtio-blk: request without a writable status byte");
        return Err(malformed(stats));
    };
    let mut writer = writer;
    if writer.split_at(data_room).is_err() {
        return Err(malformed(stats));
    }
    let (op, data_in) = match parse_op(mem, data_chain, disk, id, &mut reader, &mut writer) {
        Ok(parsed) => parsed,
        Err(e) => (Op::Done(Err(e)), writer.bytes_written()),
    };
    let (read, written) = match &op {
        Op::Read { bufs, .. } => (bufs.iter().map(|b| b.len() as u64).sum(), 0),
        Op::Write { bufs, .. } => (0, bufs.iter().map(|b| b.len() as u64).sum()),
        _ => (0, 0),
    };
    Ok(Request {
        op,
        reply: Reply {
            status,
            data_in: data_in as u32,
            read,
            written,
        },
    })
}

/// Runs `op` on the disk synchronously (the Sync engine, and the Async engine's ops that have
/// no io_uring form here).
pub(crate) fn execute_sync(op: &Op<'_>, disk: &DiskFile) -> Result<(), RequestError> {
    match op {
        Op::Read { offset, bufs } => disk
            .read_volatile_at(*offset, bufs)
            .map_err(|e| RequestError::Io(HostOp::Read, e)),
        Op::Write { offset, bufs } => disk
            .write_volatile_at(*offset, bufs)
            .map_err(|e| RequestError::Io(HostOp::Write, e)),
        Op::Flush => disk.flush().map_err(|e| RequestError::Io(HostOp::Flush, e)),
        Op::Discard(ranges) => ranges.iter().try_for_each(|&(offset, bytes)| {
            disk.discard(offset, bytes)
                .map_err(|e| RequestError::Io(HostOp::Discard, e))
        }),
        Op::WriteZeroes(ranges) => ranges.iter().try_for_each(|&(offset, bytes)| {
            disk.write_zeroes(offset, bytes)
                .map_err(|e| RequestError::Io(HostOp::WriteZeroes, e))
        }),
        Op::Done(result) => match result {
            Ok(()) => Ok(()),
            Err(e) => Err(e.duplicate()),
        },
    }
}

impl Reply {
    /// Ends the request with `result`: the status byte into guest memory, the counters; the
    /// used length for the used ring.
    pub(crate) fn finish(
        self,
        mem: &GuestMemoryMmap,
        result: Result<(), RequestError>,
        stats: &mut RequestStats,
    ) -> Completion {
        let (status, data) = match result {
            Ok(()) => {
                stats.read_bytes += self.read;
                stats.written_bytes += self.written;
                (VIRTIO_BLK_S_OK as u8, self.data_in)
            }
            Err(RequestError::Unsupported(kind)) => {
                log::debug!("virtio-blk: unsupported request type {kind}");
                stats.unsupported += 1;
                (VIRTIO_BLK_S_UNSUPP as u8, self.data_in.min(self.partial()))
            }
            Err(e) => {
                log::debug!("virtio-blk: request failed: {e}");
                stats.io_errors += 1;
                if let RequestError::Io(op, host) = &e {
                    stats.host_errors += 1;
                    stats.last_host_error = Some(HostIoError::new(*op, host));
                }
                (VIRTIO_BLK_S_IOERR as u8, self.data_in.min(self.partial()))
            }
        };
        if mem.write_obj(status, self.status).is_err() {
            stats.malformed += 1;
            return Completion {
                used_len: data,
                status: None,
            };
        }
        Completion {
            used_len: data + 1,
            status: Some(status),
        }
    }

    /// Data bytes a failed request still reports: those it wrote while parsing (a GET_ID that
    /// failed part way); a failed read reports none.
    fn partial(&self) -> u32 {
        if self.read > 0 { 0 } else { self.data_in }
    }
}

impl RequestError {
    /// A copy for a second report (io::Error is not Clone).
    fn duplicate(&self) -> RequestError {
        match self {
            RequestError::ShortHeader => RequestError::ShortHeader,
            RequestError::Unaligned(n) => RequestError::Unaligned(*n),
            RequestError::TooLarge(n) => RequestError::TooLarge(*n),
            RequestError::OutOfRange {
                sector,
                count,
                capacity,
            } => RequestError::OutOfRange {
                sector: *sector,
                count: *count,
                capacity: *capacity,
            },
            RequestError::ReadOnly => RequestError::ReadOnly,
            RequestError::BadSegments => RequestError::BadSegments,
            RequestError::Memory(e) => {
                RequestError::Memory(std::io::Error::new(e.kind(), e.to_string()))
            }
            RequestError::Io(op, e) => RequestError::Io(
                *op,
                e.raw_os_error()
                    .map(std::io::Error::from_raw_os_error)
                    .unwrap_or_else(|| std::io::Error::from(e.kind())),
            ),
            RequestError::Unsupported(k) => RequestError::Unsupported(*k),
        }
    }
}

/// The data bytes `chain` carries, as the rate limiter counts them before the request is
/// parsed: every descriptor but the 16-byte header and the status byte (0 for FLUSH).
pub fn data_len_hint(chain: &DescriptorChain<&GuestMemoryMmap>) -> u64 {
    (super::super::chain_len(chain, false) + super::super::chain_len(chain, true))
        .saturating_sub(17)
}

/// Parses and executes the request in `chain` synchronously, writing its data and status into
/// guest memory: `parse`, `execute_sync`, `Reply::finish`.
pub fn process(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &DiskFile,
    id: &[u8],
    stats: &mut RequestStats,
) -> Completion {
    match parse(mem, chain, disk, id, stats) {
        Ok(request) => {
            let result = execute_sync(&request.op, disk);
            request.reply.finish(mem, result, stats)
        }
        Err(done) => done,
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
