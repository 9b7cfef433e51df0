//! Event-loop glue: the TAP becoming readable and the two queue kicks drive the
//! [`NetRxQueue`] and [`NetTxQueue`]; the guest is interrupted through the [`VirtioInterrupt`].
//!
//! The TAP is watched level-triggered, and only while the guest has RX buffers: when the
//! RX queue starves, the TAP is taken off the event loop (frames wait in the TAP, nothing
//! spins) and put back by the next RX kick, which also reads the waiting frames at once.
//! Each TAP event moves at most [`RX_BUDGET`] frames, so a flood of incoming frames does
//! not starve TX; a TAP left readable fires again.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::rx::{NetRxQueue, RxProgress};
use super::tx::NetTxQueue;
use crate::devices::virtio::FrameIo;
use crate::devices::virtio::VirtioInterrupt;

/// Event token of the TAP.
pub const TAP_EVENT: u32 = 0;
/// Event token of the RX queue's kick eventfd.
pub const RX_KICK_EVENT: u32 = 1;
/// Event token of the TX queue's kick eventfd.
pub const TX_KICK_EVENT: u32 = 2;
/// Event token of the TX rate limiter's timerfd.
pub const TX_LIMITER_EVENT: u32 = 3;
/// Event token of the RX rate limiter's timerfd.
pub const RX_LIMITER_EVENT: u32 = 4;
/// Most frames moved from the TAP to the guest per event.
pub const RX_BUDGET: usize = 128;

/// The event-loop subscriber of one activated virtio-net device.
#[derive(Debug)]
pub struct NetHandler<T: FrameIo> {
    io: T,
    rx: NetRxQueue,
    tx: NetTxQueue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    interrupt: Arc<VirtioInterrupt>,
    tap_watched: bool,
}

impl<T: FrameIo> NetHandler<T> {
    /// Serves `rx` and `tx` over `io`, woken by the kicks and by `io` becoming readable.
    pub fn new(
        io: T,
        rx: NetRxQueue,
        tx: NetTxQueue,
        rx_kick: EventFd,
        tx_kick: EventFd,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        Self {
            io,
            rx,
            tx,
            rx_kick,
            tx_kick,
            interrupt,
            tap_watched: false,
        }
    }

    /// The receive queue.
    pub fn rx(&self) -> &NetRxQueue {
        &self.rx
    }

    /// The transmit queue.
    pub fn tx(&self) -> &NetTxQueue {
        &self.tx
    }

    /// Whether the TAP is on the event loop (the RX queue is not starved).
    pub fn tap_watched(&self) -> bool {
        self.tap_watched
    }

    fn tap_events(&self) -> Events {
        Events::with_data(&self.io, TAP_EVENT, EventSet::IN)
    }

    fn watch_tap(&mut self, ops: &mut EventOps, watch: bool) {
        if watch == self.tap_watched {
            return;
        }
        let result = if watch {
            ops.add(self.tap_events())
        } else {
            ops.remove(self.tap_events())
        };
        match result {
            Ok(()) => self.tap_watched = watch,
            Err(e) => log::error!("virtio-net: cannot (un)register the TAP: {e}"),
        }
    }

    fn unregister(ops: &mut EventOps, fd: &EventFd, token: u32) {
        if let Err(e) = ops.remove(Events::with_data(fd, token, EventSet::IN)) {
            log::warn!("virtio-net: cannot unregister a queue notification: {e}");
        }
    }

    fn consume(kick: &EventFd) {
        // A spurious wakeup finds the counter at 0 (EAGAIN); serving anyway is harmless.
        if let Err(e) = kick.read()
            && e.kind() != std::io::ErrorKind::WouldBlock
        {
            log::warn!("virtio-net: cannot read a queue notification: {e}");
        }
    }

    fn serve_rx(&mut self, ops: &mut EventOps) {
        match self
            .rx
            .process(&self.io, self.interrupt.as_ref(), RX_BUDGET)
        {
            // Until the limiter's timer fires, the TAP waits (its frames queue up there).
            Ok(RxProgress::Starved | RxProgress::Throttled) => self.watch_tap(ops, false),
            Ok(RxProgress::Drained | RxProgress::Budget) => self.watch_tap(ops, true),
            Ok(RxProgress::Broken) => {}
            Err(e) => log::error!("virtio-net: RX queue stopped, device needs reset: {e}"),
        }
        if self.rx.is_broken() {
            self.watch_tap(ops, false);
            Self::unregister(ops, &self.rx_kick, RX_KICK_EVENT);
        }
    }

    fn tx_limiter_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        (self.tx.limiter()).map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).as_raw_fd())
    }

    fn rx_limiter_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        (self.rx.limiter()).map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).as_raw_fd())
    }

    /// The RX limiter's timer fired: receiving may go on.
    fn on_rx_limiter(&mut self, ops: &mut EventOps) {
        if let Some(l) = self.rx.limiter() {
            l.lock().unwrap_or_else(|p| p.into_inner()).on_timer();
        }
        self.serve_rx(ops);
    }

    /// The TX limiter's timer fired: frames it held back may go now.
    fn on_tx_limiter(&mut self, ops: &mut EventOps) {
        if let Some(l) = self.tx.limiter() {
            l.lock().unwrap_or_else(|p| p.into_inner()).on_timer();
        }
        self.serve_tx(ops);
    }

    fn serve_tx(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.tx.process(&self.io, self.interrupt.as_ref()) {
            log::error!("virtio-net: TX queue stopped, device needs reset: {e}");
        }
        if self.tx.is_broken() {
            Self::unregister(ops, &self.tx_kick, TX_KICK_EVENT);
        }
    }
}

impl<T: FrameIo> MutEventSubscriber for NetHandler<T> {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, token) in [
            (&self.rx_kick, RX_KICK_EVENT),
            (&self.tx_kick, TX_KICK_EVENT),
        ] {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                log::error!("virtio-net: cannot register a queue notification: {e}");
            }
        }
        self.watch_tap(ops, true);
        if let Some(fd) = self.tx_limiter_fd()
            && let Err(e) = ops.add(Events::with_data_raw(fd, TX_LIMITER_EVENT, EventSet::IN))
        {
            log::error!("virtio-net: cannot register the TX rate limiter's timer: {e}");
        }
        if let Some(fd) = self.rx_limiter_fd()
            && let Err(e) = ops.add(Events::with_data_raw(fd, RX_LIMITER_EVENT, EventSet::IN))
        {
            log::error!("virtio-net: cannot register the RX rate limiter's timer: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        match events.data() {
            TAP_EVENT if set.contains(EventSet::IN) => self.serve_rx(ops),
            TAP_EVENT => {
                log::warn!("virtio-net: unexpected events {set:?} on the TAP");
                self.watch_tap(ops, false);
            }
            RX_KICK_EVENT if set.contains(EventSet::IN) => {
                Self::consume(&self.rx_kick);
                self.serve_rx(ops);
            }
            TX_KICK_EVENT if set.contains(EventSet::IN) => {
                Self::consume(&self.tx_kick);
                self.serve_tx(ops);
            }
            token @ (RX_KICK_EVENT | TX_KICK_EVENT) => {
                log::warn!("virtio-net: unexpected events {set:?} on kick {token}");
                let fd = if token == RX_KICK_EVENT {
                    &self.rx_kick
                } else {
                    &self.tx_kick
                };
                Self::unregister(ops, fd, token);
            }
            TX_LIMITER_EVENT => self.on_tx_limiter(ops),
            RX_LIMITER_EVENT => self.on_rx_limiter(ops),
            other => log::warn!("virtio-net: unknown event token {other}"),
        }
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
