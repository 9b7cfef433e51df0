//! The virtio-blk device as its transport sees it ([`VirtioDevice`]).

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use super::config::{ConfigSpace, QUEUE_SIZE, avail_features};
use super::disk::DiskImage;
use super::handler::BlockHandler;
use super::live::LiveDrive;
use super::queue::{BlockCounters, BlockQueue, BlockStats};
use crate::devices::virtio::rate_limiter::RateLimiter;
use crate::devices::virtio::{
    ActivateContext, ActivateError, EventLoopHandle, Subscriber, VirtioCore,
};

/// A virtio-blk device with one request queue.
pub struct Block {
    live: Arc<LiveDrive>,
    core: VirtioCore,
    counters: Arc<BlockCounters>,
}

impl Block {
    /// A device serving `disk`; its queue handler runs on the event loop behind `events`.
    pub fn new(disk: DiskImage, events: EventLoopHandle) -> Self {
        Self::with_limiter(disk, None, events)
    }

    /// A device serving `disk`, its requests limited by `limiter` if given.
    pub fn with_limiter(
        disk: DiskImage,
        limiter: Option<RateLimiter>,
        events: EventLoopHandle,
    ) -> Self {
        Self {
            core: VirtioCore::new(
                VIRTIO_ID_BLOCK,
                avail_features(disk.read_only()),
                &[QUEUE_SIZE],
                events,
                "virtio-blk",
            ),
            live: Arc::new(LiveDrive::new(disk, limiter)),
            counters: Arc::new(BlockCounters::default()),
        }
    }

    /// What the API may change while the device runs.
    pub fn live(&self) -> Arc<LiveDrive> {
        Arc::clone(&self.live)
    }

    /// The disk image now.
    pub fn disk(&self) -> Arc<DiskImage> {
        self.live.disk()
    }

    /// The device counters so far (they survive resets).
    pub fn stats(&self) -> BlockStats {
        self.counters.snapshot()
    }

    /// The live counters, for a metrics reader that outlives this borrow.
    pub fn counters(&self) -> Arc<BlockCounters> {
        Arc::clone(&self.counters)
    }

    /// Whether the queue handler is on the event loop.
    pub fn is_active(&self) -> bool {
        self.core.is_active()
    }

    /// The common virtio state.
    pub fn core(&self) -> &VirtioCore {
        &self.core
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("live", &self.live)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl crate::devices::virtio::CoreDevice for Block {
    fn core(&self) -> &VirtioCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    fn config_generation(&self) -> u32 {
        (self.core.config_generation()).wrapping_add(self.live.generation())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        ConfigSpace::new(self.live.disk().capacity_sectors()).read(offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let ([queue], [kick]) = self.core.ready_queues(&ctx.mem, ctx.queues, ctx.kicks)?;
        let queue = BlockQueue::new(ctx.mem, queue, self.live.disk(), Arc::clone(&self.counters))
            .with_live(Arc::clone(&self.live));
        self.live.set_interrupt(Some(Arc::clone(&ctx.interrupt)));
        let handler = BlockHandler::new(queue, kick, ctx.interrupt);
        self.core
            .install(Arc::new(Mutex::new(handler)) as Subscriber)
    }

    fn reset(&mut self) {
        self.live.set_interrupt(None);
        self.core.reset();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
