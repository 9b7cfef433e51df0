//! virtio-vsock constants, offered features, context IDs and the configuration space
//! (virtio 1.2, section 5.10).
//!
//! Offered features: VERSION_1 and RING_EVENT_IDX. Not offered: SEQPACKET (stream sockets
//! only).

use std::time::Duration;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::device::VsockError;
use crate::devices::virtio::VIRTIO_F_VERSION_1;

/// Maximum size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (device to driver).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (driver to device).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue (TRANSPORT_RESET only; its buffers are left unused).
pub const EVENT_QUEUE: usize = 2;
/// Number of queues.
pub const NUM_QUEUES: usize = 3;

/// The host's context ID: what the guest connects to.
pub const HOST_CID: u64 = 2;
/// Bytes of the configuration space: `guest_cid` (le64).
pub const CONFIG_SPACE_LEN: usize = 8;

/// Largest payload of one packet either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Receive buffer the device advertises per connection (`buf_alloc`): how many bytes the
/// guest may send that the host peer has not read yet.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Most connections at once; further requests are refused with RST.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host peers that connected to the listener and have not sent their `CONNECT`
/// line yet; further ones are closed at once.
pub const MAX_PENDING_HOST: usize = 64;
/// Longest `CONNECT <port>` line, newline included.
pub const MAX_CONNECT_LINE: usize = 32;
/// Most queued header-only packets (RSTs) that belong to no connection; beyond that the
/// guest is flooding without reading and further ones are dropped.
pub const MAX_ORPHAN_CONTROL: usize = 1024;
/// First local port handed to host-initiated connections.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// How long the device waits for the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For a host peer to send its `CONNECT <port>` line.
    pub connect_line: Duration,
    /// For the guest to answer a host-initiated REQUEST.
    pub guest_response: Duration,
    /// For a connection being shut down to finish (the guest's RST, or the host peer
    /// reading the last buffered bytes) before it is reset.
    pub close: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_line: Duration::from_secs(5),
            guest_response: Duration::from_secs(8),
            close: Duration::from_secs(8),
        }
    }
}

const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// The features the device offers.
pub fn avail_features() -> u64 {
    bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX)
}

/// Checks a guest context ID: 0, 1 and 2 (hypervisor, local, host) and `u32::MAX`
/// (VMADDR_CID_ANY) are reserved, and Linux keeps CIDs to 32 bits.
pub fn validate_cid(cid: u64) -> Result<u64, VsockError> {
    if (3..u64::from(u32::MAX)).contains(&cid) {
        Ok(cid)
    } else {
        Err(VsockError::InvalidCid(cid))
    }
}

/// Copies the configuration space (`guest_cid`) at `offset` into `data`; bytes beyond it
/// read as 0.
pub fn read_config(guest_cid: u64, offset: u64, data: &mut [u8]) {
    let bytes = guest_cid.to_le_bytes();
    for (i, out) in data.iter_mut().enumerate() {
        let at = offset.checked_add(i as u64);
        *out = at
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| bytes.get(at).copied())
            .unwrap_or(0);
    }
}
