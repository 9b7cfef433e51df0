//! Serving the receive queue: frames go from the TAP straight into the buffers the guest
//! posted. Knows nothing about eventfds; the driver is signalled through
//! [`QueueSignal`].
//!
//! Chains are taken from the available ring into a stash until it can hold the largest
//! frame the TAP may deliver (with MRG_RXBUF, across several chains; without it, one
//! chain per frame). Only then is a frame read, with one readv over the stashed buffers,
//! so a frame is never truncated nor dropped for lack of buffers: when the guest has not
//! posted enough, the frame stays in the TAP ([`RxProgress::Starved`]) until an RX kick.
//! The chains a frame used are published together, with `num_buffers` in its header.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::config::{HDR_LEN, MAX_IOVECS, NUM_BUFFERS_OFFSET};
use super::counters::NetCounters;
use crate::devices::virtio::FrameIo;
use crate::devices::virtio::QueueSignal;
use crate::devices::virtio::next_avail_chain;
use crate::devices::virtio::queue::{
    ChainError, MappedChain, Notifier, RingError, map_writable, publish_used,
};
use crate::devices::virtio::rate_limiter::RateLimiter;

/// Where RX processing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxProgress {
    /// The TAP has no more frames (or reading it failed).
    Drained,
    /// The guest has not posted enough buffers; waiting for an RX kick.
    Starved,
    /// The frame budget ran out; the TAP may hold more.
    Budget,
    /// The queue met a malformed ring earlier and stopped.
    Broken,
    /// The rate limiter holds receiving back until its timer fires.
    Throttled,
}

/// How the driver negotiated the receive path.
#[derive(Debug, Clone, Copy)]
pub struct RxConfig {
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span several chains.
    pub mergeable: bool,
    /// VIRTIO_NET_F_GUEST_CSUM: header flags are passed through (else cleared).
    pub guest_csum: bool,
    /// Buffer bytes (header included) to hold before reading a frame
    /// ([`rx_frame_capacity`](super::config::rx_frame_capacity)).
    pub frame_capacity: usize,
}

/// The receive queue of one activated device.
#[derive(Debug)]
pub struct NetRxQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
    counters: Arc<NetCounters>,
    config: RxConfig,
    notifier: Notifier,
    stash: VecDeque<MappedChain>,
    stash_len: usize,
    stash_pieces: usize,
    notify_enabled: bool,
    broken: bool,
    limiter: Option<Arc<Mutex<RateLimiter>>>,
    /// Bytes of a received frame the limiter has not been paid for yet.
    owed: Option<u64>,
}

impl NetRxQueue {
    /// Serves `queue` (configured, event-idx set as negotiated) on `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        queue: Queue,
        counters: Arc<NetCounters>,
        config: RxConfig,
    ) -> Self {
        Self {
            notifier: Notifier::new(&queue),
            mem,
            queue,
            counters,
            config,
            stash: VecDeque::new(),
            stash_len: 0,
            stash_pieces: 0,
            notify_enabled: true,
            broken: false,
            limiter: None,
            owed: None,
        }
    }

    /// Limits what the guest receives with `limiter` (bytes, frames): a frame is taken
    /// from the TAP only once the previous one's tokens were paid.
    pub fn with_limiter(mut self, limiter: Option<Arc<Mutex<RateLimiter>>>) -> Self {
        self.limiter = limiter;
        self
    }

    /// The rate limiter, if any.
    pub fn limiter(&self) -> Option<&Arc<Mutex<RateLimiter>>> {
        self.limiter.as_ref()
    }

    /// Pays for the last frame; `false` while the limiter has too few tokens (its timer
    /// is then armed).
    fn pay(&mut self) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        let mut l = limiter.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_throttled() {
            return false;
        }
        let Some(owed) = self.owed else {
            return true;
        };
        match l.consume(owed) {
            Ok(true) => {
                self.owed = None;
                true
            }
            Ok(false) => false,
            Err(e) => {
                log::warn!("virtio-net: RX rate limiter: {e}; not limiting");
                self.owed = None;
                true
            }
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

    /// Chains taken from the available ring and not yet used.
    pub fn stashed_chains(&self) -> usize {
        self.stash.len()
    }

    /// Moves up to `budget` frames from `io` into the guest, then interrupts the driver
    /// if it wants to know. After an error the queue is broken: the driver was asked to
    /// reset the device and later calls do nothing.
    pub fn process(
        &mut self,
        io: &dyn FrameIo,
        signal: &dyn QueueSignal,
        budget: usize,
    ) -> Result<RxProgress, RingError> {
        if self.broken {
            return Ok(RxProgress::Broken);
        }
        match self
            .run(io, budget)
            .and_then(|p| self.notify(signal).map(|()| p))
        {
            Ok(progress) => Ok(progress),
            Err(e) => {
                self.broken = true;
                NetCounters::add(&self.counters.queue_errors, 1);
                // Best effort: the queue is dead either way.
                let _ = signal.signal_needs_reset();
                Err(e)
            }
        }
    }

    fn run(&mut self, io: &dyn FrameIo, budget: usize) -> Result<RxProgress, RingError> {
        for _ in 0..budget {
            if !self.pay() {
                return Ok(RxProgress::Throttled);
            }
            if !self.fill()? {
                NetCounters::add(&self.counters.rx_starved, 1);
                return Ok(RxProgress::Starved);
            }
            if !self.receive(io)? {
                return Ok(RxProgress::Drained);
            }
        }
        Ok(RxProgress::Budget)
    }

    fn notify(&mut self, signal: &dyn QueueSignal) -> Result<(), RingError> {
        if self
            .notifier
            .signal_if_wanted(&self.mem, &self.queue, signal)?
        {
            NetCounters::add(&self.counters.interrupts, 1);
        }
        Ok(())
    }

    /// Whether the stash can take the next frame.
    fn ready(&self) -> bool {
        !self.stash.is_empty()
            && (!self.config.mergeable
                || self.stash_len >= self.config.frame_capacity
                || self.stash_pieces >= MAX_IOVECS)
    }

    /// Takes chains from the available ring until the stash is ready; `false` when the
    /// ring ran out first (notifications are then enabled, so the next kick resumes).
    fn fill(&mut self) -> Result<bool, RingError> {
        while !self.ready() {
            let next = next_avail_chain(
                &mut self.queue,
                &self.mem,
                &mut self.notify_enabled,
                RingError::AvailRing,
            )?;
            let Some(chain) = next else {
                return Ok(false);
            };
            let head = chain.head_index();
            let size = self.queue.size();
            match map_writable(&self.mem, chain, size, HDR_LEN) {
                Ok(c) => {
                    self.stash_len += c.len;
                    self.stash_pieces += c.pieces.len();
                    self.stash.push_back(c);
                }
                Err(e) => self.drop_chain(head, &e)?,
            }
        }
        Ok(true)
    }

    fn drop_chain(&mut self, head: u16, e: &ChainError) -> Result<(), RingError> {
        log::debug!("virtio-net: RX buffer {head} dropped: {e}");
        NetCounters::add(&self.counters.rx_dropped, 1);
        if head >= self.queue.size() {
            return Ok(());
        }
        publish_used(&self.mem, &mut self.queue, &[(head, 0)]).map_err(RingError::UsedRing)
    }

    /// Reads one frame into the stash; `false` when the TAP had none (or failed).
    fn receive(&mut self, io: &dyn FrameIo) -> Result<bool, RingError> {
        let mut slices = Vec::with_capacity(self.stash_pieces.min(MAX_IOVECS));
        for chain in &self.stash {
            if slices.len() + chain.pieces.len() > MAX_IOVECS {
                break;
            }
            // Mapped when stashed; guest memory does not change under a running device.
            let Some(s) = chain.slices(&self.mem) else {
                break;
            };
            slices.extend(s);
            if !self.config.mergeable {
                break;
            }
        }
        let n = match io.read_frame(&slices) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => {
                log::warn!("virtio-net: cannot read from the TAP: {e}");
                NetCounters::add(&self.counters.rx_errors, 1);
                return Ok(false);
            }
        };
        drop(slices);
        if n < HDR_LEN {
            // Never from a TAP with a vnet header; the buffers stay stashed.
            NetCounters::add(&self.counters.rx_errors, 1);
            return Ok(true);
        }
        self.deliver(n)?;
        if self.limiter.is_some() {
            self.owed = Some((n - HDR_LEN) as u64);
        }
        Ok(true)
    }

    /// Returns the chains that hold the `n` bytes just read, with the header completed.
    fn deliver(&mut self, n: usize) -> Result<(), RingError> {
        let mut entries: Vec<(u16, u32)> = Vec::new();
        let mut first: Option<MappedChain> = None;
        let mut remaining = n;
        while remaining > 0 {
            let Some(chain) = self.stash.pop_front() else {
                break;
            };
            let take = chain.len.min(remaining);
            remaining -= take;
            self.stash_len -= chain.len;
            self.stash_pieces -= chain.pieces.len();
            // At most the frame length, far below u32::MAX.
            entries.push((chain.head, take as u32));
            if first.is_none() {
                first = Some(chain);
            }
        }
        if let Some(first) = &first {
            // At most MAX_IOVECS chains.
            let count = entries.len() as u16;
            self.write_header(first, NUM_BUFFERS_OFFSET, &count.to_le_bytes());
            if !self.config.guest_csum {
                // Flags (DATA_VALID) are for drivers that accepted GUEST_CSUM only.
                self.write_header(first, 0, &[0]);
            }
        }
        publish_used(&self.mem, &mut self.queue, &entries).map_err(RingError::UsedRing)?;
        NetCounters::add(&self.counters.rx_frames, 1);
        NetCounters::add(&self.counters.rx_bytes, (n - HDR_LEN) as u64);
        Ok(())
    }

    /// Writes `data` at `offset` of `chain` (the header may span descriptors).
    fn write_header(&self, chain: &MappedChain, mut offset: usize, mut data: &[u8]) {
        for &(addr, len) in &chain.pieces {
            if data.is_empty() {
                return;
            }
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = (len - offset).min(data.len());
            let at = addr.unchecked_add(offset as u64);
            if let Err(e) = self.mem.write_slice(&data[..n], at) {
                log::debug!("virtio-net: cannot complete an RX header: {e}");
                return;
            }
            data = &data[n..];
            offset = 0;
        }
    }
}

#[cfg(test)]
#[path = "rx_tests.rs"]
mod tests;
