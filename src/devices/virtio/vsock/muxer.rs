//! The vsock device's work on the event loop: packets from the guest's TX queue (checked by
//! `packet::parse`, then acted on per connection), packets to the guest's RX queue (owed RSTs,
//! each connection's control packets and host data, round robin), host clients on the listener,
//! events on the connection streams, and deadlines.

use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::time::Instant;

use virtio_queue::{QueueOwnedT, QueueT, Reader, Writer};
use vmm_sys_util::epoll::EventSet;

use super::conn::{Connection, Fatal, State, owed};
use super::host::{self, LineRead};
use super::packet::{
    self, HDR_LEN, HOST_CID, Header, Malformed, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{
    CONNECT_TIMEOUT, EVQ, FIRST_CONN_TOKEN, FIRST_LOCAL_PORT, MAX_CONNECTIONS, MAX_PENDING_RST, RX,
    TX, Vsock, VsockStats,
};

/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const EVENT_TRANSPORT_RESET: u32 = 0;

impl Vsock {
    /// Takes every packet the guest queued on TX and acts on it; TX chains are always consumed
    /// (data goes to the host socket or to the connection's bounded buffer).
    pub(super) fn process_tx(&mut self) {
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        let mut used_any = false;
        loop {
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let Some(chain) = active.queues[TX].pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let mut reader = Reader::new(&mem, chain).ok();
            let mut raw = [0u8; HDR_LEN];
            let mut header = None;
            if let Some(r) = reader.as_mut()
                && r.available_bytes() >= HDR_LEN
                && r.read_exact(&mut raw).is_ok()
            {
                header = Some(raw);
            }
            let room = reader.as_ref().map_or(0, |r| r.available_bytes());
            self.stats.tx_packets += 1;
            match packet::parse(header.as_ref(), room, self.guest_cid) {
                Ok(p) => {
                    let reader = reader.as_mut().expect("a header was read from it");
                    self.handle_packet(p.op, &p.hdr, reader);
                }
                Err((why, hdr)) => self.refuse(why, hdr),
            }
            let Some(active) = self.active.as_mut() else {
                return;
            };
            if active.queues[TX].add_used(&mem, head, 0).is_err() {
                log::warn!("vsock {}: the guest corrupted its TX queue", self.id);
                self.broken = true;
                break;
            }
            used_any = true;
        }
        if used_any && let Some(active) = self.active.as_ref() {
            active.interrupt.signal_used_queue();
        }
    }

    /// A malformed packet: counted, and answered with a RST when it names ports (never a RST
    /// for a RST); a connection it names is reset too.
    fn refuse(&mut self, why: Malformed, hdr: Option<Header>) {
        self.stats.malformed += 1;
        log::debug!("vsock {}: malformed packet from the guest: {why}", self.id);
        let Some(hdr) = hdr else { return };
        if hdr.op == Op::Rst as u16 {
            return;
        }
        if hdr.src_cid == self.guest_cid
            && let Some(c) = self.conn_mut(hdr.dst_port, hdr.src_port)
        {
            c.reset();
            return;
        }
        self.queue_rst(&hdr);
    }

    /// Queues a RST answering `hdr` (bounded; beyond the bound it is dropped and counted).
    pub(super) fn queue_rst(&mut self, hdr: &Header) {
        if self.rst_queue.len() >= MAX_PENDING_RST {
            self.stats.rst_dropped += 1;
            return;
        }
        self.rst_queue.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            len: 0,
            kind: TYPE_STREAM,
            op: Op::Rst as u16,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn conn_mut(&mut self, local_port: u32, peer_port: u32) -> Option<&mut Connection> {
        let token = *self.by_port.get(&(local_port, peer_port))?;
        self.conns.get_mut(&token)
    }

    fn add_conn(&mut self, conn: Connection) -> u32 {
        let mut token = self.next_token;
        while self.conns.contains_key(&token) {
            token = token.checked_add(1).unwrap_or(FIRST_CONN_TOKEN);
        }
        self.next_token = token.checked_add(1).unwrap_or(FIRST_CONN_TOKEN);
        if conn.state != State::AwaitingLine {
            self.by_port
                .insert((conn.local_port, conn.peer_port), token);
        }
        self.conns.insert(token, conn);
        token
    }

    /// A valid packet from the guest.
    fn handle_packet(&mut self, op: Op, hdr: &Header, reader: &mut Reader<'_>) {
        let (local, peer) = (hdr.dst_port, hdr.src_port);
        if op == Op::Request {
            self.guest_connect(hdr);
            return;
        }
        let Some(c) = self
            .by_port
            .get(&(local, peer))
            .and_then(|t| self.conns.get_mut(t))
        else {
            if op != Op::Rst {
                self.queue_rst(hdr);
            }
            return;
        };
        c.note_peer_credit(hdr);
        match op {
            Op::Request => {}
            Op::Rst => c.done = true,
            Op::Response if c.state == State::Connecting => {
                let line = format!("OK {local}\n");
                // A fresh stream's buffer takes a 16-byte line whole.
                match c.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => {
                        c.state = State::Established;
                        c.deadline = None;
                        self.stats.connections += 1;
                    }
                    _ => c.reset(),
                }
            }
            Op::Response => c.reset(),
            Op::Shutdown => {
                c.guest_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                c.guest_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                if c.guest_shut_rcv && c.guest_shut_send {
                    c.state = State::Closing;
                    c.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
                }
                if let Err(e) = c.flush_to_host() {
                    log::debug!("vsock: host side ended: {e:?}");
                    c.reset();
                }
            }
            Op::Rw if c.state == State::Established && !c.guest_shut_send => {
                let len = hdr.len as usize;
                let data = &mut self.scratch[..len];
                if reader.read_exact(data).is_err() {
                    self.stats.malformed += 1;
                    c.reset();
                    return;
                }
                self.stats.tx_bytes += len as u64;
                match c.send_to_host(data) {
                    Ok(()) => {}
                    Err(Fatal::CreditOverrun) => {
                        self.stats.malformed += 1;
                        log::debug!("vsock {}: the guest sent beyond its credit", self.id);
                        c.reset();
                    }
                    Err(Fatal::Host(e)) => {
                        log::debug!("vsock {}: host side ended: {e}", self.id);
                        c.reset();
                    }
                }
            }
            Op::Rw => c.reset(),
            Op::CreditUpdate => {}
            Op::CreditRequest => c.owed |= owed::CREDIT,
        }
    }

    /// The guest asks for host port `hdr.dst_port`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.by_port.contains_key(&(hdr.dst_port, hdr.src_port)) {
            // A second REQUEST on a live connection: reset it.
            if let Some(c) = self.conn_mut(hdr.dst_port, hdr.src_port) {
                c.reset();
            }
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            self.stats.refused_full += 1;
            self.queue_rst(hdr);
            return;
        }
        match host::connect(&host::port_path(&self.uds_path, hdr.dst_port)) {
            Ok(stream) => {
                let mut c = Connection::new(stream, State::Established, hdr.dst_port, hdr.src_port);
                c.note_peer_credit(hdr);
                c.owed = owed::RESPONSE;
                self.add_conn(c);
                self.stats.connections += 1;
            }
            Err(e) => {
                log::debug!(
                    "vsock {}: guest connection to port {} refused: {e}",
                    self.id,
                    hdr.dst_port
                );
                self.queue_rst(hdr);
            }
        }
    }

    /// Fills receive buffers while anything waits for the guest: owed RSTs first, then the
    /// connections round robin. A chain that nothing fills goes back to the ring.
    pub(super) fn process_rx(&mut self) {
        if let Some((sent, avail)) = self.reset_unacked {
            let acknowledged = self.active.as_ref().is_some_and(|a| {
                a.queues[EVQ]
                    .avail_idx(&a.mem, Ordering::Acquire)
                    .is_ok_and(|now| now != avail)
            });
            if !acknowledged && sent.elapsed() < super::RESET_ACK_WAIT {
                return;
            }
            self.reset_unacked = None;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used_any = false;
        loop {
            if self.rst_queue.is_empty() && !self.conns.values().any(Connection::has_rx_work) {
                break;
            }
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let Some(chain) = active.queues[RX].pop_descriptor_chain(&mem) else {
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let mut writer = match Writer::new(&mem, chain) {
                Ok(w) if w.available_bytes() >= HDR_LEN => w,
                _ => {
                    // A receive buffer that cannot hold a header: used empty, counted.
                    self.stats.malformed += 1;
                    self.finish_rx(head, 0, &mut used_any);
                    continue;
                }
            };
            let Some(len) = self.fill_rx(&mut writer) else {
                // Nothing after all (a stream had no bytes): give the chain back.
                if let Some(active) = self.active.as_mut() {
                    active.queues[RX].go_to_previous_position();
                }
                continue;
            };
            // (0: guest memory refused the packet; the chain is used empty, never retried.)
            self.finish_rx(head, len, &mut used_any);
        }
        if used_any && let Some(active) = self.active.as_ref() {
            active.interrupt.signal_used_queue();
        }
    }

    fn finish_rx(&mut self, head: u16, len: u32, used_any: &mut bool) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.queues[RX].add_used(&active.mem, head, len).is_err() {
            log::warn!("vsock {}: the guest corrupted its RX queue", self.id);
            self.broken = true;
            return;
        }
        *used_any = true;
    }

    /// Writes the next packet for the guest into `writer`; returns its length (`None`: nothing
    /// to send after all).
    fn fill_rx(&mut self, writer: &mut Writer<'_>) -> Option<u32> {
        if let Some(hdr) = self.rst_queue.pop_front() {
            self.stats.rst_sent += 1;
            return Some(put_packet(writer, &hdr, &[], &mut self.stats));
        }
        let tokens: Vec<u32> = self
            .conns
            .range(self.rx_cursor.wrapping_add(1)..)
            .chain(self.conns.range(..=self.rx_cursor))
            .filter(|(_, c)| c.has_rx_work())
            .map(|(&t, _)| t)
            .collect();
        let room = (writer.available_bytes() - HDR_LEN).min(packet::MAX_PAYLOAD as usize);
        for token in tokens {
            self.rx_cursor = token;
            let guest_cid = self.guest_cid;
            let c = self.conns.get_mut(&token).expect("token from the table");
            let data_possible = c.readable && c.wants_host_read();
            if let Some(hdr) = c.next_control(guest_cid, data_possible) {
                return Some(put_packet(writer, &hdr, &[], &mut self.stats));
            }
            if !data_possible {
                continue;
            }
            let want = room.min(c.peer_credit() as usize);
            match c.stream.read(&mut self.scratch[..want]) {
                Ok(0) => {
                    c.host_eof = true;
                    let hdr = c.header(guest_cid, Op::Shutdown, 0, SHUTDOWN_SEND);
                    return Some(put_packet(writer, &hdr, &[], &mut self.stats));
                }
                Ok(n) => {
                    c.rx_cnt += Wrapping(n as u32);
                    let hdr = c.header(guest_cid, Op::Rw, n as u32, 0);
                    self.stats.rx_bytes += n as u64;
                    return Some(put_packet(
                        writer,
                        &hdr,
                        &self.scratch[..n],
                        &mut self.stats,
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => c.reset(),
            }
        }
        None
    }

    /// Accepts the host clients waiting on the listener (at most a few per event, so one
    /// busy listener does not starve the loop).
    pub(super) fn accept_host_clients(&mut self) {
        for _ in 0..16 {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock {}: accept failed ({e}); retrying shortly", self.id);
                    self.listener_backoff = true;
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                self.stats.refused_full += 1;
                continue;
            }
            let mut c = Connection::new(stream, State::AwaitingLine, 0, 0);
            c.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
            let token = self.add_conn(c);
            // Its line may be there already.
            self.connection_event(token, EventSet::IN);
        }
    }

    /// An event on connection `token`'s stream.
    pub(super) fn connection_event(&mut self, token: u32, set: EventSet) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if c.state == State::AwaitingLine {
            match host::read_connect_line(&mut c.stream, &mut c.line) {
                LineRead::More => {}
                LineRead::Bad => c.done = true,
                LineRead::Port(port) => {
                    let local = self.allocate_local_port(port);
                    let c = self.conns.get_mut(&token).expect("still there");
                    c.local_port = local;
                    c.peer_port = port;
                    c.state = State::Connecting;
                    c.owed = owed::REQUEST;
                    c.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
                    self.by_port.insert((local, port), token);
                }
            }
            return;
        }
        // A hang-up or error with guest bytes waiting: the write tells (EPIPE) and the
        // connection ends, rather than the event coming back on every wait.
        if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR)
            && !c.tx_buf.is_empty()
            && let Err(e) = c.flush_to_host()
        {
            log::debug!("vsock {}: host side ended: {e:?}", self.id);
            c.reset();
            return;
        }
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            // Read (data, EOF or the error) when the guest can take it.
            c.readable = true;
        }
    }

    /// A free host port for a connection to guest port `peer`.
    fn allocate_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.by_port.contains_key(&(port, peer)) {
                return port;
            }
        }
    }

    /// Connections past their deadline end: a host client that sent no line is closed, a
    /// REQUEST the guest did not answer and a close that did not finish are reset.
    pub(super) fn check_deadlines(&mut self) {
        let now = Instant::now();
        self.listener_backoff = false;
        for c in self.conns.values_mut() {
            if c.deadline.is_some_and(|d| d <= now) {
                c.deadline = None;
                if c.state == State::AwaitingLine {
                    c.done = true;
                } else {
                    c.reset();
                }
            }
        }
    }

    /// After a restore: tells the guest its connections are gone (event queue).
    pub(super) fn deliver_transport_reset(&mut self) {
        if !self.transport_reset_owed {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let Some(chain) = active.queues[EVQ].pop_descriptor_chain(&mem) else {
            return;
        };
        let head = chain.head_index();
        let written = Writer::new(&mem, chain)
            .ok()
            .filter(|w| w.available_bytes() >= 4)
            .and_then(|mut w| w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).ok());
        let len = if written.is_some() { 4 } else { 0 };
        if active.queues[EVQ].add_used(&mem, head, len).is_ok() {
            let avail = active.queues[EVQ].avail_idx(&mem, Ordering::Acquire);
            active.interrupt.signal_used_queue();
            self.transport_reset_owed = written.is_none();
            if written.is_some() {
                self.reset_unacked = Some((Instant::now(), avail.unwrap_or_default()));
            }
        }
    }
}

/// Writes `hdr` and `data` into the chain; 0 when guest memory refuses them (counted).
fn put_packet(writer: &mut Writer<'_>, hdr: &Header, data: &[u8], stats: &mut VsockStats) -> u32 {
    if writer.write_all(&hdr.to_bytes()).is_err() || writer.write_all(data).is_err() {
        stats.malformed += 1;
        return 0;
    }
    stats.rx_packets += 1;
    (HDR_LEN + data.len()) as u32
}
