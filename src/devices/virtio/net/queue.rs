//! What the RX and TX queues share: counters, mapping a descriptor chain to guest memory
//! with the checks a hostile driver needs, publishing used buffers, and deciding whether
//! the driver wants an interrupt (EVENT_IDX and VRING_AVAIL_F_NO_INTERRUPT aware).

use std::num::Wrapping;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::devices::virtio::DrainError;
use crate::devices::virtio::block::QueueSignal;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::config::MAX_IOVECS;

/// Why a queue stopped (the driver is then asked to reset the device).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("malformed available ring")]
    AvailRing(#[source] virtio_queue::Error),
    #[error("cannot update the used ring")]
    UsedRing(#[source] virtio_queue::Error),
    #[error("cannot update the notification suppression fields")]
    Notification(#[source] virtio_queue::Error),
}

impl From<DrainError<QueueError>> for QueueError {
    fn from(e: DrainError<QueueError>) -> Self {
        match e {
            DrainError::Serve(e) => e,
            DrainError::Notification(e) => QueueError::Notification(e),
            DrainError::Stuck => QueueError::AvailRing(virtio_queue::Error::InvalidDescriptorIndex),
        }
    }
}

/// Why one descriptor chain was refused (the chain is returned with used length 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the descriptor chain is empty or its head index is out of range")]
    Empty,
    #[error("a descriptor is {found}, the queue needs {wanted} buffers")]
    WrongDirection {
        wanted: &'static str,
        found: &'static str,
    },
    #[error("the chain holds {0} bytes, fewer than needed")]
    TooShort(u64),
    #[error("the chain holds {0} bytes, more than allowed")]
    TooLong(u64),
    #[error("the chain has more than {MAX_IOVECS} buffers")]
    TooManyBuffers,
    #[error("a buffer of {len} bytes at {addr:#x} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
}

/// Device counters, shared between the queues (on the event loop) and their readers.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub(super) rx_frames: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
    pub(super) rx_dropped: AtomicU64,
    pub(super) rx_errors: AtomicU64,
    pub(super) rx_starved: AtomicU64,
    pub(super) tx_frames: AtomicU64,
    pub(super) tx_bytes: AtomicU64,
    pub(super) tx_dropped: AtomicU64,
    pub(super) tx_errors: AtomicU64,
    pub(super) queue_errors: AtomicU64,
    pub(super) interrupts: AtomicU64,
}

/// A copy of [`NetCounters`] at one moment. Byte counts exclude the vnet header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Malformed RX buffers returned unused (wrong direction, too short, bad address).
    pub rx_dropped: u64,
    /// Failed reads from the TAP.
    pub rx_errors: u64,
    /// Times a frame waited because the guest had not posted enough buffers.
    pub rx_starved: u64,
    /// Frames sent to the TAP.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Malformed TX chains dropped (wrong direction, too short or long, bad address).
    pub tx_dropped: u64,
    /// Frames the TAP refused (write errors).
    pub tx_errors: u64,
    /// Malformed rings (the device then needs a reset).
    pub queue_errors: u64,
    /// Used-ring interrupts raised.
    pub interrupts: u64,
}

impl NetCounters {
    /// The current values.
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            rx_errors: get(&self.rx_errors),
            rx_starved: get(&self.rx_starved),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            tx_errors: get(&self.tx_errors),
            queue_errors: get(&self.queue_errors),
            interrupts: get(&self.interrupts),
        }
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A chain's buffers in guest memory: (address, length) pieces, each inside one memory
/// region, in chain order.
#[derive(Debug, Clone, Default)]
pub struct MappedChain {
    /// The head descriptor index (what goes into the used ring).
    pub head: u16,
    /// The pieces.
    pub pieces: Vec<(GuestAddress, usize)>,
    /// Total bytes.
    pub len: usize,
}

impl MappedChain {
    /// The pieces as volatile slices of `mem` (the memory they were mapped on).
    pub fn slices<'m>(&self, mem: &'m GuestMemoryMmap) -> Option<Vec<VolatileSlice<'m>>> {
        self.pieces
            .iter()
            .map(|&(addr, len)| mem.get_slice(addr, len).ok())
            .collect()
    }
}

/// Maps every descriptor of `chain`: all must be device-writable (`write`) or all
/// device-readable, inside guest memory, at most [`MAX_IOVECS`] pieces and `max_len`
/// bytes in total. `queue_size` bounds the head index.
pub fn map_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    queue_size: u16,
    write: bool,
    max_len: usize,
) -> Result<MappedChain, ChainError> {
    let head = chain.head_index();
    if head >= queue_size {
        return Err(ChainError::Empty);
    }
    let (wanted, found) = if write {
        ("device-writable", "device-readable")
    } else {
        ("device-readable", "device-writable")
    };
    let mut mapped = MappedChain {
        head,
        pieces: Vec::new(),
        len: 0,
    };
    let mut total: u64 = 0;
    let mut empty = true;
    for desc in chain {
        empty = false;
        if desc.is_write_only() != write {
            return Err(ChainError::WrongDirection { wanted, found });
        }
        total += u64::from(desc.len());
        if total > max_len as u64 {
            return Err(ChainError::TooLong(total));
        }
        map_desc(mem, desc.addr(), desc.len(), &mut mapped.pieces)?;
    }
    if empty {
        return Err(ChainError::Empty);
    }
    // Bounded by `max_len`, a usize.
    mapped.len = total as usize;
    Ok(mapped)
}

/// Maps a chain of device-writable buffers (see [`map_chain`]) holding at least `min_len`
/// bytes: a receive buffer.
pub fn map_writable(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    queue_size: u16,
    min_len: usize,
) -> Result<MappedChain, ChainError> {
    let mapped = map_chain(mem, chain, queue_size, true, usize::MAX)?;
    if mapped.len < min_len {
        return Err(ChainError::TooShort(mapped.len as u64));
    }
    Ok(mapped)
}

pub(super) fn map_desc(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: u32,
    pieces: &mut Vec<(GuestAddress, usize)>,
) -> Result<(), ChainError> {
    if len == 0 {
        return Ok(());
    }
    let oom = || ChainError::OutOfMemory { addr: addr.0, len };
    let len = len as usize;
    let mut push = |addr, len| {
        if pieces.len() >= MAX_IOVECS {
            return Err(ChainError::TooManyBuffers);
        }
        pieces.push((addr, len));
        Ok(())
    };
    // Fast path: the buffer in one region.
    if mem.get_slice(addr, len).is_ok() {
        return push(addr, len);
    }
    let mut at = addr;
    for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
        let slice = slice.map_err(|_| oom())?;
        push(at, slice.len())?;
        at = at.checked_add(slice.len() as u64).ok_or_else(oom)?;
    }
    Ok(())
}

/// Puts `entries` (head, used length) into the used ring and publishes them with one
/// update of the used index, so the driver sees all of them or none (a frame spread over
/// several buffers must arrive whole).
pub fn publish_used(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    entries: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let size = queue.size();
    if size == 0 || entries.is_empty() {
        return Ok(());
    }
    let base = GuestAddress(queue.used_ring());
    // The whole used ring (flags, idx, elements) as one slice: no lookup per element
    // (unless the ring straddles memory regions).
    let ring = mem.get_slice(base, 4 + 8 * usize::from(size)).ok();
    let mut next = Wrapping(queue.next_used());
    for &(head, len) in entries {
        if head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        let slot = usize::from(next.0 % size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let offset = 4 + 8 * slot;
        match &ring {
            Some(ring) => ring
                .write_slice(&elem, offset)
                .map_err(|e| virtio_queue::Error::GuestMemory(e.into()))?,
            None => mem
                .write_slice(&elem, base.unchecked_add(offset as u64))
                .map_err(virtio_queue::Error::GuestMemory)?,
        }
        next += Wrapping(1);
    }
    let idx = base
        .checked_add(2)
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    // Release: the elements are visible before the index that publishes them.
    mem.store(next.0.to_le(), idx, Ordering::Release)
        .map_err(virtio_queue::Error::GuestMemory)?;
    queue.set_next_used(next.0);
    Ok(())
}

/// Takes up to `max` available chains (a batch served before they are returned together).
pub fn take_chains<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    max: usize,
) -> Result<Vec<DescriptorChain<&'m GuestMemoryMmap>>, QueueError> {
    Ok(queue
        .iter(mem)
        .map_err(QueueError::AvailRing)?
        .take(max)
        .collect())
}

/// Decides whether the driver wants an interrupt for the buffers used since the last
/// decision: honours `used_event` (EVENT_IDX) or VRING_AVAIL_F_NO_INTERRUPT.
#[derive(Debug, Default)]
pub struct Notifier {
    last_used: Wrapping<u16>,
}

impl Notifier {
    /// Starts from the queue's current used index.
    pub fn new(queue: &Queue) -> Self {
        Self {
            last_used: Wrapping(queue.next_used()),
        }
    }

    /// Interrupts the driver through `signal` if it wants to know about the buffers used
    /// since the last decision; returns whether it was interrupted.
    pub fn signal_if_wanted(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &Queue,
        signal: &dyn QueueSignal,
    ) -> Result<bool, QueueError> {
        if !self
            .needs_interrupt(mem, queue)
            .map_err(QueueError::Notification)?
        {
            return Ok(false);
        }
        match signal.signal_used_queue() {
            Ok(()) => Ok(true),
            Err(e) => {
                log::warn!("virtio: cannot interrupt the guest: {e}");
                Ok(false)
            }
        }
    }

    /// Whether to interrupt the driver now.
    pub fn needs_interrupt(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &Queue,
    ) -> Result<bool, virtio_queue::Error> {
        let new = Wrapping(queue.next_used());
        let old = std::mem::replace(&mut self.last_used, new);
        if new == old {
            return Ok(false);
        }
        // The used-ring writes before the read of the driver's suppression fields.
        fence(Ordering::SeqCst);
        let avail = GuestAddress(queue.avail_ring());
        if queue.event_idx_enabled() {
            let offset = 4 + 2 * u64::from(queue.size());
            let addr = avail
                .checked_add(offset)
                .ok_or(virtio_queue::Error::AddressOverflow)?;
            let used_event: u16 = mem
                .load(addr, Ordering::Relaxed)
                .map_err(virtio_queue::Error::GuestMemory)?;
            let used_event = Wrapping(u16::from_le(used_event));
            // Interrupt if used_event lies in [old, new): the driver asked for it.
            return Ok(new - used_event - Wrapping(1) < new - old);
        }
        let flags: u16 = mem
            .load(avail, Ordering::Relaxed)
            .map_err(virtio_queue::Error::GuestMemory)?;
        Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
    }
}
