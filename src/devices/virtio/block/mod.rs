//! virtio-blk (device ID 2): one request queue of up to 256 entries over a disk image.
//!
//! Layers, one file each:
//! - [`config`]: offered features and the configuration space;
//! - [`disk`]: the disk image and its positional I/O straight into guest memory;
//! - [`request`]: parsing and executing one descriptor chain (no eventfds, no rings);
//! - [`queue`]: draining the request queue and signalling the driver through a trait;
//! - [`handler`]: the event-loop subscriber that reacts to queue notifications;
//! - [`device`]: [`Block`], the [`VirtioDevice`](super::VirtioDevice) the transport drives.

pub mod config;
pub mod device;
pub mod disk;
pub mod handler;
pub mod live;
pub mod queue;
pub mod request;

#[cfg(test)]
mod test_utils;

pub use device::Block;
pub use disk::{DiskError, DiskImage};
pub use handler::BlockHandler;
pub use live::{LiveDrive, LiveDriveError};
pub use queue::{BlockCounters, BlockQueue, BlockQueueError, BlockStats};
pub use request::{Completion, RequestError, RequestOutcome, RequestType, process_request};
