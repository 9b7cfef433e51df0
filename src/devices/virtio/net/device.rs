//! The virtio-net device as its transport sees it ([`VirtioDevice`]).

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF};

use super::config::{ConfigSpace, QUEUE_SIZE, avail_features, rx_frame_capacity, tap_offloads};
use super::counters::{NetCounters, NetStats};
use super::handler::NetHandler;
use super::rx::{NetRxQueue, RxConfig};
use super::tap::Tap;
use super::tx::NetTxQueue;
use crate::devices::virtio::rate_limiter::RateLimiter;
use crate::devices::virtio::{
    ActivateContext, ActivateError, EventLoopHandle, Subscriber, VirtioCore,
};

/// MTU assumed when the TAP's cannot be read.
const DEFAULT_MTU: usize = 1500;

/// A virtio-net device with one RX and one TX queue over a TAP.
pub struct Net {
    tap: Arc<Tap>,
    mac: [u8; 6],
    config: ConfigSpace,
    core: VirtioCore,
    counters: Arc<NetCounters>,
    tx_limiter: Option<Arc<Mutex<RateLimiter>>>,
    rx_limiter: Option<Arc<Mutex<RateLimiter>>>,
}

impl Net {
    /// A device on `tap` with address `mac`; its queues are served on the event loop
    /// behind `events`.
    pub fn new(tap: Tap, mac: [u8; 6], events: EventLoopHandle) -> Self {
        Self {
            tx_limiter: None,
            rx_limiter: None,
            tap: Arc::new(tap),
            mac,
            config: ConfigSpace::new(mac),
            core: VirtioCore::new(
                VIRTIO_ID_NET,
                avail_features(),
                &[QUEUE_SIZE; 2],
                events,
                "virtio-net",
            ),
            counters: Arc::new(NetCounters::default()),
        }
    }

    /// The TX rate limiter, if any, shared with the queue handler (to change it while
    /// running).
    pub fn tx_rate_limiter(&self) -> Option<Arc<Mutex<RateLimiter>>> {
        self.tx_limiter.clone()
    }

    /// The same device, the frames it sends limited by `limiter`.
    pub fn with_tx_rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.tx_limiter = Some(Arc::new(Mutex::new(limiter)));
        self
    }

    /// The RX rate limiter, if any, shared with the queue handler.
    pub fn rx_rate_limiter(&self) -> Option<Arc<Mutex<RateLimiter>>> {
        self.rx_limiter.clone()
    }

    /// The same device, the frames it receives limited by `limiter`.
    pub fn with_rx_rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.rx_limiter = Some(Arc::new(Mutex::new(limiter)));
        self
    }

    /// The TAP.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The device counters so far (they survive resets).
    pub fn stats(&self) -> NetStats {
        self.counters.snapshot()
    }

    /// The live counters, for a metrics reader that outlives this borrow.
    pub fn counters(&self) -> Arc<NetCounters> {
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

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("tap", &self.tap)
            .field("mac", &super::config::format_mac(&self.mac))
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl crate::devices::virtio::CoreDevice for Net {
    fn core(&self) -> &VirtioCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let ActivateContext {
            mem,
            queues,
            kicks,
            interrupt,
        } = ctx;
        let ([rxq, txq], [rx_kick, tx_kick]) = self.core.ready_queues(&mem, queues, kicks)?;
        let acked = self.core.acked_features();
        self.tap
            .set_offloads(tap_offloads(acked))
            .map_err(|e| ActivateError::Device(e.to_string()))?;
        let mtu = self.tap.mtu().unwrap_or_else(|e| {
            log::warn!("virtio-net: {e}; assuming MTU {DEFAULT_MTU}");
            DEFAULT_MTU
        });
        let rx_config = RxConfig {
            mergeable: self.core.has_feature(VIRTIO_NET_F_MRG_RXBUF),
            guest_csum: self.core.has_feature(VIRTIO_NET_F_GUEST_CSUM),
            frame_capacity: rx_frame_capacity(acked, mtu),
        };
        let rx = NetRxQueue::new(mem.clone(), rxq, Arc::clone(&self.counters), rx_config)
            .with_limiter(self.rx_limiter.clone());
        let tx = NetTxQueue::new(mem, txq, Arc::clone(&self.counters))
            .with_limiter(self.tx_limiter.clone());
        let handler = NetHandler::new(Arc::clone(&self.tap), rx, tx, rx_kick, tx_kick, interrupt);
        self.core
            .install(Arc::new(Mutex::new(handler)) as Subscriber)
    }

    fn reset(&mut self) {
        self.core.reset();
        if let Err(e) = self.tap.set_offloads(0) {
            log::warn!("virtio-net: {e}");
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
