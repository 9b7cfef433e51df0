//! Queue processing every virtio device here shares: draining a queue with notifications
//! suppressed ([`drain_queue`], [`next_avail_chain`]), taking chains ([`take_chains`]),
//! mapping a descriptor chain to guest memory with the checks a hostile driver needs
//! ([`map_chain`]), publishing used buffers ([`publish_used`]), and deciding whether the
//! driver wants an interrupt ([`Notifier`], EVENT_IDX and VRING_AVAIL_F_NO_INTERRUPT aware).

use std::num::Wrapping;
use std::sync::atomic::{Ordering, fence};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::interrupt::QueueSignal;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

/// Most descriptors (iovecs) one chain may use (Linux UIO_MAXIOV).
pub const MAX_IOVECS: usize = 1024;

/// Why a queue stopped: the driver broke its ring (it is then asked to reset the device).
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("malformed available ring")]
    AvailRing(#[source] virtio_queue::Error),
    #[error("cannot update the used ring")]
    UsedRing(#[source] virtio_queue::Error),
    #[error("cannot update the notification suppression fields")]
    Notification(#[source] virtio_queue::Error),
}

impl From<DrainError<RingError>> for RingError {
    fn from(e: DrainError<RingError>) -> Self {
        match e {
            DrainError::Serve(e) => e,
            DrainError::Notification(e) => RingError::Notification(e),
            DrainError::Stuck => RingError::AvailRing(virtio_queue::Error::InvalidDescriptorIndex),
        }
    }
}

/// How [`drain_queue`] stopped early.
#[derive(Debug)]
pub enum DrainError<E> {
    /// Serving the chains failed.
    Serve(E),
    /// Reading or writing the notification-suppression fields failed.
    Notification(virtio_queue::Error),
    /// The ring said chains were available, yet a whole pass took none: its next entry is
    /// one the queue iterator refuses (a head index out of range). Serving again would spin
    /// forever, so the ring counts as malformed.
    Stuck,
}

/// Serves a queue until the driver has nothing more for it: with notifications off,
/// `serve` is called until it takes no chain (it returns how many it took); then
/// notifications are re-enabled and, if the driver added chains meanwhile, it goes round
/// again. `ring` gives the queue and guest memory out of `state`. Returns the number of
/// chains served.
pub fn drain_queue<S, E>(
    state: &mut S,
    ring: fn(&mut S) -> (&mut Queue, &GuestMemoryMmap),
    serve: impl FnMut(&mut S) -> Result<usize, E>,
) -> Result<usize, DrainError<E>> {
    drain_queue_until(state, ring, serve, |_| false)
}

/// [`drain_queue`] for a device that may stop with chains still available (a rate
/// limiter said wait): once `held(state)` is true after a pass, notifications are
/// re-enabled and it returns; the device comes back when its limiter lets it.
pub fn drain_queue_until<S, E>(
    state: &mut S,
    ring: fn(&mut S) -> (&mut Queue, &GuestMemoryMmap),
    mut serve: impl FnMut(&mut S) -> Result<usize, E>,
    held: fn(&S) -> bool,
) -> Result<usize, DrainError<E>> {
    use virtio_queue::QueueT;

    let mut handled = 0;
    let mut after_more = false;
    loop {
        let (queue, mem) = ring(state);
        queue
            .disable_notification(mem)
            .map_err(DrainError::Notification)?;
        let mut served = 0;
        loop {
            let n = serve(state).map_err(DrainError::Serve)?;
            if n == 0 {
                break;
            }
            served += n;
        }
        handled += served;
        if held(state) {
            let (queue, mem) = ring(state);
            queue
                .enable_notification(mem)
                .map_err(DrainError::Notification)?;
            return Ok(handled);
        }
        if after_more && served == 0 {
            return Err(DrainError::Stuck);
        }
        let (queue, mem) = ring(state);
        after_more = queue
            .enable_notification(mem)
            .map_err(DrainError::Notification)?;
        if !after_more {
            return Ok(handled);
        }
    }
}

/// Takes the next chain from `queue`, for a device that takes chains only when it has
/// something to put into them (a receive queue). Driver notifications are off while
/// chains are taken and back on once the ring is empty, after which the ring is looked at
/// once more: chains added meanwhile came with no notification. `notify_enabled` tracks
/// that state across calls (true for a fresh queue). `Ok(None)`: the ring is empty and
/// notifications are on. `avail_err` wraps a malformed ring error; a ring that announces
/// a chain the iterator refuses is [`DrainError::Stuck`].
pub fn next_avail_chain<'m, E>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    notify_enabled: &mut bool,
    avail_err: fn(virtio_queue::Error) -> E,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, DrainError<E>> {
    use virtio_queue::{QueueOwnedT, QueueT};

    let mut after_more = false;
    loop {
        let next = queue
            .iter(mem)
            .map_err(|e| DrainError::Serve(avail_err(e)))?
            .next();
        if let Some(chain) = next {
            if *notify_enabled {
                *notify_enabled = false;
                queue
                    .disable_notification(mem)
                    .map_err(DrainError::Notification)?;
            }
            return Ok(Some(chain));
        }
        if after_more {
            return Err(DrainError::Stuck);
        }
        *notify_enabled = true;
        after_more = queue
            .enable_notification(mem)
            .map_err(DrainError::Notification)?;
        if !after_more {
            return Ok(None);
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
) -> Result<Vec<DescriptorChain<&'m GuestMemoryMmap>>, RingError> {
    Ok(queue
        .iter(mem)
        .map_err(RingError::AvailRing)?
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
    ) -> Result<bool, RingError> {
        if !self
            .needs_interrupt(mem, queue)
            .map_err(RingError::Notification)?
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
