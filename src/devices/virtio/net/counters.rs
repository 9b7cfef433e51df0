//! The virtio-net device's counters: updated by the RX and TX queues on the event loop,
//! read by metrics and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Device counters, shared between the queues (on the event loop) and their readers.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub(super) rx_frames: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
    pub(super) rx_dropped: AtomicU64,
    pub(super) rx_errors: AtomicU64,
    pub(super) rx_starved: AtomicU64,
    pub(super) tx_frames: AtomicU64,
    pub(super) tx_bytes: AtomicU64,
    pub(super) tx_dropped: AtomicU64,
    pub(super) tx_errors: AtomicU64,
    pub(super) queue_errors: AtomicU64,
    pub(super) interrupts: AtomicU64,
}

impl NetCounters {
    fn all(&self) -> [&AtomicU64; 11] {
        [
            &self.rx_frames,
            &self.rx_bytes,
            &self.rx_dropped,
            &self.rx_errors,
            &self.rx_starved,
            &self.tx_frames,
            &self.tx_bytes,
            &self.tx_dropped,
            &self.tx_errors,
            &self.queue_errors,
            &self.interrupts,
        ]
    }

    /// Every counter's value, in declaration order (for snapshots).
    pub fn values(&self) -> Vec<u64> {
        self.all()
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Adds `values` (from [`Self::values`] of a snapshotted device) to the counters.
    pub fn preload(&self, values: &[u64]) {
        for (c, v) in self.all().iter().zip(values) {
            c.fetch_add(*v, Ordering::Relaxed);
        }
    }
}

/// A copy of [`NetCounters`] at one moment. Byte counts exclude the vnet header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Malformed RX buffers returned unused (wrong direction, too short, bad address).
    pub rx_dropped: u64,
    /// Failed reads from the TAP.
    pub rx_errors: u64,
    /// Times a frame waited because the guest had not posted enough buffers.
    pub rx_starved: u64,
    /// Frames sent to the TAP.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Malformed TX chains dropped (wrong direction, too short or long, bad address).
    pub tx_dropped: u64,
    /// Frames the TAP refused (write errors).
    pub tx_errors: u64,
    /// Malformed rings (the device then needs a reset).
    pub queue_errors: u64,
    /// Used-ring interrupts raised.
    pub interrupts: u64,
}

impl NetCounters {
    /// The current values.
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            rx_errors: get(&self.rx_errors),
            rx_starved: get(&self.rx_starved),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            tx_errors: get(&self.tx_errors),
            queue_errors: get(&self.queue_errors),
            interrupts: get(&self.interrupts),
        }
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
