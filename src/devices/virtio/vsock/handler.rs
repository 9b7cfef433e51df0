//! Event-loop glue: the RX and TX kicks drive the [`VsockRxQueue`] and [`VsockTxQueue`], the host
//! sockets and the timer drive the [`Muxer`]; after every event whatever the multiplexer
//! has for the guest goes into RX buffers, and the guest is interrupted through the
//! [`VirtioInterrupt`].
//!
//! When the RX queue starves, host streams with data stay off the loop (nothing spins)
//! until the next RX kick. An RX pass moves at most [`RX_BUDGET`] packets; if more wait,
//! the handler kicks its own RX eventfd so other sources get their turn first.
//!
//! The event queue is kept but not served: the device never sends TRANSPORT_RESET.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::config::QUEUE_SIZE;
use super::muxer::Muxer;
use super::rx::{RxProgress, VsockRxQueue};
use super::tx::VsockTxQueue;
use crate::devices::virtio::VirtioInterrupt;

/// Event data of the RX queue's kick eventfd.
pub const RX_KICK_EVENT: u32 = u32::MAX;
/// Event data of the TX queue's kick eventfd.
pub const TX_KICK_EVENT: u32 = u32::MAX - 1;
/// Most packets moved into RX buffers per pass.
pub const RX_BUDGET: usize = 2 * QUEUE_SIZE as usize;

/// The queues and kick eventfds of one activated device, in queue order.
#[derive(Debug)]
pub struct VsockQueues {
    pub rx: VsockRxQueue,
    pub tx: VsockTxQueue,
    /// Kept so the driver's buffers stay where it put them; never used.
    pub event: Queue,
    pub rx_kick: EventFd,
    pub tx_kick: EventFd,
}

/// The event-loop subscriber of one activated virtio-vsock device.
#[derive(Debug)]
pub struct VsockHandler {
    queues: VsockQueues,
    muxer: Muxer,
    interrupt: Arc<VirtioInterrupt>,
}

impl VsockHandler {
    /// Serves `queues` and the host side behind `muxer`.
    pub fn new(queues: VsockQueues, muxer: Muxer, interrupt: Arc<VirtioInterrupt>) -> Self {
        Self {
            queues,
            muxer,
            interrupt,
        }
    }

    /// The connections.
    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    /// The receive queue.
    pub fn rx(&self) -> &VsockRxQueue {
        &self.queues.rx
    }

    /// The transmit queue.
    pub fn tx(&self) -> &VsockTxQueue {
        &self.queues.tx
    }

    fn unregister(ops: &mut EventOps, fd: &EventFd, token: u32) {
        if let Err(e) = ops.remove(Events::with_data(fd, token, EventSet::IN)) {
            log::warn!("virtio-vsock: cannot unregister a queue notification: {e}");
        }
    }

    fn consume(kick: &EventFd) {
        // A spurious wakeup finds the counter at 0 (EAGAIN); serving anyway is harmless.
        if let Err(e) = kick.read()
            && e.kind() != std::io::ErrorKind::WouldBlock
        {
            log::warn!("virtio-vsock: cannot read a queue notification: {e}");
        }
    }

    fn serve_rx(&mut self, ops: &mut EventOps) {
        let q = &mut self.queues;
        match q
            .rx
            .process(&mut self.muxer, self.interrupt.as_ref(), RX_BUDGET, ops)
        {
            Ok(RxProgress::Budget) => {
                if let Err(e) = q.rx_kick.write(1) {
                    log::warn!("virtio-vsock: cannot re-kick the RX queue: {e}");
                }
            }
            Ok(RxProgress::Idle | RxProgress::Starved | RxProgress::Broken) => {}
            Err(e) => {
                log::error!("virtio-vsock: RX queue stopped, device needs reset: {e}");
                Self::unregister(ops, &q.rx_kick, RX_KICK_EVENT);
            }
        }
    }

    fn serve_tx(&mut self, ops: &mut EventOps) {
        let q = &mut self.queues;
        if let Err(e) = q.tx.process(&mut self.muxer, self.interrupt.as_ref(), ops) {
            log::error!("virtio-vsock: TX queue stopped, device needs reset: {e}");
            Self::unregister(ops, &q.tx_kick, TX_KICK_EVENT);
        }
    }
}

impl MutEventSubscriber for VsockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, token) in [
            (&self.queues.rx_kick, RX_KICK_EVENT),
            (&self.queues.tx_kick, TX_KICK_EVENT),
        ] {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                log::error!("virtio-vsock: cannot register a queue notification: {e}");
            }
        }
        self.muxer.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        match events.data() {
            token @ (RX_KICK_EVENT | TX_KICK_EVENT) if !set.contains(EventSet::IN) => {
                log::warn!("virtio-vsock: unexpected events {set:?} on kick {token}");
                let q = &self.queues;
                let fd = if token == RX_KICK_EVENT {
                    &q.rx_kick
                } else {
                    &q.tx_kick
                };
                Self::unregister(ops, fd, token);
                return;
            }
            RX_KICK_EVENT => Self::consume(&self.queues.rx_kick),
            TX_KICK_EVENT => {
                Self::consume(&self.queues.tx_kick);
                self.serve_tx(ops);
            }
            data => {
                if !self.muxer.handle_host_event(data, set, ops) {
                    log::warn!("virtio-vsock: unknown event data {data}; unregistering it");
                    let stale = Events::with_data_raw(events.fd(), data, EventSet::empty());
                    if let Err(e) = ops.remove(stale) {
                        log::error!("virtio-vsock: cannot unregister fd {}: {e}", events.fd());
                    }
                    return;
                }
            }
        }
        // Whatever happened may have given the guest something to read.
        self.serve_rx(ops);
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
