//! What every virtio device here does when it is activated and reset: its queues are
//! checked and set up the same way ([`ready_queues`]), and at most one queue handler of the
//! device is on the event loop at a time ([`HandlerSlot`]).

use event_manager::SubscriberId;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, EventLoopHandle, Subscriber};

/// The driver's `N` queues and their kick eventfds, with `VIRTIO_F_RING_EVENT_IDX` applied
/// (`event_idx`) and each queue checked to lie in guest memory `mem`. The wrong number of
/// queues or kicks is [`ActivateError::QueueCount`].
pub fn ready_queues<const N: usize>(
    mem: &GuestMemoryMmap,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    event_idx: bool,
) -> Result<([Queue; N], [EventFd; N]), ActivateError> {
    let got = queues.len().min(kicks.len());
    let (Ok(queues), Ok(kicks)) = (
        <[Queue; N]>::try_from(queues),
        <[EventFd; N]>::try_from(kicks),
    ) else {
        return Err(ActivateError::QueueCount { got, want: N });
    };
    let queues = queues.map(|mut q| {
        q.set_event_idx(event_idx);
        q
    });
    if !queues.iter().all(|q| q.is_valid(mem)) {
        return Err(ActivateError::Device(
            "a queue is not valid in guest memory".into(),
        ));
    }
    Ok((queues, kicks))
}

/// A device's place on the event loop: empty, or holding its queue handler. Dropping the
/// slot removes the handler without waiting (the loop may be gone at shutdown).
pub struct HandlerSlot {
    events: EventLoopHandle,
    id: Option<SubscriberId>,
    /// Names the device in errors and logs.
    device: &'static str,
}

impl HandlerSlot {
    /// An empty slot on the event loop behind `events`.
    pub fn new(events: EventLoopHandle, device: &'static str) -> Self {
        Self {
            events,
            id: None,
            device,
        }
    }

    /// The device's name in errors and logs.
    pub fn device(&self) -> &'static str {
        self.device
    }

    /// Whether a handler is on the event loop.
    pub fn is_active(&self) -> bool {
        self.id.is_some()
    }

    /// An error if a handler is already there: a device is activated once per reset.
    pub fn check_idle(&self) -> Result<(), ActivateError> {
        match self.id {
            Some(_) => Err(ActivateError::Device(format!(
                "{} is already active",
                self.device
            ))),
            None => Ok(()),
        }
    }

    /// Puts `handler` on the event loop (after [`Self::check_idle`]).
    pub fn install(&mut self, handler: Subscriber) -> Result<(), ActivateError> {
        self.check_idle()?;
        let id = self
            .events
            .call_blocking(move |ops| Ok::<_, event_manager::Error>(ops.add_subscriber(handler)))
            .map_err(|e| ActivateError::EventLoop(e.to_string()))?;
        self.id = Some(id);
        Ok(())
    }

    /// Takes the handler off the event loop and waits until it is gone (on reset); the
    /// handler, and what it holds, is dropped on the loop's thread.
    pub fn remove(&mut self) {
        if let Some(id) = self.id.take() {
            let removed =
                (self.events).call_blocking(move |ops| ops.remove_subscriber(id).map(drop));
            if let Err(e) = removed {
                log::error!(
                    "{}: cannot remove the queue handler from the event loop: {e}",
                    self.device
                );
            }
        }
    }
}

impl Drop for HandlerSlot {
    /// Removes the handler without waiting: the event loop may already be gone or stopped
    /// at shutdown.
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let _ = self.events.fire(move |ops| {
                let _ = ops.remove_subscriber(id);
            });
        }
    }
}

impl std::fmt::Debug for HandlerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerSlot")
            .field("device", &self.device)
            .field("handler", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventOps, Events, MutEventSubscriber};
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::test_utils::EventLoop;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    /// A ready queue of 16 entries at 0x1000 (`base` moves it, e.g. outside memory).
    fn queue(base: u64) -> Queue {
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(base as u32), Some((base >> 32) as u32));
        q.set_avail_ring_address(Some((base + 0x1000) as u32), Some((base >> 32) as u32));
        q.set_used_ring_address(Some((base + 0x2000) as u32), Some((base >> 32) as u32));
        q.set_ready(true);
        q
    }

    fn kicks(n: usize) -> Vec<EventFd> {
        (0..n)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect()
    }

    #[test]
    fn queues_are_counted_checked_and_set_up() {
        let mem = memory();
        let r = ready_queues::<2>(&mem, vec![queue(0x1000)], kicks(2), false);
        assert!(matches!(
            r,
            Err(ActivateError::QueueCount { got: 1, want: 2 })
        ));
        let r = ready_queues::<2>(&mem, vec![queue(0x1000), queue(0x4000)], kicks(3), false);
        assert!(matches!(
            r,
            Err(ActivateError::QueueCount { got: 2, want: 2 })
        ));
        let outside = ready_queues::<1>(&mem, vec![queue(0xf000)], kicks(1), false);
        assert!(matches!(outside, Err(ActivateError::Device(m)) if m.contains("not valid")));
        let not_ready = ready_queues::<1>(&mem, vec![Queue::new(16).unwrap()], kicks(1), false);
        assert!(not_ready.is_err());
        let ([a, b], _) =
            ready_queues::<2>(&mem, vec![queue(0x1000), queue(0x4000)], kicks(2), true).unwrap();
        assert!(a.event_idx_enabled() && b.event_idx_enabled());
        let ([a], _) = ready_queues::<1>(&mem, vec![queue(0x1000)], kicks(1), false).unwrap();
        assert!(!a.event_idx_enabled());
    }

    struct Idle;

    impl MutEventSubscriber for Idle {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
        fn init(&mut self, _ops: &mut EventOps) {}
    }

    fn idle() -> Subscriber {
        Arc::new(Mutex::new(Idle))
    }

    #[test]
    fn one_handler_per_activation() {
        let lp = EventLoop::start();
        let mut slot = HandlerSlot::new(lp.handle.clone(), "virtio-test");
        assert!(!slot.is_active() && slot.check_idle().is_ok());
        slot.install(idle()).unwrap();
        assert!(slot.is_active());
        let again = slot.install(idle());
        assert!(
            matches!(again, Err(ActivateError::Device(m)) if m == "virtio-test is already active")
        );
        slot.remove();
        assert!(!slot.is_active());
        slot.install(idle()).unwrap();
        // Dropped while active: the handler leaves the loop without waiting.
        drop(slot);
    }
}
