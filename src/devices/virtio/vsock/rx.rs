//! Serving the receive queue: each available chain takes one packet from the
//! [`Muxer`]. Chains are taken only when the multiplexer has something to send; a chain
//! taken for a host stream that turned out empty is kept for the next packet. Knows
//! nothing about eventfds; the driver is signalled through [`QueueSignal`].

use event_manager::EventOps;
use virtio_queue::QueueT;

use super::counters::VsockCounters;
use super::muxer::Muxer;
use super::packet::HDR_LEN;
use super::ring::Ring;
use crate::devices::virtio::QueueSignal;
use crate::devices::virtio::next_avail_chain;
use crate::devices::virtio::queue::{MappedChain, RingError, map_writable, publish_used};

/// Smallest usable RX buffer: a header and one byte of data (a header-only buffer could
/// never take the data waiting for it).
pub const MIN_RX_BUFFER: usize = HDR_LEN + 1;

/// Where RX processing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxProgress {
    /// Nothing more to send.
    Idle,
    /// Something to send, but the guest has posted no buffer; waiting for an RX kick.
    Starved,
    /// The packet budget ran out with more to send.
    Budget,
    /// The queue met a malformed ring earlier and stopped.
    Broken,
}

/// The receive queue of one activated device.
#[derive(Debug)]
pub struct VsockRxQueue {
    ring: Ring,
    /// A chain taken from the ring and not used yet.
    stash: Option<MappedChain>,
    notify_enabled: bool,
}

impl VsockRxQueue {
    /// Serves `ring`.
    pub fn new(ring: Ring) -> Self {
        Self {
            ring,
            stash: None,
            notify_enabled: true,
        }
    }

    /// The queue.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Moves up to `budget` packets from `muxer` into the guest, then interrupts the
    /// driver if it wants to know. After an error the queue is broken: the driver was
    /// asked to reset the device and later calls do nothing.
    pub fn process(
        &mut self,
        muxer: &mut Muxer,
        signal: &dyn QueueSignal,
        budget: usize,
        ops: &mut EventOps,
    ) -> Result<RxProgress, RingError> {
        if self.ring.is_broken() {
            return Ok(RxProgress::Broken);
        }
        let mut used = Vec::new();
        let result = self.run(muxer, budget, &mut used, ops);
        let ring = &mut self.ring;
        let published = publish_used(&ring.mem, &mut ring.queue, &used)
            .map_err(RingError::UsedRing)
            .and_then(|()| ring.notify(signal));
        result
            .and_then(|p| published.map(|()| p))
            .map_err(|e| self.ring.fail(signal, e))
    }

    fn run(
        &mut self,
        muxer: &mut Muxer,
        budget: usize,
        used: &mut Vec<(u16, u32)>,
        ops: &mut EventOps,
    ) -> Result<RxProgress, RingError> {
        for _ in 0..budget {
            if !muxer.has_rx_work() {
                return Ok(RxProgress::Idle);
            }
            let chain = match self.stash.take() {
                Some(c) => c,
                None => match self.next_chain(used)? {
                    Some(c) => c,
                    None => return Ok(RxProgress::Starved),
                },
            };
            match muxer.fill_rx(&self.ring.mem, &chain, ops) {
                Some(len) => used.push((chain.head, len)),
                None => self.stash = Some(chain),
            }
        }
        Ok(if muxer.has_rx_work() {
            RxProgress::Budget
        } else {
            RxProgress::Idle
        })
    }

    /// The next usable chain from the available ring; malformed ones (device-readable,
    /// outside guest memory, shorter than [`MIN_RX_BUFFER`]) are returned unused (into
    /// `used`) and counted. `None` when the ring is empty: notifications are then
    /// enabled, so the driver kicks when it posts more.
    fn next_chain(&mut self, used: &mut Vec<(u16, u32)>) -> Result<Option<MappedChain>, RingError> {
        let ring = &mut self.ring;
        loop {
            let next = next_avail_chain(
                &mut ring.queue,
                &ring.mem,
                &mut self.notify_enabled,
                RingError::AvailRing,
            )?;
            let Some(chain) = next else {
                return Ok(None);
            };
            let head = chain.head_index();
            let size = ring.queue.size();
            match map_writable(&ring.mem, chain, size, MIN_RX_BUFFER) {
                Ok(c) => return Ok(Some(c)),
                Err(e) => {
                    log::debug!("virtio-vsock: RX buffer {head} dropped: {e}");
                    VsockCounters::inc(&ring.counters.rx_dropped);
                    if head < size {
                        used.push((head, 0));
                    }
                }
            }
        }
    }
}
