//! virtio-blk features and configuration space (virtio 1.2, section 5.2.4).
//!
//! The configuration space is encoded little-endian into a fixed byte array once, when the
//! device is created; the driver can only read it (the only writable field, `writeback`, is
//! not offered).

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::devices::virtio::VIRTIO_F_VERSION_1;

/// Size of a virtio-blk sector: `sector` fields and the capacity count these.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Logical block size reported to the driver (VIRTIO_BLK_F_BLK_SIZE).
pub const BLOCK_SIZE: u32 = 512;
/// The one request queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Maximum number of data segments in one request: the queue size minus the header and
/// status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Maximum size of one data segment (VIRTIO_BLK_F_SIZE_MAX).
pub const SIZE_MAX: u32 = 1 << 20;
/// Maximum data length of one request: every segment at its maximum size.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Length of the device ID returned by VIRTIO_BLK_T_GET_ID.
pub const DEVICE_ID_LEN: usize = 20;

/// Bytes of the configuration space the device implements: `capacity` through
/// `num_queues` (struct virtio_blk_config up to offset 36); later fields read as 0.
pub const CONFIG_SPACE_LEN: usize = 36;

const OFF_CAPACITY: usize = 0;
const OFF_SIZE_MAX: usize = 8;
const OFF_SEG_MAX: usize = 12;
const OFF_BLK_SIZE: usize = 20;
const OFF_NUM_QUEUES: usize = 34;

/// The features the device offers for a disk (read-only or not).
pub fn avail_features(read_only: bool) -> u64 {
    let mut features = (1u64 << VIRTIO_F_VERSION_1)
        | (1u64 << VIRTIO_RING_F_EVENT_IDX)
        | (1u64 << VIRTIO_BLK_F_SIZE_MAX)
        | (1u64 << VIRTIO_BLK_F_SEG_MAX)
        | (1u64 << VIRTIO_BLK_F_BLK_SIZE)
        | (1u64 << VIRTIO_BLK_F_FLUSH);
    if read_only {
        features |= 1u64 << VIRTIO_BLK_F_RO;
    }
    features
}

/// The encoded configuration space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_LEN],
}

impl ConfigSpace {
    /// The configuration space of a disk of `capacity_sectors` 512-byte sectors.
    pub fn new(capacity_sectors: u64) -> Self {
        let mut bytes = [0u8; CONFIG_SPACE_LEN];
        bytes[OFF_CAPACITY..OFF_CAPACITY + 8].copy_from_slice(&capacity_sectors.to_le_bytes());
        bytes[OFF_SIZE_MAX..OFF_SIZE_MAX + 4].copy_from_slice(&SIZE_MAX.to_le_bytes());
        bytes[OFF_SEG_MAX..OFF_SEG_MAX + 4].copy_from_slice(&SEG_MAX.to_le_bytes());
        bytes[OFF_BLK_SIZE..OFF_BLK_SIZE + 4].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        bytes[OFF_NUM_QUEUES..OFF_NUM_QUEUES + 2].copy_from_slice(&1u16.to_le_bytes());
        Self { bytes }
    }

    /// Copies the configuration space at `offset` into `data`; bytes beyond the implemented
    /// fields (or an offset that does not fit in `usize`) read as 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let Some(src) = self.bytes.get(start..) else {
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
mod tests {
    use super::*;

    #[test]
    fn layout_is_little_endian() {
        let cfg = ConfigSpace::new(0x0102_0304_0506_0708);
        let b = cfg.as_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), SIZE_MAX);
        assert_eq!(u32::from_le_bytes([b[12], b[13], b[14], b[15]]), 254);
        assert_eq!(u32::from_le_bytes([b[20], b[21], b[22], b[23]]), 512);
        assert_eq!(u16::from_le_bytes([b[34], b[35]]), 1);
    }

    #[test]
    fn read_any_offset_and_length() {
        let cfg = ConfigSpace::new(2048);
        let mut four = [0xffu8; 4];
        cfg.read(0, &mut four);
        assert_eq!(four, [0, 8, 0, 0]);
        let mut straddle = [0xffu8; 8];
        cfg.read(32, &mut straddle);
        assert_eq!(straddle, [0, 0, 1, 0, 0, 0, 0, 0]);
        let mut past = [0xffu8; 16];
        cfg.read(100, &mut past);
        assert_eq!(past, [0; 16]);
        cfg.read(u64::MAX, &mut past);
        assert_eq!(past, [0; 16]);
        let mut empty = [0u8; 0];
        cfg.read(3, &mut empty);
        let mut big = vec![0xffu8; 4096];
        cfg.read(1, &mut big);
        assert_eq!(big[0], 8);
        assert!(big[CONFIG_SPACE_LEN..].iter().all(|&b| b == 0));
    }

    #[test]
    fn features() {
        let rw = avail_features(false);
        let ro = avail_features(true);
        assert_ne!(rw & (1 << VIRTIO_F_VERSION_1), 0);
        assert_eq!(rw & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(ro & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(rw & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
        assert_ne!(rw & (1 << VIRTIO_BLK_F_FLUSH), 0);
    }
}
