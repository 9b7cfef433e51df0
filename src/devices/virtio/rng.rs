//! virtio-rng (device ID 4, `/entropy`): one request queue; the driver posts writable
//! buffers and the device fills them from the host's `getrandom(2)`. An optional rate
//! limiter (bytes, requests) holds requests back as for virtio-blk.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::rate_limiter::RateLimiter;
use super::{
    ActivateContext, ActivateError, EventLoopHandle, QueueSignal, RingError, Subscriber,
    VirtioCore, VirtioInterrupt, drain_queue_until,
};

/// Virtio device ID of an entropy source.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Entries of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes given for one descriptor (a driver asking for more gets this much).
pub const MAX_BYTES_PER_DESC: u32 = 64 << 10;

/// Event token of the request queue's kick eventfd.
const KICK_EVENT: u32 = 0;
/// Event token of the rate limiter's timerfd.
const LIMITER_EVENT: u32 = 1;

/// Fills `buf` from the host's getrandom.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// The request queue of one activated device.
#[derive(Debug)]
pub struct RngQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
    limiter: Option<Arc<Mutex<RateLimiter>>>,
    held: bool,
    buf: Vec<u8>,
    /// Bytes given to the guest so far.
    pub bytes: u64,
}

impl RngQueue {
    /// Serves `queue` on `mem`, limited by `limiter` if given.
    pub fn new(
        mem: GuestMemoryMmap,
        queue: Queue,
        limiter: Option<Arc<Mutex<RateLimiter>>>,
    ) -> Self {
        Self {
            mem,
            queue,
            limiter,
            held: false,
            buf: Vec::new(),
            bytes: 0,
        }
    }

    /// Fills every available request, then interrupts the driver if it wants to know.
    pub fn process(&mut self, signal: &dyn QueueSignal) -> Result<usize, RingError> {
        self.held = false;
        let handled = drain_queue_until(
            self,
            |q| (&mut q.queue, &q.mem),
            |q| q.serve_round(),
            |q| q.held,
        )?;
        if handled > 0
            && self
                .queue
                .needs_notification(&self.mem)
                .map_err(RingError::Notification)?
        {
            // The driver resets the device if it never hears back; nothing else to do.
            if let Err(e) = signal.signal_used_queue() {
                log::warn!("virtio-rng: cannot interrupt the guest: {e}");
            }
        }
        Ok(handled)
    }

    fn serve_round(&mut self) -> Result<usize, RingError> {
        if self.held {
            return Ok(0);
        }
        let mem = &self.mem;
        let mut used = Vec::new();
        let mut limiter =
            (self.limiter.as_ref()).map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
        let avail = self.queue.iter(mem).map_err(RingError::AvailRing)?;
        for chain in avail {
            let head = chain.head_index();
            let descs: Vec<_> = chain.clone().filter(|d| d.is_write_only()).collect();
            let want: u64 = descs
                .iter()
                .map(|d| u64::from(d.len().min(MAX_BYTES_PER_DESC)))
                .sum();
            if let Some(l) = limiter.as_mut() {
                match l.consume(want) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.held = true;
                        break;
                    }
                    Err(e) => log::warn!("virtio-rng: rate limiter: {e}; not limiting"),
                }
            }
            let mut written = 0u32;
            for d in descs {
                let len = d.len().min(MAX_BYTES_PER_DESC) as usize;
                self.buf.resize(len, 0);
                if let Err(e) = fill_random(&mut self.buf) {
                    log::warn!("virtio-rng: getrandom failed: {e}");
                    break;
                }
                // A buffer outside guest memory ends the request with what was written.
                if mem.write_slice(&self.buf, d.addr()).is_err() {
                    break;
                }
                written += len as u32;
            }
            self.bytes += u64::from(written);
            used.push((head, written));
        }
        drop(limiter);
        if self.held {
            self.queue.go_to_previous_position();
        }
        for &(head, len) in &used {
            self.queue
                .add_used(mem, head, len)
                .map_err(RingError::UsedRing)?;
        }
        Ok(used.len())
    }
}

/// The event-loop subscriber of an activated virtio-rng device.
#[derive(Debug)]
pub struct RngHandler {
    queue: RngQueue,
    kick: EventFd,
    interrupt: Arc<VirtioInterrupt>,
}

impl RngHandler {
    fn serve(&mut self) {
        if let Err(e) = self.queue.process(self.interrupt.as_ref()) {
            log::error!("virtio-rng: queue stopped: {e}");
            let _ = self.interrupt.signal_needs_reset();
        }
    }

    fn limiter_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        (self.queue.limiter.as_ref())
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).as_raw_fd())
    }
}

impl MutEventSubscriber for RngHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.kick, KICK_EVENT, EventSet::IN)) {
            log::error!("virtio-rng: cannot register the queue notification: {e}");
        }
        if let Some(fd) = self.limiter_fd()
            && let Err(e) = ops.add(Events::with_data_raw(fd, LIMITER_EVENT, EventSet::IN))
        {
            log::error!("virtio-rng: cannot register the rate limiter's timer: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            KICK_EVENT => {
                let _ = self.kick.read();
                self.serve();
            }
            LIMITER_EVENT => {
                if let Some(l) = &self.queue.limiter {
                    l.lock().unwrap_or_else(|p| p.into_inner()).on_timer();
                }
                self.serve();
            }
            other => log::warn!("virtio-rng: unknown event token {other}"),
        }
    }
}

/// A virtio-rng device.
pub struct Rng {
    core: VirtioCore,
    limiter: Option<Arc<Mutex<RateLimiter>>>,
}

impl Rng {
    /// A device whose handler runs on the event loop behind `events`, limited by
    /// `limiter` if given.
    pub fn new(limiter: Option<RateLimiter>, events: EventLoopHandle) -> Self {
        Self {
            core: VirtioCore::new(
                VIRTIO_ID_RNG,
                1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1,
                &[QUEUE_SIZE],
                events,
                "virtio-rng",
            ),
            limiter: limiter.map(|l| Arc::new(Mutex::new(l))),
        }
    }
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl crate::devices::virtio::CoreDevice for Rng {
    fn core(&self) -> &VirtioCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let ([queue], [kick]) = self.core.ready_queues(&ctx.mem, ctx.queues, ctx.kicks)?;
        let handler = RngHandler {
            queue: RngQueue::new(ctx.mem, queue, self.limiter.clone()),
            kick,
            interrupt: ctx.interrupt,
        };
        self.core
            .install(Arc::new(Mutex::new(handler)) as Subscriber)
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::{RawDescriptor, split::Descriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;

    #[derive(Default)]
    struct Sig(std::sync::atomic::AtomicU32);
    impl QueueSignal for Sig {
        fn signal_used_queue(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        fn signal_needs_reset(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wr(addr: u64, len: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(
            addr,
            len,
            virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
            0,
        ))
    }

    #[test]
    fn requests_are_filled_with_random_bytes() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[wr(0x8000, 64), wr(0x9000, 4096)], 0)
            .expect("chains");
        let mut q = RngQueue::new(mem.clone(), vq.create_queue().expect("queue"), None);
        let sig = Sig::default();
        assert_eq!(q.process(&sig).expect("process"), 2);
        assert_eq!(vq.used().idx().load(), 2);
        let e = vq.used().ring().ref_at(1).expect("elem").load();
        assert_eq!((e.id(), e.len()), (1, 4096));
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        // 4 KiB of getrandom output is not all zeros.
        assert!(got.iter().filter(|&&b| b == 0).count() < 100);
        assert_eq!(q.bytes, 4096 + 64);
        assert_eq!(sig.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_rate_limited_device_holds_requests_back() {
        use super::super::rate_limiter::TokenBucket;
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[wr(0x8000, 64), wr(0x9000, 64)], 0)
            .expect("chains");
        let limiter = RateLimiter::new(TokenBucket::new(64, 0, 100_000), None).unwrap();
        let limiter = Arc::new(Mutex::new(limiter));
        let mut q = RngQueue::new(
            mem.clone(),
            vq.create_queue().expect("queue"),
            Some(Arc::clone(&limiter)),
        );
        assert_eq!(q.process(&Sig::default()).expect("process"), 1);
        assert_eq!(vq.used().idx().load(), 1);
        assert!(limiter.lock().unwrap().is_throttled());
    }
}
