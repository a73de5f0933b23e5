//! The vsock packet checks: any 44 header bytes with any payload room against any guest CID
//! (`packet::parse`, what every TX packet from the guest goes through), the header's byte
//! round trip, and the host client's `CONNECT <port>` line parser.
#![no_main]

use ember::devices::virtio::vsock::host::{LineRead, parse_connect_line};
use ember::devices::virtio::vsock::packet::{HDR_LEN, Header, MAX_PAYLOAD, Op, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cid, rest)) = data.split_first() else {
        return;
    };
    let guest_cid = u64::from(cid);
    let header: Option<&[u8; HDR_LEN]> = rest.get(..HDR_LEN).and_then(|h| h.try_into().ok());
    let room = rest.len().saturating_sub(HDR_LEN);
    match parse(header, room, guest_cid) {
        Ok(p) => {
            assert!(p.hdr.len as usize <= room && p.hdr.len <= MAX_PAYLOAD);
            assert_eq!(p.hdr.src_cid, guest_cid);
            assert!(p.op == Op::Rw || p.hdr.len == 0);
        }
        Err((_, Some(hdr))) => assert!(header.is_some(), "a header without one: {hdr:?}"),
        Err((_, None)) => assert!(header.is_none()),
    }
    if let Some(h) = header {
        assert_eq!(&Header::from_bytes(h).to_bytes(), h);
    }
    if let LineRead::Port(port) = parse_connect_line(rest) {
        assert!(rest.starts_with(b"CONNECT "), "{port}");
    }
});
