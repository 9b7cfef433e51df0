//! The virtio-blk device as its transport sees it ([`VirtioDevice`]).

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use super::config::{ConfigSpace, QUEUE_SIZE, avail_features, has_event_idx};
use super::disk::DiskImage;
use super::handler::BlockHandler;
use super::queue::{BlockCounters, BlockQueue, BlockStats};
use crate::devices::virtio::activation::{HandlerSlot, ready_queues};
use crate::devices::virtio::{
    ActivateContext, ActivateError, EventLoopHandle, Subscriber, VirtioDevice,
};

/// A virtio-blk device with one request queue.
pub struct Block {
    disk: Arc<DiskImage>,
    config: ConfigSpace,
    avail_features: u64,
    acked_features: u64,
    queue_sizes: [u16; 1],
    handler: HandlerSlot,
    counters: Arc<BlockCounters>,
}

impl Block {
    /// A device serving `disk`; its queue handler runs on the event loop behind `events`.
    pub fn new(disk: DiskImage, events: EventLoopHandle) -> Self {
        Self {
            config: ConfigSpace::new(disk.capacity_sectors()),
            avail_features: avail_features(disk.read_only()),
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
            disk: Arc::new(disk),
            handler: HandlerSlot::new(events, "virtio-blk"),
            counters: Arc::new(BlockCounters::default()),
        }
    }

    /// The disk image.
    pub fn disk(&self) -> &DiskImage {
        &self.disk
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
        self.handler.is_active()
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("acked_features", &self.acked_features)
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-blk: ignoring a {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.handler.check_idle()?;
        let event_idx = has_event_idx(self.acked_features);
        let ([queue], [kick]) = ready_queues(&ctx.mem, ctx.queues, ctx.kicks, event_idx)?;
        let queue = BlockQueue::new(
            ctx.mem,
            queue,
            Arc::clone(&self.disk),
            Arc::clone(&self.counters),
        );
        let handler = BlockHandler::new(queue, kick, ctx.interrupt);
        self.handler
            .install(Arc::new(Mutex::new(handler)) as Subscriber)
    }

    fn reset(&mut self) {
        self.handler.remove();
        self.acked_features = 0;
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
