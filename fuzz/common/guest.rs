//! Shared set-up of the queue fuzz targets: guest memory with holes, and a virtqueue whose
//! geometry comes from the input.
//!
//! Queue header (7 bytes): byte 0 bit 0..3 log2 of the size (mod 9: 1..=256 entries), bit 7
//! VIRTIO_RING_F_EVENT_IDX; bytes 1..7 descriptor table, avail ring and used ring
//! addresses (u16 LE each).

#![allow(dead_code)]

use std::io;

use hvlite::devices::virtio::QueueSignal;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes of one queue header.
pub const QUEUE_HEADER: usize = 7;

/// Guest memory: two adjacent 32 KiB regions (buffers can straddle them), a hole, then a
/// 4 KiB region at 0x20000; `image` is written from address 0.
pub fn guest_memory(image: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x8000),
        (GuestAddress(0x8000), 0x8000),
        (GuestAddress(0x2_0000), 0x1000),
    ])
    .expect("guest memory");
    let image = &image[..image.len().min(0x1_0000)];
    mem.write_slice(image, GuestAddress(0)).expect("in range");
    mem
}

fn u16_at(data: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([data[i], data[i + 1]])
}

/// A ready queue described by `head` ([`QUEUE_HEADER`] bytes), or None when the transport
/// would refuse it.
pub fn queue(head: &[u8], mem: &GuestMemoryMmap) -> Option<Queue> {
    let mut queue = Queue::new(256).ok()?;
    queue.set_size(1u16 << ((head[0] & 0xf) % 9));
    queue.set_desc_table_address(Some(u32::from(u16_at(head, 1))), Some(0));
    queue.set_avail_ring_address(Some(u32::from(u16_at(head, 3))), Some(0));
    queue.set_used_ring_address(Some(u32::from(u16_at(head, 5))), Some(0));
    queue.set_event_idx(head[0] & 0x80 != 0);
    queue.set_ready(true);
    queue.is_valid(mem).then_some(queue)
}

/// A driver that ignores interrupts.
pub struct NullSignal;

impl QueueSignal for NullSignal {
    fn signal_used_queue(&self) -> io::Result<()> {
        Ok(())
    }
    fn signal_needs_reset(&self) -> io::Result<()> {
        Ok(())
    }
}
