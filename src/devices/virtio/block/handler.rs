//! Event-loop glue: reacts to the driver's queue notifications (the kick eventfd) by
//! running the [`BlockQueue`], and interrupts the guest through the [`VirtioInterrupt`].

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::queue::BlockQueue;
use crate::devices::virtio::VirtioInterrupt;

/// Event token of the request queue's kick eventfd.
pub const KICK_EVENT: u32 = 0;
/// Event token of the rate limiter's timerfd.
pub const LIMITER_EVENT: u32 = 1;

/// The event-loop subscriber of one activated virtio-blk device.
#[derive(Debug)]
pub struct BlockHandler {
    queue: BlockQueue,
    kick: EventFd,
    interrupt: Arc<VirtioInterrupt>,
}

impl BlockHandler {
    /// Serves `queue` whenever `kick` becomes readable.
    pub fn new(queue: BlockQueue, kick: EventFd, interrupt: Arc<VirtioInterrupt>) -> Self {
        Self {
            queue,
            kick,
            interrupt,
        }
    }

    /// The queue being served.
    pub fn queue(&self) -> &BlockQueue {
        &self.queue
    }

    /// Consumes the pending notification, then serves the queue. After a malformed ring
    /// the queue is broken and the kick is unregistered; the event loop keeps running.
    fn on_kick(&mut self, ops: &mut EventOps) {
        // A spurious wakeup finds the counter at 0 (EAGAIN on a non-blocking eventfd);
        // serving the queue anyway is harmless.
        if let Err(e) = self.kick.read()
            && e.kind() != std::io::ErrorKind::WouldBlock
        {
            log::warn!("virtio-blk: cannot read the queue notification: {e}");
        }
        self.serve(ops);
    }

    fn serve(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.queue.process(self.interrupt.as_ref()) {
            log::error!("virtio-blk: queue stopped, device needs reset: {e}");
        }
        if self.queue.is_broken() {
            self.unregister(ops);
        }
    }

    /// The limiter's timer fired: requests it held back may go now.
    fn on_limiter(&mut self, ops: &mut EventOps) {
        if let Some(l) = self.queue.limiter() {
            l.lock().unwrap_or_else(|p| p.into_inner()).on_timer();
        }
        self.serve(ops);
    }

    fn limiter_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        (self.queue.limiter()).map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).as_raw_fd())
    }

    fn unregister(&self, ops: &mut EventOps) {
        if let Err(e) = ops.remove(Events::with_data(&self.kick, KICK_EVENT, EventSet::IN)) {
            log::warn!("virtio-blk: cannot unregister the queue notification: {e}");
        }
        if let Some(fd) = self.limiter_fd() {
            let _ = ops.remove(Events::with_data_raw(fd, LIMITER_EVENT, EventSet::IN));
        }
    }
}

impl MutEventSubscriber for BlockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.kick, KICK_EVENT, EventSet::IN)) {
            log::error!("virtio-blk: cannot register the queue notification: {e}");
        }
        if let Some(fd) = self.limiter_fd()
            && let Err(e) = ops.add(Events::with_data_raw(fd, LIMITER_EVENT, EventSet::IN))
        {
            log::error!("virtio-blk: cannot register the rate limiter's timer: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            KICK_EVENT if events.event_set().contains(EventSet::IN) => self.on_kick(ops),
            KICK_EVENT => {
                log::warn!(
                    "virtio-blk: unexpected events {:?} on the queue notification",
                    events.event_set()
                );
                self.unregister(ops);
            }
            LIMITER_EVENT => self.on_limiter(ops),
            other => log::warn!("virtio-blk: unknown event token {other}"),
        }
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
