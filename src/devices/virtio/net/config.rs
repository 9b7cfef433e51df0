//! virtio-net MAC addresses, features and configuration space (virtio 1.2, section 5.1).
//!
//! Offered features, and why:
//! - VERSION_1, MAC, STATUS (the link is always up);
//! - MRG_RXBUF: the guest posts page-sized RX buffers and a large frame spans several of
//!   them, instead of every buffer being 64 KiB;
//! - CSUM, HOST_TSO4, HOST_TSO6: the guest hands over partially checksummed frames of up
//!   to 64 KiB; the host kernel finishes the checksum or segments them only if the frame
//!   leaves the host (traffic to the host itself needs neither);
//! - GUEST_CSUM, GUEST_TSO4, GUEST_TSO6: the TAP may hand the guest unchecksummed and
//!   large (GRO'd) frames (TUN_F_CSUM/TSO4/TSO6, set from what the guest accepted);
//! - RING_EVENT_IDX: interrupt and kick suppression by index.
//!
//! Not offered: ECN and UFO/USO (rarely used, extra kernel flags to keep consistent), the
//! control queue, multiqueue, MTU.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::devices::virtio::VIRTIO_F_VERSION_1;

/// Length of `struct virtio_net_hdr_v1` (with `num_buffers`), in front of every frame.
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Maximum size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Ethernet header plus one VLAN tag.
pub const ETH_OVERHEAD: usize = 14 + 4;
/// Longest frame (after the header) either direction: a 64 KiB GSO packet plus the
/// Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65536 + ETH_OVERHEAD;
/// Shortest frame the TAP accepts: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// Most descriptors (iovecs) one frame may use (Linux UIO_MAXIOV).
pub use crate::devices::virtio::queue::MAX_IOVECS;
/// Bytes of the configuration space the device implements: `mac`, `status`,
/// `max_virtqueue_pairs`; later fields read as 0.
pub const CONFIG_SPACE_LEN: usize = 10;

const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// The features the device offers.
pub fn avail_features() -> u64 {
    bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
}

/// Whether `feature` (a bit number) is in `features`.
pub fn has(features: u64, feature: u32) -> bool {
    features & bit(feature) != 0
}

/// The TUNSETOFFLOAD flags for what the guest accepted: the kinds of frames the TAP may
/// hand over to it. TSO needs checksum offload (the kernel refuses TSO without it).
pub fn tap_offloads(acked: u64) -> u32 {
    if !has(acked, VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(acked, VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(acked, VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

/// Guest buffer space (header included) the device must hold before it reads a frame
/// from the TAP: room for the largest frame the TAP can deliver, so that no frame is
/// truncated. `mtu` is the TAP's MTU.
pub fn rx_frame_capacity(acked: u64, mtu: usize) -> usize {
    if tap_offloads(acked) & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        HDR_LEN + MAX_FRAME_LEN
    } else {
        HDR_LEN + (mtu + ETH_OVERHEAD).min(MAX_FRAME_LEN)
    }
}

/// Why a MAC address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("MAC address {0:?} is not six hexadecimal bytes separated by ':'")]
    Syntax(String),
    #[error("MAC address {0} is a multicast address (lowest bit of the first byte set)")]
    Multicast(String),
    #[error("MAC address {0} is all zeros")]
    Zero(String),
}

/// Parses `"02:00:00:00:00:01"`: six two-digit hex bytes separated by ':'. Multicast and
/// all-zero addresses are refused (a NIC's own address must be unicast).
pub fn parse_mac(s: &str) -> Result<[u8; 6], MacError> {
    let syntax = || MacError::Syntax(s.to_string());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(syntax)?;
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(syntax());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
    }
    if parts.next().is_some() {
        return Err(syntax());
    }
    if mac[0] & 1 != 0 {
        return Err(MacError::Multicast(format_mac(&mac)));
    }
    if mac == [0; 6] {
        return Err(MacError::Zero(format_mac(&mac)));
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// A stable locally administered unicast MAC for a TAP: `02:` followed by five bytes of
/// the FNV-1a hash of its name (the same name gives the same address on every run).
pub fn default_mac(tap_name: &str) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tap_name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let h = hash.to_le_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// The encoded configuration space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_LEN],
}

impl ConfigSpace {
    /// `mac`, link up, one queue pair.
    pub fn new(mac: [u8; 6]) -> Self {
        let mut bytes = [0u8; CONFIG_SPACE_LEN];
        bytes[0..6].copy_from_slice(&mac);
        bytes[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        Self { bytes }
    }

    /// Copies the configuration space at `offset` into `data`; bytes beyond the
    /// implemented fields read as 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(src) = usize::try_from(offset)
            .ok()
            .and_then(|start| self.bytes.get(start..))
        else {
            return;
        };
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
