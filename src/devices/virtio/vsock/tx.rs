//! Serving the transmit queue: every available chain is read as a packet and handed to
//! the [`Muxer`], then returned with used length 0. A malformed chain is dropped and
//! counted and the device goes on; a malformed ring stops the queue. Knows nothing
//! about eventfds; the driver is signalled through [`QueueSignal`].

use event_manager::EventOps;
use virtio_queue::QueueT;

use super::counters::{VsockCounters, WarnLimiter};
use super::muxer::Muxer;
use super::packet::read_packet;
use super::ring::Ring;
use crate::devices::virtio::QueueSignal;
use crate::devices::virtio::drain_queue;
use crate::devices::virtio::queue::{RingError, publish_used, take_chains};

/// Most chains handled before they are returned to the driver together.
pub const TX_BATCH: usize = 64;

/// The transmit queue of one activated device.
#[derive(Debug)]
pub struct VsockTxQueue {
    ring: Ring,
    warn: WarnLimiter,
}

/// What one pass over the queue works on.
struct Pass<'a, 'o> {
    tx: &'a mut VsockTxQueue,
    muxer: &'a mut Muxer,
    ops: &'a mut EventOps<'o>,
}

impl VsockTxQueue {
    /// Serves `ring`.
    pub fn new(ring: Ring) -> Self {
        Self {
            ring,
            warn: WarnLimiter::new(),
        }
    }

    /// The queue.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Hands every available packet to `muxer`, then interrupts the driver if it wants
    /// to know. Returns the number of chains handled. After an error the queue is
    /// broken: the driver was asked to reset the device and later calls do nothing.
    pub fn process(
        &mut self,
        muxer: &mut Muxer,
        signal: &dyn QueueSignal,
        ops: &mut EventOps,
    ) -> Result<usize, RingError> {
        if self.ring.is_broken() {
            return Ok(0);
        }
        let mut pass = Pass {
            tx: self,
            muxer,
            ops,
        };
        drain_queue(
            &mut pass,
            |p| (&mut p.tx.ring.queue, &p.tx.ring.mem),
            |p| p.tx.serve_batch(p.muxer, p.ops),
        )
        .map_err(RingError::from)
        .and_then(|handled| self.ring.notify(signal).map(|()| handled))
        .map_err(|e| self.ring.fail(signal, e))
    }

    /// Handles up to [`TX_BATCH`] available chains and returns them through the used
    /// ring at once; returns how many were taken.
    fn serve_batch(&mut self, muxer: &mut Muxer, ops: &mut EventOps) -> Result<usize, RingError> {
        let Ring {
            mem,
            queue,
            counters,
            ..
        } = &mut self.ring;
        let mem = &*mem;
        let size = queue.size();
        let chains = take_chains(queue, mem, TX_BATCH)?;
        let mut used = Vec::with_capacity(chains.len());
        for chain in &chains {
            let head = chain.head_index();
            match read_packet(mem, chain.clone(), size) {
                Ok(pkt) => muxer.handle_guest_packet(&pkt, ops),
                Err(e) => {
                    VsockCounters::inc(&counters.malformed);
                    self.warn.warn(format_args!("TX chain {head} dropped: {e}"));
                }
            }
            // A head index beyond the queue size has nothing to return it to.
            if head < size {
                used.push((head, 0));
            }
        }
        publish_used(mem, queue, &used).map_err(RingError::UsedRing)?;
        Ok(chains.len())
    }
}
