//! Device counters, shared between the event loop and their readers, and a limiter that
//! keeps a misbehaving peer from flooding the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Device counters (they survive resets).
#[derive(Debug, Default)]
pub struct VsockCounters {
    pub(super) packets_to_guest: AtomicU64,
    pub(super) bytes_to_guest: AtomicU64,
    pub(super) packets_from_guest: AtomicU64,
    pub(super) bytes_from_guest: AtomicU64,
    pub(super) connections_opened: AtomicU64,
    pub(super) resets_sent: AtomicU64,
    pub(super) resets_received: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) host_rejected: AtomicU64,
    pub(super) rx_dropped: AtomicU64,
    pub(super) queue_errors: AtomicU64,
    pub(super) interrupts: AtomicU64,
}

impl VsockCounters {
    fn all(&self) -> [&std::sync::atomic::AtomicU64; 13] {
        [
            &self.packets_to_guest,
            &self.bytes_to_guest,
            &self.packets_from_guest,
            &self.bytes_from_guest,
            &self.connections_opened,
            &self.resets_sent,
            &self.resets_received,
            &self.malformed,
            &self.dropped,
            &self.host_rejected,
            &self.rx_dropped,
            &self.queue_errors,
            &self.interrupts,
        ]
    }

    /// Every counter's value, in declaration order (for snapshots).
    pub fn values(&self) -> Vec<u64> {
        self.all()
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    /// Adds `values` (from [`Self::values`] of a snapshotted device) to the counters.
    pub fn preload(&self, values: &[u64]) {
        for (c, v) in self.all().iter().zip(values) {
            c.fetch_add(*v, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A copy of [`VsockCounters`] at one moment. Byte counts are payload bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockStats {
    /// Packets written into the guest's RX buffers (data and control).
    pub packets_to_guest: u64,
    /// Payload bytes of those packets.
    pub bytes_to_guest: u64,
    /// Well-formed packets taken from the guest's TX queue.
    pub packets_from_guest: u64,
    /// Payload bytes of RW packets accepted from the guest.
    pub bytes_from_guest: u64,
    /// Connections established (either side initiated).
    pub connections_opened: u64,
    /// RST packets sent to the guest.
    pub resets_sent: u64,
    /// RST packets received from the guest.
    pub resets_received: u64,
    /// Malformed TX chains dropped (bad descriptors, short header, bad `len`).
    pub malformed: u64,
    /// Well-formed guest packets refused (wrong CID or type, unknown op, no such
    /// connection, credit exceeded), and control packets dropped for lack of room.
    pub dropped: u64,
    /// Host peers turned away (bad `CONNECT` line, timeout, too many connections).
    pub host_rejected: u64,
    /// Malformed RX buffers returned unused.
    pub rx_dropped: u64,
    /// Malformed rings (the device then needs a reset).
    pub queue_errors: u64,
    /// Used-ring interrupts raised.
    pub interrupts: u64,
}

impl VsockCounters {
    /// The current values.
    pub fn snapshot(&self) -> VsockStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VsockStats {
            packets_to_guest: get(&self.packets_to_guest),
            bytes_to_guest: get(&self.bytes_to_guest),
            packets_from_guest: get(&self.packets_from_guest),
            bytes_from_guest: get(&self.bytes_from_guest),
            connections_opened: get(&self.connections_opened),
            resets_sent: get(&self.resets_sent),
            resets_received: get(&self.resets_received),
            malformed: get(&self.malformed),
            dropped: get(&self.dropped),
            host_rejected: get(&self.host_rejected),
            rx_dropped: get(&self.rx_dropped),
            queue_errors: get(&self.queue_errors),
            interrupts: get(&self.interrupts),
        }
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }
}

/// Lets a few warnings through per period and turns the rest into debug messages, so a
/// peer that misbehaves in a loop cannot flood the log.
#[derive(Debug)]
pub struct WarnLimiter {
    period_start: Option<Instant>,
    in_period: u32,
    suppressed: u64,
}

impl WarnLimiter {
    /// Warnings let through per period.
    pub const BURST: u32 = 10;
    /// The period.
    pub const PERIOD: Duration = Duration::from_secs(10);

    pub const fn new() -> Self {
        Self {
            period_start: None,
            in_period: 0,
            suppressed: 0,
        }
    }

    /// Logs `msg` at warn level if the budget allows, else at debug level.
    pub fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .period_start
            .is_none_or(|start| now.duration_since(start) >= Self::PERIOD)
        {
            if self.suppressed > 0 {
                log::warn!(
                    "virtio-vsock: {} similar warnings suppressed",
                    self.suppressed
                );
            }
            self.period_start = Some(now);
            self.in_period = 0;
            self.suppressed = 0;
        }
        if self.in_period < Self::BURST {
            self.in_period += 1;
            log::warn!("virtio-vsock: {msg}");
        } else {
            self.suppressed += 1;
            log::debug!("virtio-vsock: {msg}");
        }
    }
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self::new()
    }
}
