//! The event-loop glue of an activated virtio-fs device. While the backend lives, its
//! "call" eventfds (one per queue) become guest interrupts: on virtio-mmio the transport's
//! InterruptStatus must say "used buffers" before the irqfd fires, so the calls cannot go
//! to KVM directly. When the backend's socket hangs up, the queues switch to
//! [`FailedQueue`]s and the kicks come here.

use std::os::fd::RawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::NUM_QUEUES;
use super::device::FsHealth;
use super::failed::FailedQueue;
use crate::devices::virtio::VirtioInterrupt;

/// Event tokens: calls are 0..NUM_QUEUES, kicks KICK_BASE.., the socket SOCKET.
const KICK_BASE: u32 = 16;
const SOCKET: u32 = 32;

/// Serves an activated device's notifications on the event loop.
pub struct CallHandler {
    mem: GuestMemoryMmap,
    queues: Option<[Queue; NUM_QUEUES]>,
    kicks: [EventFd; NUM_QUEUES],
    calls: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
    socket: Option<RawFd>,
    health: Arc<FsHealth>,
    failed: Vec<FailedQueue>,
}

impl CallHandler {
    /// The handler of queues `queues` (kicked through `kicks`), whose backend signals
    /// `calls` and is connected through `socket`.
    pub fn new(
        mem: GuestMemoryMmap,
        queues: [Queue; NUM_QUEUES],
        kicks: [EventFd; NUM_QUEUES],
        calls: Vec<EventFd>,
        interrupt: Arc<VirtioInterrupt>,
        socket: Option<RawFd>,
        health: Arc<FsHealth>,
    ) -> Self {
        Self {
            mem,
            queues: Some(queues),
            kicks,
            calls,
            interrupt,
            socket,
            health,
            failed: Vec::new(),
        }
    }

    /// The backend is gone: take the queues over and answer what is waiting.
    fn fail_over(&mut self, ops: &mut EventOps) {
        if self.health.mark_gone() {
            log::error!(
                "virtio-fs {}: the vhost-user backend (virtiofsd) hung up; file operations on \
                 this share now fail with EIO",
                self.health.tag()
            );
        }
        if let Some(fd) = self.socket.take() {
            let _ = ops.remove(Events::with_data_raw(fd, SOCKET, EventSet::READ_HANG_UP));
        }
        let Some(queues) = self.queues.take() else {
            return;
        };
        for (i, queue) in queues.into_iter().enumerate() {
            match FailedQueue::take_over(self.mem.clone(), queue) {
                Ok(q) => self.failed.push(q),
                Err(e) => log::warn!("virtio-fs {}: queue {i}: {e}", self.health.tag()),
            }
            let kick = Events::with_data(&self.kicks[i], KICK_BASE + i as u32, EventSet::IN);
            if let Err(e) = ops.add(kick) {
                log::error!(
                    "virtio-fs {}: cannot watch queue {i}: {e}",
                    self.health.tag()
                );
            }
        }
        for i in 0..self.failed.len() {
            self.answer(i);
        }
    }

    fn answer(&mut self, index: usize) {
        let Some(q) = self.failed.get_mut(index) else {
            return;
        };
        match q.answer(self.interrupt.as_ref()) {
            Ok(n) => self.health.add_answered(n as u64),
            Err(e) => {
                log::warn!("virtio-fs {}: queue {index}: {e}", self.health.tag());
                let _ = self.interrupt.signal_needs_reset();
            }
        }
    }
}

impl MutEventSubscriber for CallHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, call) in self.calls.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(call, i as u32, EventSet::IN)) {
                log::error!(
                    "virtio-fs {}: cannot watch call {i}: {e}",
                    self.health.tag()
                );
            }
        }
        if self.health.is_gone() {
            self.fail_over(ops);
            return;
        }
        if let Some(fd) = self.socket {
            let hangup = Events::with_data_raw(fd, SOCKET, EventSet::READ_HANG_UP);
            if let Err(e) = ops.add(hangup) {
                log::error!(
                    "virtio-fs {}: cannot watch the socket: {e}",
                    self.health.tag()
                );
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            SOCKET => self.fail_over(ops),
            d if d >= KICK_BASE && d < KICK_BASE + NUM_QUEUES as u32 => {
                let i = (d - KICK_BASE) as usize;
                let _ = self.kicks[i].read();
                self.answer(i);
            }
            d => {
                let Some(call) = self.calls.get(d as usize) else {
                    return;
                };
                if call.read().is_ok()
                    && let Err(e) = self.interrupt.signal_used_queue()
                {
                    log::warn!(
                        "virtio-fs {}: cannot interrupt the guest: {e}",
                        self.health.tag()
                    );
                }
            }
        }
    }
}
