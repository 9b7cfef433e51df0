//! virtio-net (device ID 1): one RX and one TX queue over a host TAP device.
//!
//! Layers, one file each:
//! - [`config`]: MAC addresses, offered features, the TAP offloads they imply, and the
//!   configuration space;
//! - [`tap`]: the TAP device and vectored frame I/O straight to and from guest memory
//!   ([`FrameIo`]);
//! - [`queue`]: what both queues share: counters, chain-to-guest-memory mapping, the
//!   used-ring batch writer and interrupt suppression;
//! - [`rx`] and [`tx`]: serving the receive and transmit queues (no eventfds);
//! - [`handler`]: the event-loop subscriber (TAP readable, RX kick, TX kick);
//! - [`device`]: [`Net`], the [`VirtioDevice`](super::VirtioDevice) the transport drives.

pub mod config;
pub mod counters;
pub mod device;
pub mod handler;
pub mod rx;
pub mod tap;
pub mod tx;

#[cfg(test)]
pub(crate) mod test_utils;

pub use config::{MacError, default_mac, format_mac, parse_mac};
pub use counters::{NetCounters, NetStats};
pub use device::Net;
pub use handler::NetHandler;
pub use rx::{NetRxQueue, RxConfig, RxProgress};
pub use tap::{Tap, TapError};
pub use tx::NetTxQueue;
