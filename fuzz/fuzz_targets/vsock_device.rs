//! The whole vsock device on its event loop, as a hostile guest and host would drive it: the
//! guest sends packets with fuzzer-picked headers (right or wrong CIDs, any op, type, flags,
//! credit, a length that fits its descriptor or not), posts receive buffers or not, patches its
//! rings and buffers with anything, quiesces and wakes the device; host clients connect to the
//! vsock socket and write anything (a CONNECT line or not), a host listener on `<uds>_52`
//! accepts guest connections and reads or does not. Checked: no panic, the loop goes idle
//! (no spin), the connection table stays within its bound.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use ember::devices::virtio::vsock::packet::{HDR_LEN, HOST_CID, Header};
use ember::devices::virtio::vsock::{MAX_CONNECTIONS, Vsock};
use ember::devices::virtio::{ActivateContext, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt};
use ember_fuzz::{MEM_SIZE, memory, patch, queue};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const GUEST_CID: u32 = 3;
const QSIZE: u16 = 16;
/// Rings of queue q at q * 0x400: descriptors, avail at +0x100, used at +0x180.
const RING_STRIDE: u64 = 0x400;
const RX_BUFS: u64 = 0x2000;
const RX_BUF_LEN: u32 = 0x200;
const TX_BUFS: u64 = 0x6000;
const TX_BUF_LEN: u64 = 0x400;

#[derive(Arbitrary, Debug)]
struct Pkt {
    right_src: bool,
    right_dst: bool,
    stream: bool,
    src_port: u8,
    dst_port_52: bool,
    dst_port: u32,
    op: u8,
    flags: u8,
    buf_alloc: u16,
    fwd_cnt: u32,
    len: u16,
    desc_len: u16,
    payload_seed: u8,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Tx(Vec<Pkt>),
    PostRx(u8),
    HostConnect(Vec<u8>),
    HostWrite(u8, Vec<u8>),
    HostRead,
    HostClose(u8),
    Patch(u16, Vec<u8>),
    Quiesce,
    Wake,
}

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

struct Guest {
    tx_next: u16,
    rx_next: u16,
}

fn publish(mem: &GuestMemoryMmap, q: u64, slot: u16, addr: u64, len: u32, write: bool) {
    let base = q * RING_STRIDE;
    let d = base + u64::from(slot % QSIZE) * 16;
    patch(mem, d, &addr.to_le_bytes());
    patch(mem, d + 8, &len.to_le_bytes());
    patch(mem, d + 12, &(if write { 2u16 } else { 0 }).to_le_bytes());
    patch(mem, d + 14, &0u16.to_le_bytes());
    patch(
        mem,
        base + 0x100 + 4 + u64::from(slot % QSIZE) * 2,
        &(slot % QSIZE).to_le_bytes(),
    );
    patch(mem, base + 0x100 + 2, &slot.wrapping_add(1).to_le_bytes());
}

fuzz_target!(|steps: Vec<Step>| {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let uds = std::path::PathBuf::from(format!("{dir}/ember-fuzz-vsock-{}", std::process::id()));
    let port52 = std::path::PathBuf::from(format!("{}_52", uds.display()));
    let _ = std::fs::remove_file(&uds);
    let _ = std::fs::remove_file(&port52);
    let listener = UnixListener::bind(&port52).expect("host listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let mem = memory(MEM_SIZE);
    let vsock = Arc::new(Mutex::new(
        Vsock::new("fuzz", GUEST_CID, &uds).expect("vsock"),
    ));
    let queues: Option<Vec<_>> = (0..3u64)
        .map(|q| {
            let base = q * RING_STRIDE;
            queue(&mem, 256, QSIZE, base, base + 0x100, base + 0x180, false)
        })
        .collect();
    let queues = queues.expect("template queues are valid");
    vsock
        .lock()
        .expect("lock")
        .activate(ActivateContext {
            mem: mem.clone(),
            queues,
            acked_features: VIRTIO_F_VERSION_1,
            interrupt: Arc::new(VirtioInterrupt::new(
                EventFd::new(EFD_NONBLOCK).expect("irq"),
            )),
        })
        .expect("activates");
    let mut events: Loop = EventManager::new().expect("epoll");
    events.add_subscriber(vsock.clone());
    let mut guest = Guest {
        tx_next: 0,
        rx_next: 0,
    };
    let mut clients: Vec<UnixStream> = Vec::new();
    let mut accepted: Vec<UnixStream> = Vec::new();
    let kick = |q: usize| {
        let _ = vsock.lock().expect("lock").queue_events()[q].write(1);
    };
    for step in steps.into_iter().take(64) {
        match step {
            Step::Tx(pkts) => {
                for p in pkts.into_iter().take(8) {
                    let hdr = Header {
                        src_cid: if p.right_src { u64::from(GUEST_CID) } else { 7 },
                        dst_cid: if p.right_dst {
                            HOST_CID
                        } else {
                            u64::from(GUEST_CID)
                        },
                        src_port: 1024 + u32::from(p.src_port % 4),
                        dst_port: if p.dst_port_52 { 52 } else { p.dst_port },
                        len: u32::from(p.len),
                        kind: if p.stream { 1 } else { 2 },
                        op: u16::from(p.op % 9),
                        flags: u32::from(p.flags % 4),
                        buf_alloc: u32::from(p.buf_alloc) * 16,
                        fwd_cnt: p.fwd_cnt,
                    };
                    let addr = TX_BUFS + u64::from(guest.tx_next % QSIZE) * TX_BUF_LEN;
                    let desc_len = u32::from(p.desc_len) % TX_BUF_LEN as u32;
                    patch(&mem, addr, &hdr.to_bytes());
                    let payload = vec![p.payload_seed; TX_BUF_LEN as usize - HDR_LEN];
                    patch(&mem, addr + HDR_LEN as u64, &payload);
                    publish(&mem, 1, guest.tx_next, addr, desc_len, false);
                    guest.tx_next = guest.tx_next.wrapping_add(1);
                }
                kick(1);
            }
            Step::PostRx(n) => {
                for _ in 0..n % 17 {
                    let addr = RX_BUFS + u64::from(guest.rx_next % QSIZE) * u64::from(RX_BUF_LEN);
                    publish(&mem, 0, guest.rx_next, addr, RX_BUF_LEN, true);
                    guest.rx_next = guest.rx_next.wrapping_add(1);
                }
                kick(0);
            }
            Step::HostConnect(bytes) => {
                if clients.len() < 8
                    && let Ok(mut c) = UnixStream::connect(&uds)
                {
                    let _ = c.set_nonblocking(true);
                    let _ = c.write(&bytes);
                    clients.push(c);
                }
            }
            Step::HostWrite(i, bytes) => {
                let n = clients.len() + accepted.len();
                if n > 0 {
                    let i = usize::from(i) % n;
                    let s = if i < clients.len() {
                        &mut clients[i]
                    } else {
                        &mut accepted[i - clients.len()]
                    };
                    let _ = s.write(&bytes);
                }
            }
            Step::HostRead => {
                while let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    accepted.push(s);
                }
                let mut buf = [0u8; 4096];
                for s in clients.iter_mut().chain(accepted.iter_mut()) {
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
            Step::HostClose(i) => {
                let n = clients.len() + accepted.len();
                if n > 0 {
                    let i = usize::from(i) % n;
                    if i < clients.len() {
                        clients.remove(i);
                    } else {
                        accepted.remove(i - clients.len());
                    }
                }
            }
            Step::Patch(addr, bytes) => patch(&mem, u64::from(addr), &bytes),
            Step::Quiesce => vsock.lock().expect("lock").quiesce(),
            Step::Wake => vsock.lock().expect("lock").wake(),
        }
        // The loop must go idle: every event handled leaves nothing that fires again by itself.
        let mut idle = false;
        for _ in 0..64 {
            if events.run_with_timeout(0).expect("epoll") == 0 {
                idle = true;
                break;
            }
        }
        assert!(idle, "the vsock event loop keeps firing (spin)");
        assert!(vsock.lock().expect("lock").connection_count() <= MAX_CONNECTIONS);
        let _ = mem.read_obj::<u16>(GuestAddress(0x182));
    }
    drop(events);
    drop(vsock);
    let _ = std::fs::remove_file(&port52);
});
