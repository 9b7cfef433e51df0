//! What the RX and TX queues share: the queue in guest memory, the decision to interrupt
//! the driver, and stopping for good on a malformed ring.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::counters::VsockCounters;
use crate::devices::virtio::QueueSignal;
use crate::devices::virtio::queue::{Notifier, RingError};

/// One queue of an activated device.
#[derive(Debug)]
pub struct Ring {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub counters: Arc<VsockCounters>,
    notifier: Notifier,
    broken: bool,
}

impl Ring {
    /// Serves `queue` (configured, event-idx set as negotiated) on `mem`.
    pub fn new(mem: GuestMemoryMmap, queue: Queue, counters: Arc<VsockCounters>) -> Self {
        Self {
            notifier: Notifier::new(&queue),
            mem,
            queue,
            counters,
            broken: false,
        }
    }

    /// Whether the queue met a malformed ring and stopped.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Interrupts the driver if it wants to know about the buffers used since the last
    /// call (EVENT_IDX or VRING_AVAIL_F_NO_INTERRUPT, see [`Notifier`]).
    pub fn notify(&mut self, signal: &dyn QueueSignal) -> Result<(), RingError> {
        if self
            .notifier
            .signal_if_wanted(&self.mem, &self.queue, signal)?
        {
            VsockCounters::inc(&self.counters.interrupts);
        }
        Ok(())
    }

    /// Stops the queue for good after `e`: counted, and the driver is asked to reset the
    /// device.
    pub fn fail(&mut self, signal: &dyn QueueSignal, e: RingError) -> RingError {
        self.broken = true;
        VsockCounters::inc(&self.counters.queue_errors);
        // Best effort: the queue is dead either way.
        let _ = signal.signal_needs_reset();
        e
    }
}
