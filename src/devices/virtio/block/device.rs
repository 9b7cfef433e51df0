//! The virtio-blk device as its transport sees it ([`VirtioDevice`]).

use std::sync::{Arc, Mutex};

use event_manager::SubscriberId;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::QueueT;

use super::config::{ConfigSpace, QUEUE_SIZE, avail_features, has_event_idx};
use super::disk::DiskImage;
use super::handler::BlockHandler;
use super::queue::{BlockCounters, BlockQueue, BlockStats};
use crate::devices::virtio::{
    ActivateContext, ActivateError, EventLoopHandle, Subscriber, VirtioDevice, subscribe_handler,
    unsubscribe_handler, unsubscribe_handler_nowait,
};

/// A virtio-blk device with one request queue.
pub struct Block {
    disk: Arc<DiskImage>,
    config: ConfigSpace,
    avail_features: u64,
    acked_features: u64,
    queue_sizes: [u16; 1],
    events: EventLoopHandle,
    handler: Option<SubscriberId>,
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
            events,
            handler: None,
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
        self.handler.is_some()
    }

    fn remove_handler(&mut self) {
        if let Some(id) = self.handler.take() {
            unsubscribe_handler(&self.events, id, "virtio-blk");
        }
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
        if self.handler.is_some() {
            return Err(ActivateError::Device("already active".into()));
        }
        let ActivateContext {
            mem,
            queues,
            kicks,
            interrupt,
        } = ctx;
        if queues.len() != self.queue_sizes.len() || kicks.len() != queues.len() {
            return Err(ActivateError::QueueCount {
                got: queues.len().min(kicks.len()),
                want: self.queue_sizes.len(),
            });
        }
        let (Some(mut queue), Some(kick)) = (queues.into_iter().next(), kicks.into_iter().next())
        else {
            return Err(ActivateError::QueueCount {
                got: 0,
                want: self.queue_sizes.len(),
            });
        };
        queue.set_event_idx(has_event_idx(self.acked_features));
        if !queue.is_valid(&mem) {
            return Err(ActivateError::Device(
                "the request queue is not valid in guest memory".into(),
            ));
        }
        let queue = BlockQueue::new(
            mem,
            queue,
            Arc::clone(&self.disk),
            Arc::clone(&self.counters),
        );
        let handler: Subscriber = Arc::new(Mutex::new(BlockHandler::new(queue, kick, interrupt)));
        self.handler = Some(subscribe_handler(&self.events, handler)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.remove_handler();
        self.acked_features = 0;
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(id) = self.handler.take() {
            unsubscribe_handler_nowait(&self.events, id);
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
