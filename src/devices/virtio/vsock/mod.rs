//! virtio-vsock with Firecracker's hybrid Unix-socket host side (docs/vsock.md): the device
//! (three queues: RX, TX, event; config space = the guest's CID), its event-loop side (queue
//! notifications, the listener on `uds_path`, one Unix stream per connection, a timer for
//! connection deadlines). The packet checks are in `packet`, one connection's credit and buffers
//! in `conn`, the Unix-socket side in `host`, the queue and socket work in `muxer`.
//!
//! No spin: a host stream is watched for EPOLLIN only while Ember does not already know it is
//! readable and the guest has credit for its bytes; for EPOLLOUT only while guest bytes wait for
//! it. A readable stream that the guest cannot take yet (no credit, no receive buffer) is not
//! watched at all until the guest's credit update or RX notification; the listener is dropped
//! from epoll while accepting fails (EMFILE) and retried on the timer.

pub mod conn;
pub mod host;
mod muxer;
pub mod packet;
pub mod persist;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use self::conn::{Connection, owed};
use self::packet::{Header, MAX_PAYLOAD};
use super::counters::{CounterValues, DeviceCounters};
use super::{ActivateContext, ActivateError, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt};

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
const RX: usize = 0;
const TX: usize = 1;
const EVQ: usize = 2;
/// Most connections at once; more host clients are closed at once, more guest requests reset.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most RSTs for unknown or malformed packets waiting for a guest receive buffer; more are
/// dropped (and counted): a guest that floods without reading cannot grow Ember's memory.
pub const MAX_PENDING_RST: usize = 256;
/// How long a host client has to send its `CONNECT` line, the guest to answer a REQUEST, and a
/// closing connection to finish.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often deadlines are checked while any exists.
const TICK: Duration = Duration::from_millis(250);
/// After a TRANSPORT_RESET, how long the receive queue waits for the guest to acknowledge it
/// (a new event buffer) before packets flow anyway (a driver that never refills the queue).
const RESET_ACK_WAIT: Duration = Duration::from_secs(5);
/// First port Ember gives a host-initiated connection (Firecracker's range starts here too).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Event-loop tokens; connections use `FIRST_CONN_TOKEN` and up.
const TOKEN_LISTENER: u32 = 3;
const TOKEN_TIMER: u32 = 4;
const FIRST_CONN_TOKEN: u32 = 8;

/// Errors while creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The listening socket could not be made.
    #[error("Cannot listen on the vsock socket {0}")]
    Listen(PathBuf, #[source] std::io::Error),
    /// An eventfd or timerfd could not be created.
    #[error("Failed to create an event descriptor for the vsock device")]
    EventFd(#[source] std::io::Error),
}

/// What the device did, for the counters and the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Packets taken from the guest's TX queue.
    pub tx_packets: u64,
    /// Payload bytes from the guest.
    pub tx_bytes: u64,
    /// Packets given to the guest.
    pub rx_packets: u64,
    /// Payload bytes to the guest.
    pub rx_bytes: u64,
    /// Malformed packets from the guest (each answered with a RST where it names a port).
    pub malformed: u64,
    /// RSTs sent to the guest (refusals, failures, malformed packets).
    pub rst_sent: u64,
    /// RSTs not sent because too many were waiting for receive buffers.
    pub rst_dropped: u64,
    /// Connections established, both directions.
    pub connections: u64,
    /// Host clients closed or guest requests refused because the connection table was full.
    pub refused_full: u64,
}

impl From<VsockStats> for CounterValues {
    fn from(s: VsockStats) -> Self {
        CounterValues {
            ops: s.tx_packets + s.rx_packets,
            read_bytes: s.rx_bytes,
            written_bytes: s.tx_bytes,
            errors: s.malformed,
            drops: s.rst_dropped + s.refused_full,
            throttled: 0,
        }
    }
}

struct Active {
    mem: GuestMemoryMmap,
    queues: [Queue; 3],
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-vsock device.
pub struct Vsock {
    id: String,
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// Whether the listener is registered in epoll.
    listener_watched: bool,
    /// Accepting failed (out of descriptors): retry on the next tick.
    listener_backoff: bool,
    timer: TimerFd,
    timer_armed: bool,
    config: [u8; 8],
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
    quiesced: bool,
    broken: bool,
    /// The driver reset the device (on a vCPU thread): drop every connection on the loop.
    drop_all: bool,
    /// A TRANSPORT_RESET event is owed to the guest (after a restore).
    transport_reset_owed: bool,
    /// When the TRANSPORT_RESET went to the guest and the event queue's available index then,
    /// until the guest acknowledges it: it makes the event buffer available again after
    /// handling the event (Linux does). Nothing goes to the receive queue meanwhile: a
    /// connection request from the host could otherwise reach the guest before the reset and
    /// be dropped with the stale ones.
    reset_unacked: Option<(std::time::Instant, std::num::Wrapping<u16>)>,
    /// The guest had no receive buffer when a packet was waiting.
    rx_starved: bool,
    conns: BTreeMap<u32, Connection>,
    by_port: HashMap<(u32, u32), u32>,
    /// Last connection served on the RX queue (round robin).
    rx_cursor: u32,
    next_token: u32,
    next_local_port: u32,
    rst_queue: VecDeque<Header>,
    scratch: Vec<u8>,
    stats: VsockStats,
    counters: Arc<DeviceCounters>,
}

impl Vsock {
    /// A vsock device for guest `guest_cid`, listening on `uds_path`.
    pub fn new(id: &str, guest_cid: u32, uds_path: &Path) -> Result<Self, VsockError> {
        let listener =
            host::listen(uds_path).map_err(|e| VsockError::Listen(uds_path.to_owned(), e))?;
        let queue_evts = (0..QUEUE_SIZES.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let timer = TimerFd::new().map_err(|e| VsockError::EventFd(e.into()))?;
        log::info!(
            "vsock {id}: guest CID {guest_cid}, host socket {}",
            uds_path.display()
        );
        Ok(Vsock {
            id: id.to_string(),
            guest_cid: u64::from(guest_cid),
            uds_path: uds_path.to_owned(),
            listener,
            listener_watched: false,
            listener_backoff: false,
            timer,
            timer_armed: false,
            config: u64::from(guest_cid).to_le_bytes(),
            queue_evts,
            active: None,
            quiesced: false,
            broken: false,
            drop_all: false,
            transport_reset_owed: false,
            reset_unacked: None,
            rx_starved: false,
            conns: BTreeMap::new(),
            by_port: HashMap::new(),
            rx_cursor: 0,
            next_token: FIRST_CONN_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            rst_queue: VecDeque::new(),
            scratch: vec![0u8; MAX_PAYLOAD as usize],
            stats: VsockStats::default(),
            counters: Arc::default(),
        })
    }

    /// What the device did so far.
    pub fn stats(&self) -> VsockStats {
        self.stats
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn runnable(&self) -> bool {
        self.active.is_some() && !self.quiesced && !self.broken
    }

    /// Drops the connections that ended (through `ops`, while their fds are still open): the
    /// host stream closes now; a reset one leaves its RST in the queue for the guest.
    fn drop_finished(&mut self, ops: &mut EventOps) {
        let doomed: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| self.drop_all || c.is_done() || c.owed & owed::RST != 0)
            .map(|(&t, _)| t)
            .collect();
        for token in doomed {
            let Some(c) = self.conns.remove(&token) else {
                continue;
            };
            if !c.interest.is_empty() {
                let _ = ops.remove(Events::with_data_raw(
                    c.stream.as_raw_fd(),
                    token,
                    c.interest,
                ));
            }
            self.by_port.remove(&(c.local_port, c.peer_port));
            if !self.drop_all && !c.done && c.state != conn::State::AwaitingLine {
                // As if the guest had sent a packet on it: the answer goes to its port.
                self.queue_rst(&Header {
                    src_port: c.peer_port,
                    dst_port: c.local_port,
                    ..Header::default()
                });
            }
        }
        self.drop_all = false;
    }

    /// Brings every epoll registration (listener, streams, timer) in line with what can make
    /// progress now, after dropping the connections that ended.
    fn update_registrations(&mut self, ops: &mut EventOps) {
        self.drop_finished(ops);
        let runnable = self.runnable();
        for (&token, c) in self.conns.iter_mut() {
            let want = if runnable {
                c.wanted_interest()
            } else {
                EventSet::empty()
            };
            if want != c.interest {
                let fd = c.stream.as_raw_fd();
                let result = if want.is_empty() {
                    ops.remove(Events::with_data_raw(fd, token, c.interest))
                } else if c.interest.is_empty() {
                    ops.add(Events::with_data_raw(fd, token, want))
                } else {
                    ops.modify(Events::with_data_raw(fd, token, want))
                };
                match result {
                    Ok(()) => c.interest = want,
                    Err(e) => log::error!("vsock {}: cannot watch a connection: {e:?}", self.id),
                }
            }
        }
        let listen = runnable && !self.listener_backoff;
        if listen != self.listener_watched {
            let events =
                Events::with_data_raw(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN);
            let result = if listen {
                ops.add(events)
            } else {
                ops.remove(events)
            };
            match result {
                Ok(()) => self.listener_watched = listen,
                Err(e) => log::error!("vsock {}: cannot watch its socket: {e:?}", self.id),
            }
        }
        // Deadlines wait while the VM is paused (the guest cannot answer then).
        let tick = runnable
            && (self.listener_backoff
                || self.reset_unacked.is_some()
                || self.conns.values().any(|c| c.deadline.is_some()));
        if tick != self.timer_armed {
            let result = if tick {
                self.timer.reset(TICK, Some(TICK))
            } else {
                self.timer.clear()
            };
            match result {
                Ok(()) => self.timer_armed = tick,
                Err(e) => log::error!("vsock {}: cannot set its timer: {e}", self.id),
            }
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        std::fs::remove_file(&self.uds_path).ok();
    }
}

impl VirtioDevice for Vsock {
    fn id(&self) -> &str {
        &self.id
    }

    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn avail_features(&self) -> u64 {
        // Stream sockets only (no VIRTIO_VSOCK_F_SEQPACKET); no EVENT_IDX: the device
        // signals every used buffer.
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let queues: [Queue; 3] = ctx
            .queues
            .try_into()
            .map_err(|_| ActivateError::BadQueue(0, "three queues expected".into()))?;
        for (i, q) in queues.iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::BadQueue(i, "not ready".into()));
            }
        }
        self.active = Some(Active {
            mem: ctx.mem,
            queues,
            interrupt: ctx.interrupt,
        });
        self.broken = false;
        // On the vCPU thread: the event loop looks at the queues and starts listening.
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        self.rst_queue.clear();
        // The connections hold epoll registrations: the loop drops them (kicked here).
        self.drop_all = true;
        let _ = self.queue_evts[RX].write(1);
    }

    fn quiesce(&mut self) {
        // Like a reset, the next event finds nothing runnable and drops the registrations.
        self.quiesced = true;
    }

    fn wake(&mut self) {
        self.quiesced = false;
        for evt in &self.queue_evts {
            if let Err(e) = evt.write(1) {
                log::error!("vsock {}: cannot wake its queues: {e}", self.id);
            }
        }
    }

    fn active_queues(&self) -> Option<Vec<QueueState>> {
        // Every chain taken is completed before the loop returns.
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| q.state()).collect())
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        match token {
            t if (t as usize) < QUEUE_SIZES.len() => {
                let _ = self.queue_evts[t as usize].read();
            }
            TOKEN_TIMER => {
                let _ = self.timer.wait();
            }
            _ => {}
        }
        if self.runnable() {
            match token {
                t if t as usize == RX => self.rx_starved = false,
                t if t as usize == TX => self.process_tx(),
                t if t as usize == EVQ => {}
                TOKEN_LISTENER => self.accept_host_clients(),
                TOKEN_TIMER => self.check_deadlines(),
                t => self.connection_event(t, events.event_set()),
            }
            self.deliver_transport_reset();
            self.drop_finished(ops);
            self.process_rx();
        }
        self.update_registrations(ops);
        self.counters.publish(self.stats.into());
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("vsock {}: cannot watch its queues: {e:?}", self.id);
            }
        }
        if let Err(e) = ops.add(Events::with_data(&self.timer, TOKEN_TIMER, EventSet::IN)) {
            log::error!("vsock {}: cannot watch its timer: {e:?}", self.id);
        }
        // The listener and the streams are watched once the driver activates the device.
    }
}
