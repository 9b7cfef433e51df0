//! Serving the transmit queue: each chain (vnet header plus frame) is written to the TAP
//! with one writev straight from guest memory. Knows nothing about eventfds; the driver
//! is signalled through [`QueueSignal`].
//!
//! Whatever a chain holds, it is returned with used length 0 (the device writes nothing
//! into TX buffers); a malformed chain (a device-writable descriptor, fewer than header
//! plus an Ethernet header, more than header plus [`MAX_FRAME_LEN`], a buffer outside
//! guest memory) is dropped and counted, and the device goes on.

use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::config::{HDR_LEN, MAX_FRAME_LEN, MAX_IOVECS, MIN_FRAME_LEN};
use super::counters::NetCounters;
use crate::devices::virtio::FrameIo;
use crate::devices::virtio::QueueSignal;
use crate::devices::virtio::drain_queue_until;
use crate::devices::virtio::queue::{
    ChainError, Notifier, RingError, map_desc, publish_used, take_chains,
};
use crate::devices::virtio::rate_limiter::RateLimiter;

/// The transmit queue of one activated device.
#[derive(Debug)]
pub struct NetTxQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
    counters: Arc<NetCounters>,
    notifier: Notifier,
    broken: bool,
    /// Limits the frames sent, if the interface has a TX rate limiter.
    limiter: Option<Arc<Mutex<RateLimiter>>>,
    /// The limiter held back a frame: stop until its timer fires.
    held: bool,
}

impl NetTxQueue {
    /// The same queue, its frames limited by `limiter`.
    pub fn with_limiter(mut self, limiter: Option<Arc<Mutex<RateLimiter>>>) -> Self {
        self.limiter = limiter;
        self
    }

    /// The rate limiter, if any.
    pub fn limiter(&self) -> Option<&Arc<Mutex<RateLimiter>>> {
        self.limiter.as_ref()
    }

    /// Serves `queue` (configured, event-idx set as negotiated) on `mem`.
    pub fn new(mem: GuestMemoryMmap, queue: Queue, counters: Arc<NetCounters>) -> Self {
        Self {
            notifier: Notifier::new(&queue),
            mem,
            queue,
            counters,
            broken: false,
            limiter: None,
            held: false,
        }
    }

    /// Whether the queue met a malformed ring and stopped.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The queue state (for tests and diagnostics).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Sends every available chain to `io`, then interrupts the driver if it wants to
    /// know. Returns the number of chains handled. After an error the queue is broken:
    /// the driver was asked to reset the device and later calls do nothing.
    pub fn process(
        &mut self,
        io: &dyn FrameIo,
        signal: &dyn QueueSignal,
    ) -> Result<usize, RingError> {
        if self.broken {
            return Ok(0);
        }
        match self.drain(io, signal) {
            Ok(handled) => Ok(handled),
            Err(e) => {
                self.broken = true;
                NetCounters::add(&self.counters.queue_errors, 1);
                // Best effort: the queue is dead either way.
                let _ = signal.signal_needs_reset();
                Err(e)
            }
        }
    }

    fn drain(&mut self, io: &dyn FrameIo, signal: &dyn QueueSignal) -> Result<usize, RingError> {
        let mut tally = Tally::default();
        self.held = false;
        let drained = drain_queue_until(
            self,
            |q| (&mut q.queue, &q.mem),
            |q| q.send_batch(io, &mut tally),
            |q| q.held,
        );
        tally.add_to(&self.counters);
        let handled = drained.map_err(RingError::from)?;
        if self
            .notifier
            .signal_if_wanted(&self.mem, &self.queue, signal)?
        {
            NetCounters::add(&self.counters.interrupts, 1);
        }
        Ok(handled)
    }

    /// Sends up to [`TX_BATCH`] available chains and returns them through the used ring
    /// at once; returns how many were taken.
    fn send_batch(&mut self, io: &dyn FrameIo, tally: &mut Tally) -> Result<usize, RingError> {
        if self.held {
            return Ok(0);
        }
        let mem = &self.mem;
        let size = self.queue.size();
        let chains = take_chains(&mut self.queue, mem, TX_BATCH)?;
        let mut used = Vec::with_capacity(chains.len());
        let mut limiter =
            (self.limiter.as_ref()).map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
        let mut sent = chains.len();
        for (k, chain) in chains.iter().enumerate() {
            if let Some(l) = limiter.as_mut() {
                let total: u64 = chain.clone().map(|d| u64::from(d.len())).sum();
                match l.consume(total.saturating_sub(HDR_LEN as u64)) {
                    Ok(true) => {}
                    Ok(false) => {
                        sent = k;
                        self.held = true;
                        break;
                    }
                    Err(e) => log::warn!("virtio-net: rate limiter: {e}; not limiting this frame"),
                }
            }
            let head = chain.head_index();
            send_chain(mem, chain.clone(), size, io, tally);
            // A head index beyond the queue size has nothing to return it to.
            if head < size {
                used.push((head, 0));
            }
        }
        drop(limiter);
        // The frames the limiter held back go back to be taken again later.
        for _ in sent..chains.len() {
            self.queue.go_to_previous_position();
        }
        publish_used(mem, &mut self.queue, &used).map_err(RingError::UsedRing)?;
        Ok(sent)
    }
}

/// Most chains sent before they are returned to the driver together.
pub const TX_BATCH: usize = 64;

/// Counter increments of one [`NetTxQueue::process`] call, added to the shared counters once.
#[derive(Debug, Default)]
struct Tally {
    frames: u64,
    bytes: u64,
    dropped: u64,
    errors: u64,
}

impl Tally {
    fn add_to(&self, c: &NetCounters) {
        NetCounters::add(&c.tx_frames, self.frames);
        NetCounters::add(&c.tx_bytes, self.bytes);
        NetCounters::add(&c.tx_dropped, self.dropped);
        NetCounters::add(&c.tx_errors, self.errors);
    }
}

/// Checks one chain and writes its frame to `io`, mapping each descriptor once.
fn send_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    queue_size: u16,
    io: &dyn FrameIo,
    tally: &mut Tally,
) {
    let head = chain.head_index();
    let slices = tx_slices(mem, chain, queue_size);
    match slices {
        Ok((slices, len)) => match io.write_frame(&slices) {
            Ok(n) if n == len => {
                tally.frames += 1;
                tally.bytes += (len - HDR_LEN) as u64;
            }
            Ok(n) => {
                log::debug!("virtio-net: TAP took {n} of {len} bytes");
                tally.errors += 1;
            }
            Err(e) => {
                log::debug!("virtio-net: TAP refused a frame: {e}");
                tally.errors += 1;
            }
        },
        Err(e) => {
            log::debug!("virtio-net: TX chain {head} dropped: {e}");
            tally.dropped += 1;
        }
    }
}

/// The chain's buffers as guest memory slices, and their total length: all
/// device-readable, inside guest memory, header plus at least an Ethernet header and at
/// most [`MAX_FRAME_LEN`], at most [`MAX_IOVECS`] pieces.
fn tx_slices<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    queue_size: u16,
) -> Result<(Vec<VolatileSlice<'m>>, usize), ChainError> {
    if chain.head_index() >= queue_size {
        return Err(ChainError::Empty);
    }
    let mut slices = Vec::new();
    let mut total = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WrongDirection {
                wanted: "device-readable",
                found: "device-writable",
            });
        }
        let len = desc.len() as usize;
        total += len;
        if total > HDR_LEN + MAX_FRAME_LEN {
            return Err(ChainError::TooLong(total as u64));
        }
        if len == 0 {
            continue;
        }
        if slices.len() >= MAX_IOVECS {
            return Err(ChainError::TooManyBuffers);
        }
        match mem.get_slice(desc.addr(), len) {
            Ok(slice) => slices.push(slice),
            // Crossing a region boundary (or outside memory): the generic path.
            Err(_) => {
                let mut pieces = Vec::new();
                map_desc(mem, desc.addr(), desc.len(), &mut pieces)?;
                for (addr, len) in pieces {
                    let slice = mem
                        .get_slice(addr, len)
                        .map_err(|_| ChainError::OutOfMemory {
                            addr: addr.0,
                            len: desc.len(),
                        })?;
                    slices.push(slice);
                }
            }
        }
    }
    if slices.len() > MAX_IOVECS {
        return Err(ChainError::TooManyBuffers);
    }
    if total < HDR_LEN + MIN_FRAME_LEN {
        return Err(ChainError::TooShort(total as u64));
    }
    Ok((slices, total))
}

#[cfg(test)]
#[path = "tx_tests.rs"]
mod tests;
