//! What a virtio-net frame looks like on both sides of Ember: the 12-byte `virtio_net_hdr_v1`
//! in front of every Ethernet frame, the size limits, the feature bits Ember offers and the
//! TAP offloads that follow from what the guest accepted, and the device's counters.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, virtio_net_hdr_v1,
};

use crate::devices::virtio::{
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Size of `virtio_net_hdr_v1`, the header of every frame with VIRTIO_F_VERSION_1 (and the
/// vnet header size Ember sets on the TAP, so the header passes through unchanged).
pub const VNET_HDR_LEN: usize = std::mem::size_of::<virtio_net_hdr_v1>();
/// Offset of `num_buffers` in the header (the TAP leaves it alone; the device sets it).
const NUM_BUFFERS_OFFSET: usize = 10;
/// Largest Ethernet frame Ember moves: a 64 KiB GSO packet plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65536 + 18;
/// Largest buffer (header + frame) in either direction.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// Feature bits Ember's virtio-net offers (VERSION_1 included).
pub fn offered_features() -> u64 {
    VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_EVENT_IDX
        | VIRTIO_RING_F_INDIRECT_DESC
        | (1 << VIRTIO_NET_F_MAC)
        | (1 << VIRTIO_NET_F_STATUS)
        | (1 << VIRTIO_NET_F_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_TSO6)
        | (1 << VIRTIO_NET_F_GUEST_UFO)
        | (1 << VIRTIO_NET_F_HOST_TSO4)
        | (1 << VIRTIO_NET_F_HOST_TSO6)
        | (1 << VIRTIO_NET_F_HOST_UFO)
}

/// The TUNSETOFFLOAD flags for the features the guest acked: what the host may hand the guest
/// without finishing it first. Partial checksums need GUEST_CSUM; GSO needs it too (the TAP
/// refuses TSO without checksum offload, and so does the virtio spec).
pub fn tap_offload_flags(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

/// Sets `num_buffers` in a received frame's header: the TAP skips those two bytes, and without
/// VIRTIO_NET_F_MRG_RXBUF the device must report 1 (one chain per frame).
pub fn set_num_buffers(frame: &mut [u8], count: u16) {
    if let Some(field) = frame.get_mut(NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2) {
        field.copy_from_slice(&count.to_le_bytes());
    }
}

/// Counters of one virtio-net device: traffic, and everything dropped on the way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames sent from the guest to the TAP.
    pub tx_frames: u64,
    /// Bytes of those frames (headers included).
    pub tx_bytes: u64,
    /// Guest TX chains dropped as malformed: shorter than the header, beyond guest memory,
    /// larger than `MAX_BUFFER_LEN`, or with device-writable descriptors.
    pub tx_malformed: u64,
    /// Frames the TAP refused (write errors other than "would block").
    pub tx_errors: u64,
    /// Times a TAP write would have blocked (the chain waits for EPOLLOUT).
    pub tx_blocked: u64,
    /// Frames delivered from the TAP to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames (headers included).
    pub rx_bytes: u64,
    /// Guest RX chains returned unused as malformed: read-only descriptors, beyond guest
    /// memory, or shorter than the header.
    pub rx_malformed: u64,
    /// Frames dropped because the guest's buffer could not hold them, or because the TAP
    /// handed over something shorter than a header.
    pub rx_dropped: u64,
    /// Times the guest had no RX buffer for a waiting frame (Ember then stops reading the TAP).
    pub rx_no_buffers: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vnet_hdr_len_is_twelve() {
        assert_eq!(VNET_HDR_LEN, 12);
        assert_eq!(MAX_BUFFER_LEN, 12 + 65554);
    }

    #[test]
    fn test_offload_flags_without_guest_csum_are_zero() {
        let acked = (1 << VIRTIO_NET_F_GUEST_TSO4) | (1 << VIRTIO_NET_F_GUEST_TSO6);
        assert_eq!(tap_offload_flags(acked), 0);
        assert_eq!(tap_offload_flags(0), 0);
    }

    #[test]
    fn test_offload_flags_follow_guest_features() {
        assert_eq!(
            tap_offload_flags(1 << VIRTIO_NET_F_GUEST_CSUM),
            libc::TUN_F_CSUM
        );
        let all = offered_features();
        assert_eq!(
            tap_offload_flags(all),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO
        );
        let tso4 = (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4);
        assert_eq!(tap_offload_flags(tso4), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
    }

    #[test]
    fn test_offload_flags_ignore_host_side_features() {
        let host_only = (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4);
        assert_eq!(tap_offload_flags(host_only), 0);
    }

    #[test]
    fn test_set_num_buffers_writes_le_and_ignores_short_frames() {
        let mut frame = [0xffu8; 14];
        set_num_buffers(&mut frame, 1);
        assert_eq!(&frame[10..12], &[1, 0]);
        assert_eq!(frame[9], 0xff);
        assert_eq!(frame[12], 0xff);
        let mut short = [0u8; 4];
        set_num_buffers(&mut short, 1);
        assert_eq!(short, [0; 4]);
    }

    #[test]
    fn test_offered_features_include_mac_status_and_rings() {
        let f = offered_features();
        for bit in [VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_CSUM] {
            assert_ne!(f & (1 << bit), 0, "bit {bit}");
        }
        assert_ne!(f & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_ne!(f & VIRTIO_RING_F_INDIRECT_DESC, 0);
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    }
}
