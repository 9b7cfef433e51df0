//! virtio-vsock (device ID 19): stream sockets between the guest and host processes,
//! over host Unix sockets (the Firecracker convention).
//!
//! # Addresses
//! The host is CID 2 ([`HOST_CID`]); the guest has the CID given to [`Vsock::new`]
//! (3 to 2^32 - 2, see [`validate_cid`]). Only stream sockets are supported.
//!
//! # Host-initiated connections
//! A host process connects to the Unix socket at `uds_path`
//! ([`VsockBackendConfig::uds_path`]) and sends one line:
//!
//! ```text
//! CONNECT <port>\n
//! ```
//!
//! where `<port>` is the guest's vsock port in decimal (a `\r` before the `\n` is
//! accepted; the line is at most 32 bytes). The device asks the guest for a connection to
//! that port from a fresh host port (counting up from 2^30). If the guest accepts, the
//! device answers
//!
//! ```text
//! OK <host_port>\n
//! ```
//!
//! and from then on the Unix stream carries the connection's bytes both ways. If no guest
//! program listens on the port, or the guest does not answer within 8 seconds, the Unix
//! stream is closed without an answer. A malformed or over-long line, or none within 5
//! seconds, also closes it. Bytes sent after the line are delivered once the connection
//! is established. For example, with a guest program listening on vsock port 5000:
//!
//! ```text
//! $ socat - UNIX-CONNECT:/tmp/vm.sock
//! CONNECT 5000
//! OK 1073741824
//! (the connection's bytes)
//! ```
//!
//! # Guest-initiated connections
//! A guest connecting to CID 2, port P reaches, in this order:
//! - an in-process port registered with [`Vsock::register_host_port`]: the other end of
//!   a new Unix stream socket pair is sent on its channel;
//! - else the Unix socket `<uds_path>_P` (for example `/tmp/vm.sock_1234`), which a host
//!   process listens on.
//!
//! If neither exists, or the connection table is full (1024 connections), the guest's
//! connect fails with a reset. For example, `socat UNIX-LISTEN:/tmp/vm.sock_1234 -` on
//! the host serves `socat - VSOCK-CONNECT:2:1234` in the guest.
//!
//! # The socket file
//! The listener is bound when the device is created: an existing file at `uds_path` (a
//! stale socket from an earlier run, say) is an error, not replaced. The device removes
//! the file when it is dropped.
//!
//! # Closing
//! A host stream reaching end of file is reported to the guest as SHUTDOWN (no more
//! data); closing it entirely as a full SHUTDOWN, after the data it wrote. A guest
//! SHUTDOWN of its sending side shuts down the write side of the host stream; a guest
//! close or reset closes the host stream. A device reset closes every host stream.
//!
//! # Layers, one file each
//! - [`config`]: constants, features, CID rules, the configuration space;
//! - [`packet`]: the packet header and reading a TX chain; [`chain`]: byte ranges of
//!   chains in guest memory;
//! - [`connection`]: one connection's state and credit-based flow control;
//! - [`host`]: the listener, the `CONNECT` line, connecting to host sockets;
//! - [`muxer`] with [`from_guest`], [`to_guest`] and [`host_events`]: the connection
//!   table and what happens on each packet or host socket event;
//! - [`rx`] and [`tx`]: serving the receive and transmit queues (no eventfds), with
//!   what they share in [`ring`];
//! - [`handler`]: the event-loop subscriber; [`device`]: [`Vsock`], the
//!   [`VirtioDevice`](super::VirtioDevice) the transport drives.

pub mod chain;
pub mod config;
pub mod connection;
pub mod counters;
pub mod device;
pub mod from_guest;
pub mod handler;
pub mod host;
pub mod host_events;
pub mod muxer;
pub mod packet;
pub mod ring;
pub mod rx;
pub mod to_guest;
pub mod tx;

#[cfg(test)]
mod test_utils;

pub use config::{HOST_CID, Timeouts, validate_cid};
pub use counters::{VsockCounters, VsockStats};
pub use device::{Vsock, VsockBackendConfig, VsockError};
pub use handler::VsockHandler;
pub use muxer::{Muxer, MuxerError};
