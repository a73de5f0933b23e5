//! Device-level tests of `Vsock`: guest memory with the three queues driven as a driver would
//! (header and payload in one descriptor), the event loop run as Ember runs it, and real Unix
//! sockets on the host side.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::conn::BUF_ALLOC;
use super::packet::{HOST_CID, Header, Op, TYPE_STREAM};
use super::*;
use crate::devices::virtio::test_utils::memory;

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 16;
const RX_BUF: u32 = 4096 + 44;

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// One split queue in guest memory: descriptors at `base`, avail at +0x1000, used at +0x2000;
/// descriptor i always points at buffer i.
struct Vq {
    base: u64,
    bufs: u64,
    stride: u64,
    next_avail: u16,
    last_used: u16,
}

impl Vq {
    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).expect("queue");
        q.set_size(QSIZE);
        q.set_ready(true);
        q.set_desc_table_address(Some(self.base as u32), Some(0));
        q.set_avail_ring_address(Some(self.base as u32 + 0x1000), Some(0));
        q.set_used_ring_address(Some(self.base as u32 + 0x2000), Some(0));
        q
    }

    /// Posts buffer `next_avail % QSIZE` (`len` bytes, device-writable or not).
    fn post(&mut self, mem: &GuestMemoryMmap, len: u32, write: bool) -> u64 {
        let i = self.next_avail % QSIZE;
        let addr = self.bufs + u64::from(i) * self.stride;
        let d = self.base + u64::from(i) * 16;
        mem.write_obj(addr, GuestAddress(d)).expect("desc addr");
        mem.write_obj(len, GuestAddress(d + 8)).expect("desc len");
        mem.write_obj(if write { 2u16 } else { 0 }, GuestAddress(d + 12))
            .expect("flags");
        mem.write_obj(0u16, GuestAddress(d + 14)).expect("next");
        let slot = self.base + 0x1000 + 4 + u64::from(self.next_avail % QSIZE) * 2;
        mem.write_obj(i, GuestAddress(slot)).expect("avail ring");
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.write_obj(self.next_avail, GuestAddress(self.base + 0x1000 + 2))
            .expect("avail idx");
        addr
    }

    /// The next used entry: (buffer address, used length).
    fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u64, u32)> {
        let idx: u16 = mem
            .read_obj(GuestAddress(self.base + 0x2002))
            .expect("used idx");
        if idx == self.last_used {
            return None;
        }
        let e = self.base + 0x2000 + 4 + u64::from(self.last_used % QSIZE) * 8;
        let id: u32 = mem.read_obj(GuestAddress(e)).expect("id");
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).expect("len");
        self.last_used = self.last_used.wrapping_add(1);
        Some((self.bufs + u64::from(id) * self.stride, len))
    }
}

struct Harness {
    mem: GuestMemoryMmap,
    vsock: Arc<Mutex<Vsock>>,
    events: Loop,
    rx: Vq,
    tx: Vq,
    path: std::path::PathBuf,
    /// The guest's receive buffer as it advertises it, and what it consumed.
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Harness {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("ember-vsock-{name}-{}", std::process::id()));
        std::fs::remove_file(&path).ok();
        let mem = memory();
        let rx = Vq {
            base: 0,
            bufs: 0x28_0000,
            stride: 0x2000,
            next_avail: 0,
            last_used: 0,
        };
        let tx = Vq {
            base: 0x4000,
            bufs: 0x10_0000,
            stride: 0x1_1000,
            next_avail: 0,
            last_used: 0,
        };
        let evq = Vq {
            base: 0x8000,
            bufs: 0x3f_0000,
            stride: 0x10,
            next_avail: 0,
            last_used: 0,
        };
        let vsock = Arc::new(Mutex::new(
            Vsock::new("vsock0", GUEST_CID as u32, &path).expect("vsock"),
        ));
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        vsock
            .lock()
            .expect("lock")
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![rx.queue(), tx.queue(), evq.queue()],
                acked_features: VIRTIO_F_VERSION_1,
                interrupt: Arc::new(VirtioInterrupt::new(irq)),
            })
            .expect("activates");
        let mut events: Loop = EventManager::new().expect("epoll");
        events.add_subscriber(vsock.clone());
        let mut h = Harness {
            mem,
            vsock,
            events,
            rx,
            tx,
            path,
            buf_alloc: 1 << 20,
            fwd_cnt: 0,
        };
        for _ in 0..QSIZE {
            h.rx.post(&h.mem, RX_BUF, true);
        }
        h.run();
        h
    }

    /// Runs the event loop until nothing is left to do; returns the events dispatched.
    fn run(&mut self) -> usize {
        let mut total = 0;
        for _ in 0..1000 {
            let n = self.events.run_with_timeout(0).expect("epoll");
            if n == 0 {
                return total;
            }
            total += n;
        }
        panic!("the event loop never went idle (spinning)");
    }

    fn kick(&self, queue: usize) {
        self.vsock.lock().expect("lock").queue_evts[queue]
            .write(1)
            .expect("kick");
    }

    fn header(&self, op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            kind: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The guest sends one packet (header and payload in one descriptor).
    fn send(&mut self, hdr: Header, data: &[u8]) {
        let addr = self.tx.post(&self.mem, (44 + data.len()) as u32, false);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .expect("hdr");
        self.mem
            .write_slice(data, GuestAddress(addr + 44))
            .expect("data");
        self.kick(TX);
        self.run();
        while self.tx.pop_used(&self.mem).is_some() {}
    }

    /// The next packet the device gave the guest (its buffer is posted again).
    fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let (addr, len) = self.rx.pop_used(&self.mem)?;
        let mut raw = [0u8; 44];
        self.mem
            .read_slice(&mut raw, GuestAddress(addr))
            .expect("hdr");
        let hdr = Header::from_bytes(&raw);
        assert_eq!(
            len as usize,
            44 + hdr.len as usize,
            "used length = header + payload"
        );
        let mut data = vec![0u8; hdr.len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(addr + 44))
            .expect("data");
        self.fwd_cnt = self.fwd_cnt.wrapping_add(hdr.len);
        self.rx.post(&self.mem, RX_BUF, true);
        Some((hdr, data))
    }

    fn stats(&self) -> VsockStats {
        self.vsock.lock().expect("lock").stats()
    }

    /// A guest-initiated connection from guest port 1024 to host port `port`, accepted by the
    /// test's listener; returns the host end.
    fn guest_connect(&mut self, port: u32) -> (UnixListener, UnixStream) {
        let listener = UnixListener::bind(host::port_path(&self.path, port)).expect("bind");
        self.send(self.header(Op::Request, 1024, port, 0), &[]);
        let (hdr, _) = self.recv().expect("response");
        assert_eq!(hdr.op, Op::Response as u16);
        assert_eq!(
            (hdr.src_port, hdr.dst_port, hdr.dst_cid),
            (port, 1024, GUEST_CID)
        );
        let (stream, _) = listener.accept().expect("Ember connected");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        (listener, stream)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for port in [52, 53] {
            std::fs::remove_file(host::port_path(&self.path, port)).ok();
        }
    }
}

#[test]
fn test_vsock_guest_connects_and_data_flows_both_ways() {
    let mut h = Harness::new("guest-init");
    let (_l, mut host) = h.guest_connect(52);

    h.send(h.header(Op::Rw, 1024, 52, 5), b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).expect("host reads");
    assert_eq!(&got, b"hello");

    host.write_all(b"world").expect("host writes");
    h.run();
    let (hdr, data) = h.recv().expect("data to the guest");
    assert_eq!((hdr.op, data.as_slice()), (Op::Rw as u16, &b"world"[..]));
    assert_eq!((hdr.src_port, hdr.dst_port), (52, 1024));
    assert_eq!(hdr.buf_alloc, BUF_ALLOC);

    // The host closes: the guest is told the host sends no more.
    drop(host);
    h.run();
    let (hdr, _) = h.recv().expect("shutdown");
    assert_eq!(hdr.op, Op::Shutdown as u16);
    h.send(h.header(Op::Rst, 1024, 52, 0), &[]);
    assert_eq!(h.vsock.lock().expect("lock").connection_count(), 0);
    assert_eq!(h.stats().connections, 1);
}

#[test]
fn test_vsock_host_connects_with_connect_line_and_gets_ok() {
    let mut h = Harness::new("host-init");
    let mut client = UnixStream::connect(&h.path).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    client.write_all(b"CONNECT 52\nearly").expect("line");
    h.run();
    let (req, _) = h.recv().expect("request");
    assert_eq!(req.op, Op::Request as u16);
    assert_eq!(req.dst_port, 52);
    assert!(req.src_port >= 1 << 30);

    let mut resp = h.header(Op::Response, 52, req.src_port, 0);
    resp.src_port = 52;
    resp.dst_port = req.src_port;
    h.send(resp, &[]);
    let mut line = [0u8; 14];
    client.read_exact(&mut line).expect("OK line");
    assert_eq!(
        std::str::from_utf8(&line).expect("utf8"),
        format!("OK {}\n", req.src_port)
    );

    // The bytes written after the line reach the guest as data.
    h.run();
    let (hdr, data) = h.recv().expect("early data");
    assert_eq!((hdr.op, data.as_slice()), (Op::Rw as u16, &b"early"[..]));
}

#[test]
fn test_vsock_host_client_with_a_bad_line_is_closed() {
    let mut h = Harness::new("bad-line");
    let mut client = UnixStream::connect(&h.path).expect("connect");
    client.write_all(b"HELLO 52\n").expect("line");
    h.run();
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).expect("EOF"), 0);
    assert!(h.recv().is_none(), "nothing reached the guest");
}

#[test]
fn test_vsock_malformed_packets_get_rst_and_are_counted() {
    let mut h = Harness::new("malformed");
    let bad = [
        Header {
            src_cid: 7,
            ..h.header(Op::Rw, 1, 2, 0)
        },
        Header {
            dst_cid: 9,
            ..h.header(Op::Rw, 1, 2, 0)
        },
        Header {
            op: 42,
            ..h.header(Op::Rw, 1, 2, 0)
        },
        Header {
            kind: 2,
            ..h.header(Op::Request, 1, 2, 0)
        },
        h.header(Op::Rw, 1, 2, 1000), // longer than the descriptor holds
    ];
    for hdr in bad {
        h.send(hdr, &[]);
        let (rst, _) = h.recv().expect("a RST");
        assert_eq!(rst.op, Op::Rst as u16);
        assert_eq!((rst.src_port, rst.dst_port), (2, 1));
    }
    // A RST is never answered; a short chain has no ports to answer.
    h.send(
        Header {
            src_cid: 7,
            ..h.header(Op::Rst, 1, 2, 0)
        },
        &[],
    );
    let addr = h.tx.post(&h.mem, 10, false);
    h.mem
        .write_slice(&[0u8; 10], GuestAddress(addr))
        .expect("short");
    h.kick(TX);
    h.run();
    assert!(h.recv().is_none());
    assert_eq!(h.stats().malformed, 7);
    assert_eq!(h.vsock.lock().expect("lock").counters().values().errors, 7);
}

#[test]
fn test_vsock_unknown_port_and_unknown_connection_are_reset() {
    let mut h = Harness::new("unknown");
    h.send(h.header(Op::Request, 1024, 99, 0), &[]);
    assert_eq!(h.recv().expect("rst").0.op, Op::Rst as u16);
    h.send(h.header(Op::Rw, 1024, 99, 3), b"abc");
    assert_eq!(h.recv().expect("rst").0.op, Op::Rst as u16);
    assert_eq!(h.stats().malformed, 0, "valid packets, just no connection");
}

#[test]
fn test_vsock_host_to_guest_respects_guest_credit_and_does_not_spin() {
    let mut h = Harness::new("credit");
    h.buf_alloc = 8192;
    let (_l, mut host) = h.guest_connect(52);
    host.set_nonblocking(true).expect("nonblocking");
    let sent = vec![0x5au8; 64 * 1024];
    host.write_all(&sent).expect("host writes 64 KiB");
    h.run();
    let mut got = 0;
    while let Some((hdr, data)) = h.recv() {
        assert_eq!(hdr.op, Op::Rw as u16);
        got += data.len();
    }
    assert_eq!(got, 8192, "exactly the guest's buffer");
    // Readable stream, no credit: nothing is watched, the loop stays idle.
    assert_eq!(h.run(), 0);
    assert_eq!(h.events.run_with_timeout(50).expect("epoll"), 0);

    // The guest consumed it all and says so: the rest flows, a buffer at a time.
    let mut total = got;
    while total < sent.len() {
        h.send(h.header(Op::CreditUpdate, 1024, 52, 0), &[]);
        while let Some((_, data)) = h.recv() {
            total += data.len();
        }
    }
    assert_eq!(total, sent.len());
}

#[test]
fn test_vsock_guest_beyond_credit_is_reset_and_memory_stays_bounded() {
    let mut h = Harness::new("overrun");
    let (_l, _host) = h.guest_connect(52);
    // The host never reads; the guest ignores the credit Ember advertises.
    let chunk = vec![1u8; 64 * 1024];
    let mut rst = None;
    for _ in 0..64 {
        h.send(h.header(Op::Rw, 1024, 52, chunk.len() as u32), &chunk);
        // Credit updates come while the host's socket buffer still takes bytes; ignored.
        if let Some((hdr, _)) =
            std::iter::from_fn(|| h.recv()).find(|(p, _)| p.op != Op::CreditUpdate as u16)
        {
            rst = Some(hdr);
            break;
        }
    }
    let rst = rst.expect("reset before 4 MiB were buffered");
    assert_eq!(rst.op, Op::Rst as u16);
    assert_eq!(h.stats().malformed, 1);
    assert_eq!(h.vsock.lock().expect("lock").connection_count(), 0);
}

#[test]
fn test_vsock_guest_to_host_waits_for_a_slow_host_without_loss() {
    let mut h = Harness::new("slow-host");
    let (_l, mut host) = h.guest_connect(52);
    let mut expected = Vec::new();
    let mut received = Vec::new();
    let mut credit_fwd = 0u32;
    for i in 0..64u32 {
        // Send within the credit Ember last advertised.
        while expected.len() as u32 - credit_fwd + 32 * 1024 > BUF_ALLOC {
            let mut buf = vec![0u8; 16 * 1024];
            let n = host.read(&mut buf).expect("host reads");
            received.extend_from_slice(&buf[..n]);
            h.run();
            while let Some((hdr, _)) = h.recv() {
                assert_eq!(hdr.op, Op::CreditUpdate as u16);
                credit_fwd = hdr.fwd_cnt;
            }
        }
        let data: Vec<u8> = (0..32 * 1024).map(|j| (i * 7 + j) as u8).collect();
        h.send(h.header(Op::Rw, 1024, 52, data.len() as u32), &data);
        expected.extend_from_slice(&data);
    }
    host.set_nonblocking(true).expect("nonblocking");
    while received.len() < expected.len() {
        let mut buf = vec![0u8; 64 * 1024];
        match host.read(&mut buf) {
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(_) => {
                h.run();
            }
        }
    }
    assert!(received == expected, "bytes lost or reordered");
    assert_eq!(h.stats().malformed, 0);
}

#[test]
fn test_vsock_guest_shutdown_closes_the_host_side_and_resets() {
    let mut h = Harness::new("shutdown");
    let (_l, mut host) = h.guest_connect(52);
    let mut shut = h.header(Op::Shutdown, 1024, 52, 0);
    shut.flags = 3;
    h.send(shut, &[]);
    let (rst, _) = h.recv().expect("rst closes it");
    assert_eq!(rst.op, Op::Rst as u16);
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).expect("EOF"), 0);
    assert_eq!(h.vsock.lock().expect("lock").connection_count(), 0);
}

#[test]
fn test_vsock_restore_owes_a_transport_reset_event() {
    let mut h = Harness::new("restore");
    let state = h.vsock.lock().expect("lock").save();
    let evq_buf = 0x3f_0000u64;
    h.mem
        .write_obj(0xffff_ffffu32, GuestAddress(evq_buf))
        .expect("poison");
    let mut evq = Vq {
        base: 0x8000,
        bufs: evq_buf,
        stride: 0x10,
        next_avail: 0,
        last_used: 0,
    };
    evq.post(&h.mem, 4, true);
    h.vsock
        .lock()
        .expect("lock")
        .restore(&state)
        .expect("restore");
    h.kick(EVQ);
    h.run();
    let (_, len) = evq.pop_used(&h.mem).expect("event");
    assert_eq!(len, 4);
    let id: u32 = h.mem.read_obj(GuestAddress(evq_buf)).expect("id");
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    // A host connection made now waits until the guest has handled the reset (its event queue
    // kick): its request cannot be dropped with the stale connections.
    let mut client = UnixStream::connect(&h.path).expect("connect");
    client.write_all(b"CONNECT 52\n").expect("line");
    h.run();
    assert!(
        h.recv().is_none(),
        "no request before the reset is acknowledged"
    );
    evq.post(&h.mem, 4, true);
    h.kick(EVQ);
    h.run();
    let (req, _) = h
        .recv()
        .expect("the request once the guest acknowledged the reset");
    assert_eq!((req.op, req.dst_port), (Op::Request as u16, 52));
    let mut other = state.clone();
    other.guest_cid = 9;
    assert!(h.vsock.lock().expect("lock").restore(&other).is_err());
}

#[test]
fn test_vsock_guest_that_never_reads_cannot_grow_the_rst_queue() {
    let mut h = Harness::new("rst-flood");
    let bad = Header {
        op: 42,
        ..h.header(Op::Rw, 1, 2, 0)
    };
    let sent = QSIZE as usize + MAX_PENDING_RST + 28;
    for _ in 0..sent {
        h.send(bad, &[]);
    }
    let stats = h.stats();
    assert_eq!(stats.malformed, sent as u64);
    assert_eq!(stats.rst_sent, u64::from(QSIZE), "one per receive buffer");
    assert_eq!(stats.rst_dropped, 28);
    assert_eq!(
        h.vsock.lock().expect("lock").rst_queue.len(),
        MAX_PENDING_RST
    );
}

#[test]
fn test_vsock_unanswered_host_connect_times_out_closed_and_cancelled() {
    let mut h = Harness::new("timeout");
    let mut client = UnixStream::connect(&h.path).expect("connect");
    client.write_all(b"CONNECT 52\n").expect("line");
    h.run();
    let (req, _) = h.recv().expect("request");
    assert_eq!(req.op, Op::Request as u16);
    // The guest never answers: within the deadline (plus a tick) the host stream is closed
    // without an OK and the guest gets a RST cancelling the request.
    client
        .set_read_timeout(Some(CONNECT_TIMEOUT * 3))
        .expect("timeout");
    let waiter = std::thread::spawn(move || {
        let mut buf = Vec::new();
        client.read_to_end(&mut buf).map(|_| buf)
    });
    let deadline = std::time::Instant::now() + CONNECT_TIMEOUT * 2;
    let mut rst = None;
    while rst.is_none() && std::time::Instant::now() < deadline {
        h.events.run_with_timeout(100).expect("epoll");
        rst = h.recv();
    }
    let (rst, _) = rst.expect("a RST after the deadline");
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (Op::Rst as u16, req.src_port, 52)
    );
    assert_eq!(
        waiter.join().expect("reader").expect("EOF"),
        b"",
        "no OK line"
    );
    assert_eq!(h.vsock.lock().expect("lock").connection_count(), 0);
    assert_eq!(h.run(), 0, "the timer is disarmed once no deadline is left");
}

#[test]
fn test_vsock_host_gone_with_guest_bytes_waiting_resets_without_spinning() {
    let mut h = Harness::new("host-gone");
    let (_l, host) = h.guest_connect(52);
    // Fill the host socket so that guest bytes wait in Ember, then the host goes away.
    let chunk = vec![3u8; 32 * 1024];
    while h
        .vsock
        .lock()
        .expect("lock")
        .conns
        .values()
        .all(|c| c.tx_buf.is_empty())
    {
        h.send(h.header(Op::Rw, 1024, 52, chunk.len() as u32), &chunk);
        while h.recv().is_some() {}
    }
    drop(host);
    let events = h.run();
    assert!(events < 10, "{events} events for one hang-up");
    let rst = std::iter::from_fn(|| h.recv()).find(|(p, _)| p.op == Op::Rst as u16);
    assert!(rst.is_some(), "the guest is told");
    assert_eq!(h.vsock.lock().expect("lock").connection_count(), 0);
}
