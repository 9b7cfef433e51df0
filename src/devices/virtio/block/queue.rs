//! Serving the request queue: pop every available chain, execute it, return it through
//! the used ring and tell the driver. Knows nothing about eventfds: the driver is
//! signalled through [`QueueSignal`].

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::disk::DiskImage;
use super::request::{RequestOutcome, process_request};
use crate::devices::virtio::rate_limiter::RateLimiter;
use crate::devices::virtio::{QueueSignal, RingError, drain_queue_until};

/// Why the queue stopped.
#[derive(Debug, thiserror::Error)]
pub enum BlockQueueError {
    /// The driver broke the ring.
    #[error(transparent)]
    Ring(#[from] RingError),
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

impl BlockCounters {
    fn all(&self) -> [&std::sync::atomic::AtomicU64; 8] {
        [
            &self.requests,
            &self.bytes_read,
            &self.bytes_written,
            &self.errors,
            &self.unsupported,
            &self.dropped,
            &self.queue_errors,
            &self.interrupts,
        ]
    }

    /// Every counter's value, in declaration order (for snapshots).
    pub fn values(&self) -> Vec<u64> {
        self.all()
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    /// Adds `values` (from [`Self::values`] of a snapshotted device) to the counters.
    pub fn preload(&self, values: &[u64]) {
        for (c, v) in self.all().iter().zip(values) {
            c.fetch_add(*v, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A copy of [`BlockCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// Counter increments gathered over one [`BlockQueue::process`] call and added to the
/// shared [`BlockCounters`] once, instead of a few atomic operations per request.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    bytes_read: u64,
    bytes_written: u64,
    errors: u64,
    unsupported: u64,
    dropped: u64,
}

impl Tally {
    fn record(&mut self, completion: &super::request::Completion) {
        self.requests += 1;
        self.bytes_read += completion.bytes_read;
        self.bytes_written += completion.bytes_written;
        match &completion.outcome {
            RequestOutcome::Ok => {}
            RequestOutcome::Unsupported(raw) => {
                log::debug!("virtio-blk: unsupported request type {raw}");
                self.unsupported += 1;
            }
            RequestOutcome::Failed(e) => {
                log::debug!("virtio-blk: request failed: {e}");
                self.errors += 1;
            }
            RequestOutcome::Dropped(e) => {
                log::debug!("virtio-blk: request dropped: {e}");
                self.dropped += 1;
            }
        }
    }

    fn flush(&self, counters: &BlockCounters) {
        for (counter, n) in [
            (&counters.requests, self.requests),
            (&counters.bytes_read, self.bytes_read),
            (&counters.bytes_written, self.bytes_written),
            (&counters.errors, self.errors),
            (&counters.unsupported, self.unsupported),
            (&counters.dropped, self.dropped),
        ] {
            if n != 0 {
                BlockCounters::add(counter, n);
            }
        }
    }
}

/// A completed chain waiting for its used-ring entry.
#[derive(Debug, Clone, Copy)]
struct Used {
    head: u16,
    len: u32,
    dropped: bool,
}

/// The request queue of one activated device.
#[derive(Debug)]
pub struct BlockQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
    disk: Arc<DiskImage>,
    counters: Arc<BlockCounters>,
    broken: bool,
    /// Completions of the current round, reused across rounds (no allocation per round).
    used: Vec<Used>,
    /// Limits the requests taken, if the drive has a rate limiter.
    limiter: Option<Arc<Mutex<RateLimiter>>>,
    /// The limiter held back a request: stop until its timer fires.
    held: bool,
    /// Where a new disk image comes from while running (PATCH /drives).
    live: Option<Arc<super::live::LiveDrive>>,
}

impl BlockQueue {
    /// Serves `queue` (already configured, event-idx set as negotiated) on `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        queue: Queue,
        disk: Arc<DiskImage>,
        counters: Arc<BlockCounters>,
    ) -> Self {
        let used = Vec::with_capacity(usize::from(queue.size()));
        Self {
            mem,
            queue,
            disk,
            counters,
            broken: false,
            used,
            limiter: None,
            held: false,
            live: None,
        }
    }

    /// The same queue, following `live` for its disk image and rate limiter.
    pub fn with_live(mut self, live: Arc<super::live::LiveDrive>) -> Self {
        self.limiter = live.limiter().cloned();
        self.live = Some(live);
        self
    }

    /// The same queue, its requests limited by `limiter`.
    pub fn with_limiter(mut self, limiter: Option<Arc<Mutex<RateLimiter>>>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Whether the queue met a malformed ring and stopped.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The rate limiter, if any.
    pub fn limiter(&self) -> Option<&Arc<Mutex<RateLimiter>>> {
        self.limiter.as_ref()
    }

    /// The queue state (for tests and diagnostics).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Handles every available request, then signals the driver if it asked for it.
    /// Returns the number of chains handled. After an error the queue is broken: the
    /// driver was asked to reset the device and later calls do nothing.
    pub fn process(&mut self, signal: &dyn QueueSignal) -> Result<usize, BlockQueueError> {
        if self.broken {
            return Ok(0);
        }
        let mut tally = Tally::default();
        let result = self.drain(signal, &mut tally);
        tally.flush(&self.counters);
        match result {
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

    fn drain(
        &mut self,
        signal: &dyn QueueSignal,
        tally: &mut Tally,
    ) -> Result<usize, BlockQueueError> {
        self.held = false;
        let handled = drain_queue_until(
            self,
            |q| (&mut q.queue, &q.mem),
            |q| q.serve_round(tally),
            |q| q.held,
        )
        .map_err(RingError::from)?;
        // One interrupt for everything used above, if the driver asked for one (with
        // EVENT_IDX: if the used index went past its used_event since the last check).
        if handled > 0
            && self
                .queue
                .needs_notification(&self.mem)
                .map_err(RingError::Notification)?
        {
            signal
                .signal_used_queue()
                .map_err(BlockQueueError::Signal)?;
            BlockCounters::add(&self.counters.interrupts, 1);
        }
        Ok(handled)
    }

    /// Handles the chains available when called (one read of the avail index, at most a
    /// queue's worth), then returns them all through the used ring. Returns how many.
    fn serve_round(&mut self, tally: &mut Tally) -> Result<usize, RingError> {
        if self.held {
            return Ok(0);
        }
        if let Some(live) = &self.live {
            self.disk = live.disk();
        }
        let mem = &self.mem;
        self.used.clear();
        let avail = self.queue.iter(mem).map_err(RingError::AvailRing)?;
        let mut limiter = self
            .limiter
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
        for chain in avail {
            if let Some(l) = limiter.as_mut() {
                // The data bytes: every descriptor but the 16-byte header and the status
                // byte (a malformed chain fails in process_request, not here).
                let total: u64 = chain.clone().map(|d| u64::from(d.len())).sum();
                let bytes = total.saturating_sub(17);
                match l.consume(bytes) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.held = true;
                        break;
                    }
                    Err(e) => {
                        log::warn!("virtio-blk: rate limiter: {e}; not limiting this request");
                    }
                }
            }
            let head = chain.head_index();
            let completion = process_request(mem, chain, &self.disk);
            tally.record(&completion);
            self.used.push(Used {
                head,
                len: completion.used_len,
                dropped: matches!(completion.outcome, RequestOutcome::Dropped(_)),
            });
        }
        drop(limiter);
        if self.held {
            // The chain the limiter refused goes back to be taken again later.
            self.queue.go_to_previous_position();
        }
        for used in &self.used {
            match self.queue.add_used(mem, used.head, used.len) {
                Ok(()) => {}
                // A head index beyond the queue size: nothing to return it to.
                Err(virtio_queue::Error::InvalidDescriptorIndex) => {
                    if !used.dropped {
                        tally.dropped += 1;
                    }
                }
                Err(e) => return Err(RingError::UsedRing(e)),
            }
        }
        Ok(self.used.len())
    }
}
