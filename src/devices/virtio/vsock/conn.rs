//! One vsock connection between a guest port and a host Unix stream: its state, the credit
//! accounting of both directions (virtio spec 5.10.6.3), the bounded buffer of guest bytes the
//! host has not taken yet, and the control packets it owes the guest.
//!
//! Credit: Ember advertises `BUF_ALLOC` and counts in `fwd_cnt` the guest bytes it handed to the
//! host socket; the guest may have at most `BUF_ALLOC` bytes unforwarded, so `tx_buf` never
//! holds more (a guest that sends beyond its credit is reset). Towards the guest, Ember sends at
//! most `peer_buf_alloc - (rx_cnt - peer_fwd_cnt)` bytes and reads the host socket only while
//! that is positive and the guest has posted receive buffers.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::{HOST_CID, Header, Op, SHUTDOWN_SEND, TYPE_STREAM};

/// Ember's receive buffer per connection: guest bytes the host has not read yet.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// A credit update is owed once this many forwarded bytes have not been reported.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A host client connected to `uds_path`; its `CONNECT <port>\n` line is being read.
    AwaitingLine,
    /// REQUEST sent (or owed) to the guest; waiting for its RESPONSE.
    Connecting,
    /// Data flows both ways.
    Established,
    /// The guest shut both directions: the host's last bytes are flushed, then RST.
    Closing,
}

/// Control packets a connection owes the guest (bits).
pub mod owed {
    /// REQUEST (host-initiated connection).
    pub const REQUEST: u8 = 1;
    /// RESPONSE (guest-initiated connection accepted).
    pub const RESPONSE: u8 = 2;
    /// CREDIT_UPDATE.
    pub const CREDIT: u8 = 4;
    /// SHUTDOWN (the host will send no more).
    pub const SHUTDOWN: u8 = 8;
    /// The connection ends: the loop closes the host stream at once and queues the RST for
    /// the guest with the device's other resets (so a guest without receive buffers cannot
    /// keep a dead connection's stream open).
    pub const RST: u8 = 16;
}

/// One connection.
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Its state.
    pub state: State,
    /// Ember's (the host's) vsock port.
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    /// The `CONNECT` line read so far (AwaitingLine).
    pub line: Vec<u8>,
    /// The guest's receive buffer size.
    pub peer_buf_alloc: u32,
    /// Bytes the guest consumed, as it last said.
    pub peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    pub rx_cnt: Wrapping<u32>,
    /// Guest bytes handed to the host socket.
    pub fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    pub fwd_cnt_sent: Wrapping<u32>,
    /// Guest bytes the host socket has not taken yet (at most `BUF_ALLOC`).
    pub tx_buf: VecDeque<u8>,
    /// Control packets owed (`owed::*`).
    pub owed: u8,
    /// The host socket may have bytes (or EOF) for the guest.
    pub readable: bool,
    /// The host socket reached end of file.
    pub host_eof: bool,
    /// The guest will send no more (SHUTDOWN with SEND).
    pub guest_shut_send: bool,
    /// The guest will receive no more (SHUTDOWN with RCV).
    pub guest_shut_rcv: bool,
    /// The host socket was shut for writing (after the guest's SHUTDOWN SEND and a flush).
    pub host_write_shut: bool,
    /// When the connection is given up if it has not moved on (line, RESPONSE, closing).
    pub deadline: Option<Instant>,
    /// What the stream is registered for in epoll (empty: not registered).
    pub interest: EventSet,
    /// Over: the loop drops it (and closes the stream) at its next pass.
    pub done: bool,
}

/// Why a connection must end (the guest gets a RST).
#[derive(Debug)]
pub enum Fatal {
    /// The guest sent beyond its credit.
    CreditOverrun,
    /// The host socket failed or went away.
    Host(io::Error),
}

impl Connection {
    /// A connection on `stream` in `state`.
    pub fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Connection {
            stream,
            state,
            local_port,
            peer_port,
            line: Vec::new(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            owed: 0,
            readable: false,
            host_eof: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_shut: false,
            deadline: None,
            interest: EventSet::empty(),
            done: false,
        }
    }

    /// The connection is over and can be dropped.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Ends the connection with a RST to the guest (see `owed::RST`).
    pub fn reset(&mut self) {
        self.owed = owed::RST;
        self.tx_buf = VecDeque::new();
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Notes the guest's credit fields from any packet header.
    pub fn note_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Reading the host socket can move data to the guest now.
    pub fn wants_host_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.peer_credit() > 0
    }

    /// Something is waiting to go to the guest (given receive buffers).
    pub fn has_rx_work(&self) -> bool {
        self.owed != 0 || (self.readable && self.wants_host_read())
    }

    /// What the stream should be watched for now.
    pub fn wanted_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.done || self.owed & owed::RST != 0 {
            return set;
        }
        if self.state == State::AwaitingLine || (self.wants_host_read() && !self.readable) {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// A header for a packet to the guest (`guest_cid`), carrying Ember's credit.
    pub fn header(&mut self, guest_cid: u64, op: Op, len: u32, flags: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.owed &= !owed::CREDIT;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            kind: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next control packet owed, if any (data goes between REQUEST/RESPONSE and the rest).
    pub fn next_control(&mut self, guest_cid: u64, data_possible: bool) -> Option<Header> {
        let (op, bit, flags) = if self.owed & owed::REQUEST != 0 {
            (Op::Request, owed::REQUEST, 0)
        } else if self.owed & owed::RESPONSE != 0 {
            (Op::Response, owed::RESPONSE, 0)
        } else if data_possible {
            return None;
        } else if self.owed & owed::SHUTDOWN != 0 {
            (Op::Shutdown, owed::SHUTDOWN, SHUTDOWN_SEND)
        } else if self.owed & owed::CREDIT != 0 {
            (Op::CreditUpdate, owed::CREDIT, 0)
        } else {
            return None;
        };
        self.owed &= !bit;
        Some(self.header(guest_cid, op, 0, flags))
    }

    /// Hands guest bytes to the host socket, keeping what it does not take in `tx_buf`.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), Fatal> {
        let mut data = data;
        if self.tx_buf.is_empty() {
            let n = write_some(&mut self.stream, data)?;
            self.forwarded(n);
            data = &data[n..];
        }
        if self.tx_buf.len() + data.len() > BUF_ALLOC as usize {
            return Err(Fatal::CreditOverrun);
        }
        self.tx_buf.extend(data);
        Ok(())
    }

    /// Writes what `tx_buf` holds to the host socket, as far as it takes it; then applies a
    /// pending shutdown of the host side.
    pub fn flush_to_host(&mut self) -> Result<(), Fatal> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = write_some(&mut self.stream, front)?;
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            self.forwarded(n);
        }
        if self.tx_buf.is_empty() {
            if self.guest_shut_send && !self.host_write_shut {
                // The host reads EOF; a peer already gone is not an error here.
                let _ = self.stream.shutdown(std::net::Shutdown::Write);
                self.host_write_shut = true;
            }
            if self.state == State::Closing {
                self.owed |= owed::RST;
            }
        }
        Ok(())
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.owed |= owed::CREDIT;
        }
    }
}

/// Writes as much of `data` as the non-blocking `stream` takes now.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> Result<usize, Fatal> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(Fatal::Host(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Fatal::Host(e)),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn conn() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        (Connection::new(a, State::Established, 1 << 30, 1024), b)
    }

    #[test]
    fn test_peer_credit_follows_the_guests_counters() {
        let (mut c, _peer) = conn();
        assert_eq!(
            c.peer_credit(),
            0,
            "no credit before the guest says its buffer"
        );
        c.peer_buf_alloc = 4096;
        c.rx_cnt = Wrapping(u32::MAX - 10);
        c.peer_fwd_cnt = Wrapping(u32::MAX - 100);
        assert_eq!(c.peer_credit(), 4096 - 90, "counters wrap");
        c.peer_fwd_cnt = Wrapping(5); // nonsense: more consumed than sent
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn test_host_that_stops_reading_fills_tx_buf_up_to_buf_alloc_only() {
        let (mut c, mut peer) = conn();
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        let overrun = loop {
            match c.send_to_host(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(e) => break e,
            }
            assert!(sent < 64 << 20, "never refused");
        };
        assert!(matches!(overrun, Fatal::CreditOverrun));
        assert!(c.tx_buf.len() <= BUF_ALLOC as usize);
        assert_eq!(c.wanted_interest(), EventSet::OUT);
        // The host reads everything: the buffer drains and the credit is owed.
        let forwarded_before = c.fwd_cnt.0;
        let mut got = vec![0u8; 1 << 20];
        peer.set_nonblocking(true).expect("nonblocking");
        while !c.tx_buf.is_empty() {
            while peer.read(&mut got).is_ok() {}
            c.flush_to_host().expect("flush");
        }
        assert!(c.fwd_cnt.0 > forwarded_before);
        assert_ne!(c.owed & owed::CREDIT, 0);
    }

    #[test]
    fn test_control_packets_come_in_order_and_carry_credit() {
        let (mut c, _peer) = conn();
        c.owed = owed::RESPONSE | owed::CREDIT;
        c.fwd_cnt = Wrapping(100);
        let first = c.next_control(3, false).expect("response");
        assert_eq!(first.op, Op::Response as u16);
        assert_eq!((first.buf_alloc, first.fwd_cnt), (BUF_ALLOC, 100));
        assert_eq!(c.owed, 0, "the response carried the credit");
        assert_eq!(c.next_control(3, false), None);
    }
}
