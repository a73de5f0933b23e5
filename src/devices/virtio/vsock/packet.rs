//! The virtio-vsock packet header (virtio spec 5.10.6) and the checks every packet from the
//! guest goes through before anything acts on it. `parse` is the one guest-facing parser of the
//! device (fuzzed by `fuzz_targets/vsock_packet.rs`): a packet it refuses is answered with a
//! RST where it names a connection, and counted.

use std::fmt;

/// The host's context id (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// Largest payload Ember accepts in one packet from the guest (Linux sends at most 64 KiB).
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// VIRTIO_VSOCK_TYPE_STREAM.
pub const TYPE_STREAM: u16 = 1;

/// Shutdown flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations (VIRTIO_VSOCK_OP_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset (refused, or ended).
    Rst = 3,
    /// Half or full close, with SHUTDOWN_* flags.
    Shutdown = 4,
    /// Data.
    Rw = 5,
    /// The sender's buffer space changed.
    CreditUpdate = 6,
    /// The sender asks for a CreditUpdate.
    CreditRequest = 7,
}

impl Op {
    fn from_u16(op: u16) -> Option<Op> {
        Some(match op {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A packet header, fields in host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (TYPE_STREAM).
    pub kind: u16,
    /// Operation (`Op` as a number).
    pub op: u16,
    /// SHUTDOWN_* flags.
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, in all.
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the 44 little-endian bytes of a header.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes"));
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The 44 little-endian bytes of this header.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a packet from the guest was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The chain is shorter than a header.
    ShortHeader,
    /// `len` is larger than `MAX_PAYLOAD` or than the chain holds.
    BadLength,
    /// The source is not the guest's context id.
    WrongSrcCid,
    /// The destination is not the host.
    WrongDstCid,
    /// Not a stream packet (SEQPACKET is not offered).
    WrongType,
    /// An operation that does not exist.
    UnknownOp,
    /// A control packet that carries a payload.
    PayloadOnControl,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformed::ShortHeader => "shorter than a header",
            Malformed::BadLength => "bad payload length",
            Malformed::WrongSrcCid => "source is not the guest's CID",
            Malformed::WrongDstCid => "destination is not the host",
            Malformed::WrongType => "not a stream packet",
            Malformed::UnknownOp => "unknown operation",
            Malformed::PayloadOnControl => "payload on a control packet",
        })
    }
}

/// A packet from the guest that passed every check: its operation and header; the payload
/// (exactly `hdr.len` bytes, only for `Op::Rw`) follows the header in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The operation.
    pub op: Op,
    /// The header.
    pub hdr: Header,
}

/// Checks a packet from the guest whose chain holds `header` and then `payload_room` readable
/// bytes. On refusal, the header (when the chain held one) comes back so the device can answer
/// with a RST.
pub fn parse(
    header: Option<&[u8; HDR_LEN]>,
    payload_room: usize,
    guest_cid: u64,
) -> Result<Packet, (Malformed, Option<Header>)> {
    let hdr = Header::from_bytes(header.ok_or((Malformed::ShortHeader, None))?);
    let refuse = |why| Err((why, Some(hdr)));
    if hdr.src_cid != guest_cid {
        return refuse(Malformed::WrongSrcCid);
    }
    if hdr.dst_cid != HOST_CID {
        return refuse(Malformed::WrongDstCid);
    }
    if hdr.kind != TYPE_STREAM {
        return refuse(Malformed::WrongType);
    }
    let Some(op) = Op::from_u16(hdr.op) else {
        return refuse(Malformed::UnknownOp);
    };
    if hdr.len > MAX_PAYLOAD || hdr.len as usize > payload_room {
        return refuse(Malformed::BadLength);
    }
    if op != Op::Rw && hdr.len != 0 {
        return refuse(Malformed::PayloadOnControl);
    }
    Ok(Packet { op, hdr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 52,
            len,
            kind: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn test_header_round_trips_through_bytes() {
        let hdr = rw(5);
        assert_eq!(Header::from_bytes(&hdr.to_bytes()), hdr);
        assert_eq!(hdr.to_bytes()[24..28], 5u32.to_le_bytes());
    }

    #[test]
    fn test_parse_accepts_a_data_packet_that_fits() {
        let p = parse(Some(&rw(5).to_bytes()), 5, 3).expect("valid");
        assert_eq!(p.op, Op::Rw);
        assert_eq!(p.hdr.len, 5);
    }

    #[test]
    fn test_parse_refuses_each_malformation() {
        let cases: [(Header, usize, Malformed); 6] = [
            (rw(6), 5, Malformed::BadLength),
            (rw(MAX_PAYLOAD + 1), usize::MAX, Malformed::BadLength),
            (
                Header {
                    src_cid: 4,
                    ..rw(0)
                },
                0,
                Malformed::WrongSrcCid,
            ),
            (
                Header {
                    dst_cid: 1,
                    ..rw(0)
                },
                0,
                Malformed::WrongDstCid,
            ),
            (Header { kind: 2, ..rw(0) }, 0, Malformed::WrongType),
            (Header { op: 99, ..rw(0) }, 0, Malformed::UnknownOp),
        ];
        for (hdr, room, why) in cases {
            assert_eq!(parse(Some(&hdr.to_bytes()), room, 3), Err((why, Some(hdr))));
        }
        let request = Header {
            op: Op::Request as u16,
            ..rw(1)
        };
        assert_eq!(
            parse(Some(&request.to_bytes()), 1, 3),
            Err((Malformed::PayloadOnControl, Some(request)))
        );
        assert_eq!(parse(None, 0, 3), Err((Malformed::ShortHeader, None)));
    }
}
