//! virtio-balloon (device ID 5, `/balloon`): the host sets a target size; the guest's
//! driver inflates the balloon towards it by handing pages over (inflate queue: arrays of
//! 4 KiB page frame numbers) and deflates it by taking them back (deflate queue). Inflated
//! pages are given back to the host with `madvise(MADV_DONTNEED)`, so the VMM's resident
//! memory drops; a page the guest touches again comes back zeroed. With a statistics
//! interval the driver reports its memory figures on a third queue: the device holds the
//! driver's buffer and returns it every interval to ask for fresh figures.
//!
//! Everything the guest sends is checked: a page frame outside guest RAM is refused and
//! counted ([`BalloonCounters::refused_pfns`]), never followed.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::Serialize;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{
    ActivateContext, ActivateError, EventLoopHandle, QueueSignal, RingError, Subscriber,
    VirtioCore, VirtioInterrupt,
};

/// Virtio device ID of a memory balloon.
pub const VIRTIO_ID_BALLOON: u32 = 5;
/// Feature bit: the driver reports memory statistics on a third queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// Feature bit: the driver deflates the balloon when the guest runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Balloon pages are 4 KiB, whatever the guest's page size.
pub const PAGE_SHIFT: u32 = 12;
/// Bytes of one balloon page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Most bytes of page frame numbers read from one request (the Linux driver sends 256).
const MAX_PFN_BYTES: u32 = 64 << 10;
/// Bytes of one statistics entry: a u16 tag and a u64 value, packed.
const STAT_ENTRY: usize = 10;
/// Most statistics entries read from one buffer.
const MAX_STATS: usize = 64;

const INFLATE_EVENT: u32 = 0;
const DEFLATE_EVENT: u32 = 1;
const STATS_EVENT: u32 = 2;
const TIMER_EVENT: u32 = 3;

/// Why a balloon request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    #[error("amount_mib {mib} is more than the guest's {ram_mib} MiB of memory")]
    TooBig { mib: u32, ram_mib: u32 },
    #[error("the balloon was created without statistics (stats_polling_interval_s 0)")]
    StatsDisabled,
    #[error(
        "statistics cannot be switched off after boot (stats_polling_interval_s 0); give an interval of 1 s or more"
    )]
    StatsSwitchOff,
    #[error("cannot arm the statistics timer: {0}")]
    Timer(String),
}

/// The guest's memory figures, as its driver last reported them (bytes, or counts for the
/// fault and swap figures; `None`: not reported).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuestStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
}

impl GuestStats {
    /// Takes one (tag, value) entry; unknown tags are ignored.
    fn set(&mut self, tag: u16, value: u64) {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            _ => return,
        };
        *slot = Some(value);
    }

    /// Parses packed (u16 tag, u64 value) entries; a trailing partial entry is ignored.
    pub fn parse(bytes: &[u8]) -> GuestStats {
        let mut stats = GuestStats::default();
        for e in bytes.chunks_exact(STAT_ENTRY).take(MAX_STATS) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&e[2..10]);
            stats.set(tag, u64::from_le_bytes(v));
        }
        stats
    }
}

/// `GET /balloon/statistics`: Firecracker's BalloonStats.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BalloonStatistics {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(flatten)]
    pub guest: GuestStats,
}

/// What the device did with the guest's requests.
#[derive(Debug, Default)]
pub struct BalloonCounters {
    /// Pages given back to the host (inflate).
    pub inflated_pages: AtomicU64,
    /// Pages the guest took back (deflate).
    pub deflated_pages: AtomicU64,
    /// Page frame numbers outside guest RAM, refused.
    pub refused_pfns: AtomicU64,
    /// Statistics reports received.
    pub stats_updates: AtomicU64,
    /// Queue errors (a malformed ring stops the queue).
    pub queue_errors: AtomicU64,
}

/// The part of the balloon the VMM and the API share with the device: the target, what the
/// driver reports, the statistics and their timer, the counters.
#[derive(Debug)]
pub struct BalloonShared {
    target_pages: AtomicU32,
    actual_pages: AtomicU32,
    generation: AtomicU32,
    ram_mib: u32,
    stats_interval_s: AtomicU32,
    stats: Mutex<GuestStats>,
    timer: Mutex<TimerFd>,
    interrupt: Mutex<Option<Arc<VirtioInterrupt>>>,
    /// What the device did.
    pub counters: BalloonCounters,
}

fn mib_to_pages(mib: u32) -> u32 {
    mib.saturating_mul((1 << 20) / PAGE_SIZE as u32)
}

fn pages_to_mib(pages: u32) -> u32 {
    pages / ((1 << 20) / PAGE_SIZE as u32)
}

impl BalloonShared {
    fn new(amount_mib: u32, stats_interval_s: u32, ram_mib: u32) -> std::io::Result<Self> {
        Ok(Self {
            target_pages: AtomicU32::new(mib_to_pages(amount_mib)),
            actual_pages: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            ram_mib,
            stats_interval_s: AtomicU32::new(stats_interval_s),
            stats: Mutex::new(GuestStats::default()),
            timer: Mutex::new(TimerFd::new()?),
            interrupt: Mutex::new(None),
            counters: BalloonCounters::default(),
        })
    }

    /// The target in MiB (`amount_mib`).
    pub fn target_mib(&self) -> u32 {
        pages_to_mib(self.target_pages.load(Ordering::Relaxed))
    }

    /// The statistics interval in seconds (0: no statistics).
    pub fn stats_interval_s(&self) -> u32 {
        self.stats_interval_s.load(Ordering::Relaxed)
    }

    /// `PATCH /balloon`: a new target; the driver is told through a configuration-change
    /// interrupt (once it has activated the device; before, it reads the target then).
    pub fn set_target_mib(&self, mib: u32) -> Result<(), BalloonError> {
        if mib > self.ram_mib {
            return Err(BalloonError::TooBig {
                mib,
                ram_mib: self.ram_mib,
            });
        }
        self.target_pages
            .store(mib_to_pages(mib), Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        if let Some(irq) = lock(&self.interrupt).as_ref()
            && let Err(e) = irq.signal_config_change()
        {
            log::warn!("virtio-balloon: cannot interrupt the guest: {e}");
        }
        Ok(())
    }

    /// `PATCH /balloon/statistics`: a new interval (only between non-zero values).
    pub fn set_stats_interval(&self, secs: u32) -> Result<(), BalloonError> {
        if self.stats_interval_s() == 0 {
            return Err(BalloonError::StatsDisabled);
        }
        if secs == 0 {
            return Err(BalloonError::StatsSwitchOff);
        }
        self.stats_interval_s.store(secs, Ordering::Relaxed);
        self.arm_timer()
    }

    fn arm_timer(&self) -> Result<(), BalloonError> {
        let secs = self.stats_interval_s();
        if secs == 0 {
            return Ok(());
        }
        let every = Duration::from_secs(u64::from(secs));
        lock(&self.timer)
            .reset(every, Some(every))
            .map_err(|e| BalloonError::Timer(e.to_string()))
    }

    /// `GET /balloon/statistics`.
    pub fn statistics(&self) -> Result<BalloonStatistics, BalloonError> {
        if self.stats_interval_s() == 0 {
            return Err(BalloonError::StatsDisabled);
        }
        let target_pages = self.target_pages.load(Ordering::Relaxed);
        let actual_pages = self.actual_pages.load(Ordering::Relaxed);
        Ok(BalloonStatistics {
            target_pages,
            actual_pages,
            target_mib: pages_to_mib(target_pages),
            actual_mib: pages_to_mib(actual_pages),
            guest: lock(&self.stats).clone(),
        })
    }

    /// The counters and sizes as a metrics object (`hvlite.balloon.balloon`).
    pub fn counters_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "target_pages": self.target_pages.load(Ordering::Relaxed),
            "actual_pages": self.actual_pages.load(Ordering::Relaxed),
            "inflated_pages": get(&c.inflated_pages),
            "deflated_pages": get(&c.deflated_pages),
            "refused_pfns": get(&c.refused_pfns),
            "stats_updates": get(&c.stats_updates),
            "queue_errors": get(&c.queue_errors),
        })
    }

    /// The balloon's size as the driver last reported it, in MiB.
    pub fn actual_mib(&self) -> u32 {
        pages_to_mib(self.actual_pages.load(Ordering::Relaxed))
    }

    fn config(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..4].copy_from_slice(&self.target_pages.load(Ordering::Relaxed).to_le_bytes());
        c[4..].copy_from_slice(&self.actual_pages.load(Ordering::Relaxed).to_le_bytes());
        c
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Gives the 4 KiB pages at `pfns` back to the host; returns how many were released and
/// how many were refused (outside guest RAM). Contiguous pages go in one madvise.
pub fn release_pages(mem: &GuestMemoryMmap, pfns: &[u32]) -> (u64, u64) {
    let (mut released, mut refused) = (0u64, 0u64);
    let mut run: Option<(usize, usize)> = None;
    let flush = |run: &mut Option<(usize, usize)>| {
        if let Some((start, len)) = run.take() {
            // SAFETY: [start, start + len) lies in one mapped region of guest memory
            // (checked page by page below); MADV_DONTNEED on private anonymous memory only
            // drops its contents, which the guest gave up.
            let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
            if rc != 0 {
                log::warn!(
                    "virtio-balloon: madvise: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    };
    for &pfn in pfns {
        let Some(addr) = page_host_address(mem, pfn) else {
            refused += 1;
            continue;
        };
        released += 1;
        match run {
            Some((start, len)) if start + len == addr => {
                run = Some((start, len + PAGE_SIZE as usize))
            }
            _ => {
                flush(&mut run);
                run = Some((addr, PAGE_SIZE as usize));
            }
        }
    }
    flush(&mut run);
    (released, refused)
}

/// Where the 4 KiB page `pfn` of guest RAM is mapped in hvlite, if it is RAM.
fn page_host_address(mem: &GuestMemoryMmap, pfn: u32) -> Option<usize> {
    let gpa = GuestAddress(u64::from(pfn) << PAGE_SHIFT);
    let slice = mem.get_slice(gpa, PAGE_SIZE as usize).ok()?;
    Some(slice.ptr_guard().as_ptr() as usize)
}

/// Reads the readable bytes of a request, at most `limit`.
fn read_chain(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    limit: u32,
) -> Vec<u8> {
    let mut out = Vec::new();
    for d in chain.filter(|d| !d.is_write_only()) {
        let room = limit.saturating_sub(out.len() as u32);
        let len = d.len().min(room) as usize;
        if len == 0 {
            break;
        }
        let start = out.len();
        out.resize(start + len, 0);
        if mem.read_slice(&mut out[start..], d.addr()).is_err() {
            out.truncate(start);
            break;
        }
    }
    out
}

fn pfns_of(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The queues of one activated balloon.
#[derive(Debug)]
pub struct BalloonQueues {
    mem: GuestMemoryMmap,
    inflate: Queue,
    deflate: Queue,
    stats: Option<Queue>,
    /// The driver's statistics buffer, held until the next interval.
    held_stats: Option<u16>,
    shared: Arc<BalloonShared>,
}

impl BalloonQueues {
    /// Serves the queues on `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        inflate: Queue,
        deflate: Queue,
        stats: Option<Queue>,
        shared: Arc<BalloonShared>,
    ) -> Self {
        Self {
            mem,
            inflate,
            deflate,
            stats,
            held_stats: None,
            shared,
        }
    }

    /// Serves the inflate (`inflate` true) or deflate queue.
    pub fn process_pages(
        &mut self,
        inflate: bool,
        signal: &dyn QueueSignal,
    ) -> Result<usize, RingError> {
        let mem = &self.mem;
        let queue = if inflate {
            &mut self.inflate
        } else {
            &mut self.deflate
        };
        let mut used = Vec::new();
        let mut pfns = Vec::new();
        for chain in queue.iter(mem).map_err(RingError::AvailRing)? {
            let head = chain.head_index();
            pfns.extend(pfns_of(&read_chain(mem, chain, MAX_PFN_BYTES)));
            used.push(head);
        }
        let c = &self.shared.counters;
        if inflate {
            let (released, refused) = release_pages(mem, &pfns);
            c.inflated_pages.fetch_add(released, Ordering::Relaxed);
            c.refused_pfns.fetch_add(refused, Ordering::Relaxed);
        } else {
            // The pages come back when the guest touches them: only check and count.
            let refused = pfns
                .iter()
                .filter(|&&p| page_host_address(mem, p).is_none())
                .count() as u64;
            c.deflated_pages
                .fetch_add(pfns.len() as u64 - refused, Ordering::Relaxed);
            c.refused_pfns.fetch_add(refused, Ordering::Relaxed);
        }
        for &head in &used {
            queue.add_used(mem, head, 0).map_err(RingError::UsedRing)?;
        }
        if !used.is_empty() {
            notify(queue, mem, signal)?;
        }
        Ok(used.len())
    }

    /// Takes the driver's statistics buffer: reads the figures and holds the buffer.
    pub fn process_stats(&mut self, signal: &dyn QueueSignal) -> Result<usize, RingError> {
        let mem = &self.mem;
        let Some(queue) = self.stats.as_mut() else {
            return Ok(0);
        };
        let mut heads = Vec::new();
        for chain in queue.iter(mem).map_err(RingError::AvailRing)? {
            let head = chain.head_index();
            let bytes = read_chain(mem, chain, (MAX_STATS * STAT_ENTRY) as u32);
            *lock(&self.shared.stats) = GuestStats::parse(&bytes);
            let c = &self.shared.counters;
            c.stats_updates.fetch_add(1, Ordering::Relaxed);
            heads.push(head);
        }
        // The newest buffer is held; a driver that sent another before the held one came
        // back gets the older ones back at once.
        let Some(&newest) = heads.last() else {
            return Ok(0);
        };
        let older = self.held_stats.replace(newest).into_iter();
        let older: Vec<u16> = older
            .chain(heads[..heads.len() - 1].iter().copied())
            .collect();
        for &old in &older {
            queue.add_used(mem, old, 0).map_err(RingError::UsedRing)?;
        }
        if !older.is_empty() {
            notify(queue, mem, signal)?;
        }
        Ok(heads.len())
    }

    /// The interval passed: gives the held buffer back so the driver sends fresh figures.
    pub fn request_stats(&mut self, signal: &dyn QueueSignal) -> Result<(), RingError> {
        let (Some(queue), Some(head)) = (self.stats.as_mut(), self.held_stats.take()) else {
            return Ok(());
        };
        queue
            .add_used(&self.mem, head, 0)
            .map_err(RingError::UsedRing)?;
        notify(queue, &self.mem, signal)
    }
}

fn notify(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    signal: &dyn QueueSignal,
) -> Result<(), RingError> {
    if queue
        .needs_notification(mem)
        .map_err(RingError::Notification)?
        && let Err(e) = signal.signal_used_queue()
    {
        log::warn!("virtio-balloon: cannot interrupt the guest: {e}");
    }
    Ok(())
}

/// The event-loop subscriber of an activated balloon.
#[derive(Debug)]
pub struct BalloonHandler {
    queues: BalloonQueues,
    kicks: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
}

impl BalloonHandler {
    fn stop_on_error<T>(&self, r: Result<T, RingError>) {
        if let Err(e) = r {
            log::error!("virtio-balloon: queue stopped: {e}");
            let c = &self.queues.shared.counters;
            c.queue_errors.fetch_add(1, Ordering::Relaxed);
            let _ = self.interrupt.signal_needs_reset();
        }
    }
}

impl MutEventSubscriber for BalloonHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (token, kick) in [INFLATE_EVENT, DEFLATE_EVENT, STATS_EVENT]
            .into_iter()
            .zip(&self.kicks)
        {
            if let Err(e) = ops.add(Events::with_data(kick, token, EventSet::IN)) {
                log::error!("virtio-balloon: cannot register a queue notification: {e}");
            }
        }
        if self.queues.stats.is_some() {
            let fd = lock(&self.queues.shared.timer).as_raw_fd();
            if let Err(e) = ops.add(Events::with_data_raw(fd, TIMER_EVENT, EventSet::IN)) {
                log::error!("virtio-balloon: cannot register the statistics timer: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        if let Some(kick) = self.kicks.get(token as usize) {
            let _ = kick.read();
        }
        let signal = Arc::clone(&self.interrupt);
        match token {
            INFLATE_EVENT | DEFLATE_EVENT => {
                let r = self
                    .queues
                    .process_pages(token == INFLATE_EVENT, signal.as_ref());
                self.stop_on_error(r);
            }
            STATS_EVENT => {
                let r = self.queues.process_stats(signal.as_ref());
                self.stop_on_error(r);
            }
            TIMER_EVENT => {
                // The fd is readable, so this read does not block.
                let _ = lock(&self.queues.shared.timer).wait();
                let r = self.queues.request_stats(signal.as_ref());
                self.stop_on_error(r);
            }
            other => log::warn!("virtio-balloon: unknown event token {other}"),
        }
    }
}

/// A virtio-balloon device.
pub struct Balloon {
    core: VirtioCore,
    shared: Arc<BalloonShared>,
}

impl Balloon {
    /// A balloon of `amount_mib` to start with, with the given options, for a guest of
    /// `ram_mib`; its handler runs on the event loop behind `events`.
    pub fn new(
        amount_mib: u32,
        deflate_on_oom: bool,
        stats_polling_interval_s: u32,
        ram_mib: u32,
        events: EventLoopHandle,
    ) -> Result<Self, std::io::Error> {
        let mut features = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
        let mut sizes = vec![QUEUE_SIZE, QUEUE_SIZE];
        if stats_polling_interval_s > 0 {
            features |= 1 << VIRTIO_BALLOON_F_STATS_VQ;
            sizes.push(QUEUE_SIZE);
        }
        if deflate_on_oom {
            features |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        let shared = BalloonShared::new(amount_mib, stats_polling_interval_s, ram_mib)?;
        Ok(Self {
            core: VirtioCore::new(
                VIRTIO_ID_BALLOON,
                features,
                &sizes,
                events,
                "virtio-balloon",
            ),
            shared: Arc::new(shared),
        })
    }

    /// What the VMM and the API share with the device.
    pub fn shared(&self) -> Arc<BalloonShared> {
        Arc::clone(&self.shared)
    }
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("core", &self.core)
            .field("shared", &self.shared)
            .finish()
    }
}

impl super::CoreDevice for Balloon {
    fn core(&self) -> &VirtioCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    fn config_generation(&self) -> u32 {
        (self.core.config_generation()).wrapping_add(self.shared.generation.load(Ordering::Relaxed))
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.shared.config();
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|x| config.get(x)).copied().unwrap_or(0);
        }
    }

    /// The driver writes `actual` (bytes 4..8); `num_pages` is the device's.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut config = self.shared.config();
        for (i, b) in data.iter().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            match at {
                Some(x @ 4..=7) => config[x] = *b,
                _ => log::debug!("virtio-balloon: ignoring a config write at {offset:#x}"),
            }
        }
        let actual = u32::from_le_bytes([config[4], config[5], config[6], config[7]]);
        self.shared.actual_pages.store(actual, Ordering::Relaxed);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let stats = self.core.has_feature(VIRTIO_BALLOON_F_STATS_VQ);
        let (queues, kicks): (BalloonQueues, Vec<EventFd>) = if self.core.queue_sizes().len() == 3 {
            let ([i, d, s], kicks) = self.core.ready_queues(&ctx.mem, ctx.queues, ctx.kicks)?;
            let s = stats.then_some(s);
            (
                BalloonQueues::new(ctx.mem, i, d, s, Arc::clone(&self.shared)),
                kicks.into(),
            )
        } else {
            let ([i, d], kicks) = self.core.ready_queues(&ctx.mem, ctx.queues, ctx.kicks)?;
            (
                BalloonQueues::new(ctx.mem, i, d, None, Arc::clone(&self.shared)),
                kicks.into(),
            )
        };
        if queues.stats.is_some() {
            self.shared
                .arm_timer()
                .map_err(|e| ActivateError::Device(e.to_string()))?;
        }
        *lock(&self.shared.interrupt) = Some(Arc::clone(&ctx.interrupt));
        let handler = BalloonHandler {
            queues,
            kicks,
            interrupt: ctx.interrupt,
        };
        self.core
            .install(Arc::new(Mutex::new(handler)) as Subscriber)
    }

    fn reset(&mut self) {
        *lock(&self.shared.interrupt) = None;
        let _ = lock(&self.shared.timer).clear();
        self.core.reset();
    }
}

#[cfg(test)]
#[path = "balloon_tests.rs"]
mod tests;
