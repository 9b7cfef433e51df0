//! virtio-fs (device ID 26): a host directory shared with the guest, whose queues are
//! served by an external vhost-user backend (virtiofsd), not by hvlite.
//!
//! Layers, one file each:
//! - [`config`]: the device configuration space (the mount tag).
//! - [`link`]: the vhost-user messages hvlite sends, behind a small trait ([`Link`]) that
//!   the `vhost` crate's frontend implements (and a recorder implements in tests).
//! - [`device`]: [`Fs`], the device as the transport sees it; on activation it hands the
//!   backend the memory table and the vrings, on reset it stops them.
//! - [`calls`]: the event-loop glue: the backend's "call" eventfds become guest
//!   interrupts, and a closed backend socket switches the queues to [`failed`].
//! - [`failed`]: answers every FUSE request with EIO once the backend is gone, so the
//!   guest sees I/O errors instead of hanging.
//! - [`daemon`]: finds, starts (sandboxed) and stops virtiofsd.
//!
//! Guest memory must be shared with the backend: the VMM backs it with a memfd when a
//! share is configured (`crate::vmm::memory`).

pub mod calls;
pub mod config;
pub mod daemon;
pub mod device;
pub mod failed;
pub mod link;

pub use config::{FsConfigSpace, MAX_TAG_LEN};
pub use daemon::{Daemon, DaemonError};
pub use device::{Fs, FsError, FsHealth};
pub use link::{FrontendLink, Link, LinkError};

/// Virtio device ID of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Queues: the high-priority queue (FORGET requests) and one request queue.
pub const NUM_QUEUES: usize = 2;
/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 1024;
