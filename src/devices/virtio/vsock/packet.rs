//! The packet header (`struct virtio_vsock_hdr`, 44 bytes, little endian) and reading a
//! guest's TX descriptor chain into a header and its payload.
//!
//! The header and the payload may be split across descriptors in any way. A chain is
//! refused ([`PacketError`]) when it has a device-writable descriptor, a buffer outside
//! guest memory, fewer bytes than a header, a `len` beyond what the chain holds, or a
//! `len` above [`MAX_PAYLOAD`]. Bytes after `len` are ignored.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryMmap, VolatileSlice};

use super::chain::{copy_out, range};
use super::config::MAX_PAYLOAD;
use crate::devices::virtio::queue::{ChainError, map_chain};

/// Length of the header in front of every packet.
pub const HDR_LEN: usize = 44;

/// `type`: a stream socket (the only kind the device supports).
pub const TYPE_STREAM: u16 = 1;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Packet operations (`op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    /// The operation for `op`, if it is one.
    pub fn from_u16(op: u16) -> Option<Self> {
        Some(match op {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// A decoded packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Payload bytes following the header.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub socket_type: u16,
    /// Operation ([`Op`] as a number: the guest may send anything).
    pub op: u16,
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the wire format.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            socket_type: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the wire format.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.socket_type.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The operation, if `op` is a known one.
    pub fn op(&self) -> Option<Op> {
        Op::from_u16(self.op)
    }
}

/// Why a TX chain was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("bad descriptor chain: {0}")]
    Chain(#[from] ChainError),
    #[error("the chain holds {0} bytes, fewer than a {HDR_LEN}-byte header")]
    ShortHeader(usize),
    #[error("the header announces {len} payload bytes, the chain holds {avail}")]
    LenBeyondChain { len: u32, avail: usize },
    #[error("the header announces {0} payload bytes, more than {MAX_PAYLOAD}")]
    Oversized(u32),
}

/// A packet from the guest: its header and its payload in guest memory.
#[derive(Debug)]
pub struct Packet<'m> {
    pub hdr: Header,
    /// Exactly `hdr.len` bytes.
    pub payload: Vec<VolatileSlice<'m>>,
}

/// Reads a TX chain (all descriptors device-readable): the header, then `len` payload
/// bytes. `queue_size` bounds the head index.
pub fn read_packet<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    queue_size: u16,
) -> Result<Packet<'m>, PacketError> {
    let mapped = map_chain(mem, chain, queue_size, false, HDR_LEN + MAX_PAYLOAD)?;
    let short = || PacketError::ShortHeader(mapped.len);
    let hdr_slices = range(mem, &mapped.pieces, 0, HDR_LEN).ok_or_else(short)?;
    let mut raw = [0u8; HDR_LEN];
    if copy_out(&hdr_slices, &mut raw) != HDR_LEN {
        return Err(short());
    }
    let hdr = Header::from_bytes(&raw);
    if hdr.len as usize > MAX_PAYLOAD {
        return Err(PacketError::Oversized(hdr.len));
    }
    let avail = mapped.len - HDR_LEN;
    let payload = range(mem, &mapped.pieces, HDR_LEN, hdr.len as usize).ok_or(
        PacketError::LenBeyondChain {
            len: hdr.len,
            avail,
        },
    )?;
    Ok(Packet { hdr, payload })
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
