//! Saved state of a network interface: what the guest sees of it (MAC, offered features) and
//! whether it broke a queue. The TAP comes from the configuration and the queues are saved with
//! the transport, a TX chain the TAP refused given back first (`active_queues`). A frame read
//! from the TAP but not yet delivered holds no guest buffer and is not saved: the guest sees it
//! lost, as on a real link.

use serde::{Deserialize, Serialize};

use super::frame::offered_features;
use super::{Net, config_space};
use crate::config::net::MacAddr;
use crate::devices::state::{StateError, check_version};

/// The guest-visible state of one virtio-net device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Layout version (`NetState::VERSION`).
    pub version: u16,
    /// The interface id.
    pub id: String,
    /// The MAC address in the config space.
    pub mac: [u8; 6],
    /// The features offered to the guest.
    pub features: u64,
    /// The guest corrupted a queue; nothing moves until it resets the device.
    pub broken: bool,
}

impl NetState {
    /// The layout this build writes and reads.
    pub const VERSION: u16 = 1;
}

impl Net {
    /// The device's guest-visible state.
    pub fn save(&self) -> NetState {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        NetState {
            version: NetState::VERSION,
            id: self.id.clone(),
            mac,
            features: offered_features(),
            broken: self.broken,
        }
    }

    /// Applies `state` to this device, built from the same configuration: the guest keeps the
    /// MAC it knew, even one Ember generated.
    pub fn restore(&mut self, state: &NetState) -> Result<(), StateError> {
        check_version("virtio-net", state.version, NetState::VERSION)?;
        let mismatch = |field| StateError::Mismatch {
            what: self.name(),
            field,
        };
        if state.id != self.id {
            return Err(mismatch("the id"));
        }
        if state.features != offered_features() {
            return Err(mismatch("the features"));
        }
        self.config = config_space(MacAddr(state.mac));
        self.broken = state.broken;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;
    use std::sync::Arc;

    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueState};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::*;
    use crate::devices::virtio::net::rxtx::Backend;
    use crate::devices::virtio::net::tap::Tap;
    use crate::devices::virtio::test_utils::{desc, memory, post, used};
    use crate::devices::virtio::{
        ActivateContext, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt,
    };

    const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
    /// Where the TX mock queue lives (the RX one is at 0).
    const TX_QUEUE: u64 = 0x1_0000;
    /// Frame buffers, one 4 KiB page per descriptor index.
    const BUF: u64 = 0x10_0000;

    /// A NIC whose "TAP" is one end of a datagram socket pair; the other end is returned.
    fn nic() -> (Net, UnixDatagram) {
        let (ours, peer) = UnixDatagram::pair().expect("socket pair");
        ours.set_nonblocking(true).expect("non-blocking");
        peer.set_nonblocking(true).expect("non-blocking");
        let tap = Tap::from_file(File::from(OwnedFd::from(ours)), "test0");
        (Net::with_tap("eth0", tap, MAC).expect("nic"), peer)
    }

    fn activate(net: &mut Net, mem: &GuestMemoryMmap, queues: Vec<Queue>) {
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        net.activate(ActivateContext {
            mem: mem.clone(),
            queues,
            acked_features: VIRTIO_F_VERSION_1,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
        })
        .expect("activates");
    }

    /// A NIC activated on fresh mock queues (RX at 0, TX at `TX_QUEUE`); returns the TX one.
    fn started(mem: &GuestMemoryMmap) -> (Net, UnixDatagram, MockSplitQueue<'_, GuestMemoryMmap>) {
        let rx = MockSplitQueue::new(mem, 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(TX_QUEUE), 16);
        let (mut net, peer) = nic();
        let queues = vec![
            rx.create_queue().expect("rx"),
            tx.create_queue().expect("tx"),
        ];
        activate(&mut net, mem, queues);
        (net, peer, tx)
    }

    /// Posts a TX frame (12-byte header, then `seed` bytes) at descriptor `index`.
    fn post_frame(mem: &GuestMemoryMmap, tx: &MockSplitQueue<'_, GuestMemoryMmap>, index: u16) {
        let addr = BUF + u64::from(index) * 0x1000;
        let frame = vec![index as u8 + 1; 12 + 60];
        mem.write_slice(&frame, GuestAddress(addr)).expect("frame");
        post(tx, index, &[desc(addr, frame.len() as u32, 0)]);
    }

    fn received(peer: &UnixDatagram) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = peer.recv(&mut buf) {
            frames.push(buf[..n].to_vec());
        }
        frames
    }

    /// Saves `net`, sends the state through JSON, and restores it into a fresh NIC activated
    /// with the saved queues, as the transport's restore does.
    fn round_trip(net: &Net, mem: &GuestMemoryMmap) -> (Net, UnixDatagram) {
        let json = serde_json::to_string(&net.save()).expect("serialize");
        let queues: Vec<Queue> = net
            .active_queues()
            .expect("activated")
            .into_iter()
            .map(|q: QueueState| Queue::try_from(q).expect("saved queue"))
            .collect();
        let (mut fresh, peer) = nic();
        activate(&mut fresh, mem, queues);
        fresh
            .restore(&serde_json::from_str(&json).expect("deserialize"))
            .expect("restore");
        (fresh, peer)
    }

    #[test]
    fn test_net_state_round_trip_sends_only_the_next_frame() {
        let mem = memory();
        let (mut net, peer, tx) = started(&mem);
        post_frame(&mem, &tx, 0);
        net.process_tx();
        assert_eq!(received(&peer).len(), 1);

        let (mut restored, peer) = round_trip(&net, &mem);
        post_frame(&mem, &tx, 1);
        restored.process_tx();

        assert_eq!(
            received(&peer),
            vec![vec![2u8; 72]],
            "frame 0 not sent again"
        );
        assert_eq!(tx.used().idx().load(), 2);
        assert_eq!(used(&tx, 1), (1, 0));
        assert_eq!(restored.save(), net.save());
    }

    #[test]
    fn test_net_state_gives_back_the_frame_the_tap_refused() {
        let mem = memory();
        let (mut net, peer, tx) = started(&mem);
        // The peer reads nothing: fill its receive queue until the NIC's writes would block.
        while net.tap.write_frame(&[0u8; 64]).is_ok() {}
        post_frame(&mem, &tx, 0);
        net.process_tx();
        assert!(net.tx.is_blocked());
        assert_eq!(tx.used().idx().load(), 0);

        let (mut restored, fresh_peer) = round_trip(&net, &mem);
        restored.process_tx();

        drop(peer);
        assert_eq!(received(&fresh_peer), vec![vec![1u8; 72]]);
        assert_eq!(tx.used().idx().load(), 1);
    }

    #[test]
    fn test_net_restore_keeps_the_saved_mac_and_refuses_another_id() {
        let (net, _peer) = nic();
        let mut state = net.save();
        state.mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        let (mut fresh, _peer2) = nic();
        let mut other = state.clone();
        other.id = "eth9".into();

        fresh.restore(&state).expect("restore");
        assert!(matches!(
            fresh.restore(&other),
            Err(StateError::Mismatch {
                field: "the id",
                ..
            })
        ));

        let mut config = [0u8; 6];
        fresh.read_config(0, &mut config);
        assert_eq!(config, state.mac);
    }
}
