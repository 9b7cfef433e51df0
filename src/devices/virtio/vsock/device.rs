//! The virtio-vsock device as its transport sees it ([`VirtioDevice`]), and its host-side
//! setup.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::config::{NUM_QUEUES, QUEUE_SIZE, Timeouts, avail_features, read_config, validate_cid};
use super::counters::{VsockCounters, VsockStats};
use super::handler::{VsockHandler, VsockQueues};
use super::host::Backend;
use super::muxer::Muxer;
use super::ring::Ring;
use super::rx::VsockRxQueue;
use super::tx::VsockTxQueue;
use crate::devices::virtio::{
    ActivateContext, ActivateError, EventLoopHandle, Subscriber, VirtioCore,
};

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved or out of range (valid: 3 to 4294967294)")]
    InvalidCid(u64),
    #[error("vsock socket path {0:?} already exists (a stale socket? remove it first)")]
    PathInUse(PathBuf),
    #[error("cannot listen on the vsock socket path {path:?}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The host side of a vsock device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VsockBackendConfig {
    /// The Unix socket host processes connect to (`CONNECT <port>\n`); guest connections
    /// to host port P go to `<uds_path>_P`. Without it only in-process ports are served.
    pub uds_path: Option<PathBuf>,
}

/// A virtio-vsock device: stream sockets between the guest and host Unix sockets.
pub struct Vsock {
    guest_cid: u64,
    core: VirtioCore,
    counters: Arc<VsockCounters>,
    backend: Arc<Backend>,
    timeouts: Timeouts,
}

impl Vsock {
    /// A device for the guest with context ID `guest_cid`, its queues served on the
    /// event loop behind `events`. Binds the listener at `cfg.uds_path` now, so that
    /// errors come before boot.
    pub fn new(
        guest_cid: u64,
        cfg: VsockBackendConfig,
        events: EventLoopHandle,
    ) -> Result<Self, VsockError> {
        let guest_cid = validate_cid(guest_cid)?;
        let path = cfg.uds_path.clone();
        let backend = Backend::bind(cfg.uds_path).map_err(|source| match path {
            Some(path) if source.kind() == io::ErrorKind::AddrInUse => VsockError::PathInUse(path),
            path => VsockError::Bind {
                path: path.unwrap_or_default(),
                source,
            },
        })?;
        Ok(Self {
            guest_cid,
            core: VirtioCore::new(
                VIRTIO_ID_VSOCK,
                avail_features(),
                &[QUEUE_SIZE; NUM_QUEUES],
                events,
                "virtio-vsock",
            ),
            counters: Arc::new(VsockCounters::default()),
            backend: Arc::new(backend),
            timeouts: Timeouts::default(),
        })
    }

    /// Uses `timeouts` from the next activation on.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// Guest connections to host `port` are served in-process: for each one the device
    /// creates a Unix stream socket pair, keeps one end and sends the other (blocking)
    /// end on `tx`. Takes precedence over `<uds_path>_<port>`; replaces an earlier
    /// registration of `port`. Once `tx`'s receiver is gone, the port is unregistered
    /// (later requests go to `<uds_path>_<port>`, or get RST).
    pub fn register_host_port(&mut self, port: u32, tx: Sender<UnixStream>) {
        self.backend.register_port(port, tx);
    }

    /// The guest's context ID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The listener's path.
    pub fn uds_path(&self) -> Option<&Path> {
        self.backend.uds_path()
    }

    /// The device counters so far (they survive resets).
    pub fn stats(&self) -> VsockStats {
        self.counters.snapshot()
    }

    /// The live counters, for a metrics reader that outlives this borrow.
    pub fn counters(&self) -> Arc<VsockCounters> {
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

    fn queues(
        &self,
        mem: &GuestMemoryMmap,
        queues: Vec<Queue>,
        kicks: Vec<EventFd>,
    ) -> Result<VsockQueues, ActivateError> {
        let ([rx, tx, event], [rx_kick, tx_kick, _event_kick]) =
            self.core.ready_queues::<NUM_QUEUES>(mem, queues, kicks)?;
        let counters = Arc::clone(&self.counters);
        Ok(VsockQueues {
            rx: VsockRxQueue::new(Ring::new(mem.clone(), rx, Arc::clone(&counters))),
            tx: VsockTxQueue::new(Ring::new(mem.clone(), tx, counters)),
            event,
            rx_kick,
            tx_kick,
        })
    }
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.backend.uds_path())
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl crate::devices::virtio::CoreDevice for Vsock {
    fn core(&self) -> &VirtioCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(self.guest_cid, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let queues = self.queues(&ctx.mem, ctx.queues, ctx.kicks)?;
        let muxer = Muxer::new(
            self.guest_cid,
            Arc::clone(&self.backend),
            Arc::clone(&self.counters),
            self.timeouts,
        )
        .map_err(|e| ActivateError::Device(e.to_string()))?;
        let handler = VsockHandler::new(queues, muxer, ctx.interrupt);
        self.core
            .install(Arc::new(Mutex::new(handler)) as Subscriber)
    }

    fn reset(&mut self) {
        // Dropping the handler closes every host stream of the connections.
        self.core.reset();
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // The handler slot takes the handler off the event loop as it drops. The listener's
        // socket file was created by `new`.
        if let Some(path) = self.backend.uds_path()
            && let Err(e) = std::fs::remove_file(path)
        {
            log::warn!("virtio-vsock: cannot remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
