//! What the guest's requests get once the vhost-user backend is gone: hvlite takes the
//! queues over and answers every FUSE request with `EIO`, so file operations on the share
//! fail instead of waiting forever for a daemon that will not answer.
//!
//! The backend's progress is read from the used rings it wrote: requests up to the used
//! index were answered; everything after it (taken by the backend or not) is answered
//! here. virtiofsd answers a queue's requests in order (no thread pool), so nothing is
//! answered twice.

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::queue::{Notifier, publish_used, take_chains};
use crate::devices::virtio::{QueueSignal, RingError, drain_queue};

/// `fuse_in_header`: len, opcode, unique (then nodeid, uid, gid, pid, padding).
const IN_HEADER_UNIQUE: u64 = 8;
/// `fuse_out_header`: len (u32), error (i32), unique (u64).
const OUT_HEADER_LEN: usize = 16;
/// Chains answered per pass before they are published together.
const BATCH: usize = 64;

/// One queue served by hvlite after the backend went away.
#[derive(Debug)]
pub struct FailedQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
    notifier: Notifier,
    /// Requests answered with EIO so far.
    pub answered: u64,
}

impl FailedQueue {
    /// Takes `queue` over from the backend: the next request to answer is the one after
    /// the last the backend put into the used ring.
    pub fn take_over(mem: GuestMemoryMmap, mut queue: Queue) -> Result<Self, RingError> {
        let idx_addr = GuestAddress(queue.used_ring())
            .checked_add(2)
            .ok_or(RingError::AvailRing(virtio_queue::Error::AddressOverflow))?;
        let used: u16 = mem
            .load(idx_addr, Ordering::Acquire)
            .map_err(|e| RingError::Notification(virtio_queue::Error::GuestMemory(e)))?;
        let used = u16::from_le(used);
        queue.set_next_avail(used);
        queue.set_next_used(used);
        let notifier = Notifier::new(&queue);
        Ok(Self {
            mem,
            queue,
            notifier,
            answered: 0,
        })
    }

    /// Answers every available request with EIO, then interrupts the driver if it wants
    /// to know. Returns how many were answered.
    pub fn answer(&mut self, signal: &dyn QueueSignal) -> Result<usize, RingError> {
        let n = drain_queue(self, |q| (&mut q.queue, &q.mem), Self::answer_batch)?;
        self.answered += n as u64;
        self.notifier
            .signal_if_wanted(&self.mem, &self.queue, signal)?;
        Ok(n)
    }

    fn answer_batch(&mut self) -> Result<usize, RingError> {
        let chains = take_chains(&mut self.queue, &self.mem, BATCH)?;
        let entries: Vec<(u16, u32)> = chains
            .into_iter()
            .map(|c| (c.head_index(), answer_eio(&self.mem, c)))
            .collect();
        publish_used(&self.mem, &mut self.queue, &entries).map_err(RingError::UsedRing)?;
        Ok(entries.len())
    }
}

/// Writes a `fuse_out_header` with `-EIO` for the request in `chain` into its first
/// writable buffer; returns the bytes written (0 for requests that expect no answer,
/// such as FORGET, or buffers outside guest memory).
fn answer_eio(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
    let mut unique = None;
    for desc in chain {
        if !desc.is_write_only() {
            if unique.is_none() && u64::from(desc.len()) >= IN_HEADER_UNIQUE + 8 {
                let addr = desc.addr().checked_add(IN_HEADER_UNIQUE);
                unique = addr.and_then(|a| mem.read_obj::<u64>(a).ok());
            }
            continue;
        }
        if (desc.len() as usize) < OUT_HEADER_LEN {
            return 0;
        }
        let mut out = [0u8; OUT_HEADER_LEN];
        out[..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_le_bytes());
        out[4..8].copy_from_slice(&(-libc::EIO).to_le_bytes());
        out[8..].copy_from_slice(&unique.unwrap_or(0).to_le_bytes());
        return match mem.write_slice(&out, desc.addr()) {
            Ok(()) => OUT_HEADER_LEN as u32,
            Err(_) => 0,
        };
    }
    0
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use virtio_queue::desc::{RawDescriptor, split::Descriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    #[derive(Default)]
    struct Signals(Cell<u32>);

    impl QueueSignal for Signals {
        fn signal_used_queue(&self) -> std::io::Result<()> {
            self.0.set(self.0.get() + 1);
            Ok(())
        }
        fn signal_needs_reset(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    const F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    #[test]
    fn requests_after_the_backend_are_answered_with_eio() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // Two requests: in header (unique 7) + reply buffer; in header (unique 9) + reply.
        let descs = [
            Descriptor::new(0x8000, 40, F_NEXT, 1),
            Descriptor::new(0x9000, 64, F_WRITE, 0),
            Descriptor::new(0xa000, 40, F_NEXT, 3),
            Descriptor::new(0xb000, 64, F_WRITE, 0),
        ];
        let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        vq.build_multiple_desc_chains(&raw).unwrap();
        mem.write_obj(7u64, GuestAddress(0x8008)).unwrap();
        mem.write_obj(9u64, GuestAddress(0xa008)).unwrap();
        // The backend answered the first request before it died.
        let used_idx = vq.used_addr().checked_add(2).unwrap();
        mem.write_obj(1u16, used_idx).unwrap();
        let queue: Queue = vq.create_queue().unwrap();
        let mut failed = FailedQueue::take_over(mem.clone(), queue).unwrap();
        let signals = Signals::default();
        assert_eq!(failed.answer(&signals).unwrap(), 1);
        assert_eq!(mem.read_obj::<u16>(used_idx).unwrap(), 2);
        // The first reply buffer is untouched; the second holds -EIO for unique 9.
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x9000)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0xb000)).unwrap(), 16);
        assert_eq!(
            mem.read_obj::<i32>(GuestAddress(0xb004)).unwrap(),
            -libc::EIO
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0xb008)).unwrap(), 9);
        assert_eq!(signals.0.get(), 1);
        assert_eq!(failed.answered, 1);
        // Nothing more to answer.
        assert_eq!(failed.answer(&signals).unwrap(), 0);
    }

    #[test]
    fn requests_without_a_reply_buffer_get_none() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // A FORGET: only the request; and a request whose reply buffer is too small.
        let descs = [
            Descriptor::new(0x8000, 48, 0, 0),
            Descriptor::new(0xa000, 40, F_NEXT, 2),
            Descriptor::new(0xb000, 8, F_WRITE, 0),
        ];
        let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        vq.build_multiple_desc_chains(&raw).unwrap();
        let queue: Queue = vq.create_queue().unwrap();
        let mut failed = FailedQueue::take_over(mem.clone(), queue).unwrap();
        assert_eq!(failed.answer(&Signals::default()).unwrap(), 2);
        let used_len = vq.used_addr().checked_add(4 + 4).unwrap();
        assert_eq!(mem.read_obj::<u32>(used_len).unwrap(), 0);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0xb000)).unwrap(), 0);
    }
}
