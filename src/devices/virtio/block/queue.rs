//! Serving the request queue: pop every available chain, execute it, return it through
//! the used ring and tell the driver. Knows nothing about eventfds: the driver is
//! signalled through [`QueueSignal`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::disk::DiskImage;
use super::request::{Outcome, process_request};
use crate::devices::virtio::IrqTrigger;

/// How queue processing reaches the driver.
pub trait QueueSignal {
    /// Buffers were used: raise the used-ring interrupt.
    fn signal_used_queue(&self) -> io::Result<()>;
    /// The driver broke the queue (a malformed ring): ask it to reset the device.
    fn signal_needs_reset(&self) -> io::Result<()>;
}

impl QueueSignal for IrqTrigger {
    fn signal_used_queue(&self) -> io::Result<()> {
        IrqTrigger::signal_used_queue(self)
    }

    fn signal_needs_reset(&self) -> io::Result<()> {
        IrqTrigger::signal_needs_reset(self)
    }
}

/// Why the queue stopped.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("malformed available ring")]
    AvailRing(#[source] virtio_queue::Error),
    #[error("cannot update the used ring")]
    UsedRing(#[source] virtio_queue::Error),
    #[error("cannot update the notification suppression fields")]
    Notification(#[source] virtio_queue::Error),
    #[error("cannot signal the driver")]
    Signal(#[source] io::Error),
}

/// Device counters, shared between the queue (on the event loop) and whoever reads them.
#[derive(Debug, Default)]
pub struct BlockCounters {
    requests: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
    unsupported: AtomicU64,
    dropped: AtomicU64,
    queue_errors: AtomicU64,
    interrupts: AtomicU64,
}

/// A copy of [`BlockCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStats {
    /// Chains taken from the available ring.
    pub requests: u64,
    /// Bytes read from the disk into guest memory.
    pub bytes_read: u64,
    /// Bytes written to the disk.
    pub bytes_written: u64,
    /// Requests completed with VIRTIO_BLK_S_IOERR.
    pub errors: u64,
    /// Requests completed with VIRTIO_BLK_S_UNSUPP.
    pub unsupported: u64,
    /// Chains returned without a status (no writable status byte).
    pub dropped: u64,
    /// Malformed rings (the device then needs a reset).
    pub queue_errors: u64,
    /// Used-ring interrupts raised.
    pub interrupts: u64,
}

impl BlockCounters {
    /// The current values.
    pub fn snapshot(&self) -> BlockStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockStats {
            requests: get(&self.requests),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            errors: get(&self.errors),
            unsupported: get(&self.unsupported),
            dropped: get(&self.dropped),
            queue_errors: get(&self.queue_errors),
            interrupts: get(&self.interrupts),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The request queue of one activated device.
#[derive(Debug)]
pub struct BlockQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
    disk: Arc<DiskImage>,
    counters: Arc<BlockCounters>,
    broken: bool,
}

impl BlockQueue {
    /// Serves `queue` (already configured, event-idx set as negotiated) on `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        queue: Queue,
        disk: Arc<DiskImage>,
        counters: Arc<BlockCounters>,
    ) -> Self {
        Self {
            mem,
            queue,
            disk,
            counters,
            broken: false,
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

    /// Handles every available request, then signals the driver if it asked for it.
    /// Returns the number of chains handled. After an error the queue is broken: the
    /// driver was asked to reset the device and later calls do nothing.
    pub fn process(&mut self, signal: &dyn QueueSignal) -> Result<usize, QueueError> {
        if self.broken {
            return Ok(0);
        }
        match self.drain(signal) {
            Ok(handled) => Ok(handled),
            Err(e) => {
                self.broken = true;
                BlockCounters::add(&self.counters.queue_errors, 1);
                // Best effort: the queue is dead either way.
                let _ = signal.signal_needs_reset();
                Err(e)
            }
        }
    }

    fn drain(&mut self, signal: &dyn QueueSignal) -> Result<usize, QueueError> {
        let mut handled = 0;
        loop {
            self.queue
                .disable_notification(&self.mem)
                .map_err(QueueError::Notification)?;
            while self.handle_one()? {
                handled += 1;
            }
            // Re-enable notifications; if the driver added chains meanwhile, go again.
            let more = self
                .queue
                .enable_notification(&self.mem)
                .map_err(QueueError::Notification)?;
            if !more {
                break;
            }
        }
        if handled > 0
            && self
                .queue
                .needs_notification(&self.mem)
                .map_err(QueueError::Notification)?
        {
            signal.signal_used_queue().map_err(QueueError::Signal)?;
            BlockCounters::add(&self.counters.interrupts, 1);
        }
        Ok(handled)
    }

    /// Handles the next available chain; `false` when there is none.
    fn handle_one(&mut self) -> Result<bool, QueueError> {
        let mem = &self.mem;
        let chain = match self.queue.iter(mem) {
            Ok(mut avail) => avail.next(),
            Err(e) => return Err(QueueError::AvailRing(e)),
        };
        let Some(chain) = chain else {
            return Ok(false);
        };
        let head = chain.head_index();
        let completion = process_request(mem, chain, &self.disk);
        let c = &self.counters;
        BlockCounters::add(&c.requests, 1);
        BlockCounters::add(&c.bytes_read, completion.bytes_read);
        BlockCounters::add(&c.bytes_written, completion.bytes_written);
        match &completion.outcome {
            Outcome::Ok => {}
            Outcome::Unsupported(raw) => {
                log::debug!("virtio-blk: unsupported request type {raw}");
                BlockCounters::add(&c.unsupported, 1);
            }
            Outcome::Failed(e) => {
                log::debug!("virtio-blk: request failed: {e}");
                BlockCounters::add(&c.errors, 1);
            }
            Outcome::Dropped(e) => {
                log::debug!("virtio-blk: request dropped: {e}");
                BlockCounters::add(&c.dropped, 1);
            }
        }
        match self.queue.add_used(mem, head, completion.used_len) {
            Ok(()) => Ok(true),
            // A head index beyond the queue size: nothing to return it to.
            Err(virtio_queue::Error::InvalidDescriptorIndex) => {
                if !matches!(completion.outcome, Outcome::Dropped(_)) {
                    BlockCounters::add(&c.dropped, 1);
                }
                Ok(true)
            }
            Err(e) => Err(QueueError::UsedRing(e)),
        }
    }
}
