//! [`Fs`]: the virtio-fs device as the transport sees it. Its features are the backend's
//! (less vhost-user's own bit); on activation it hands the backend the memory table and
//! each vring (size, addresses, base, call and kick eventfds, enable); on reset it stops
//! the vrings. The queues never pass through hvlite while the backend lives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::calls::CallHandler;
use super::config::{FsConfigSpace, TagError};
use super::link::{Link, LinkError};
use super::{NUM_QUEUES, QUEUE_SIZE, VIRTIO_ID_FS};
use crate::devices::virtio::{
    ActivateContext, ActivateError, EventLoopHandle, VirtioCore, VirtioDevice,
};

/// Virtio features hvlite passes from the backend to the driver.
const GUEST_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);
/// Protocol features hvlite uses: every request acknowledged.
const PROTOCOL_FEATURES: u64 = VhostUserProtocolFeatures::REPLY_ACK.bits();

/// Errors setting up a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Tag(#[from] TagError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the backend does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("guest memory is not shared with the backend (it must be backed by a memfd)")]
    NotShared,
    #[error("queue address {0:#x} is not in guest memory")]
    Address(u64),
}

/// Whether a share's backend is still there; shared by the device, its event-loop
/// handler and the VMM (which reports a lost backend when the VM ends).
#[derive(Debug)]
pub struct FsHealth {
    tag: String,
    gone: AtomicBool,
    answered: AtomicU64,
}

impl FsHealth {
    /// A live backend of the share `tag`.
    pub fn new(tag: &str) -> Self {
        Self {
            tag: tag.to_string(),
            gone: AtomicBool::new(false),
            answered: AtomicU64::new(0),
        }
    }

    /// The share's mount tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether the backend went away.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// Records that the backend went away; true the first time.
    pub fn mark_gone(&self) -> bool {
        !self.gone.swap(true, Ordering::SeqCst)
    }

    /// Guest requests answered with EIO since the backend went away.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    pub(super) fn add_answered(&self, n: u64) {
        self.answered.fetch_add(n, Ordering::SeqCst);
    }
}

/// A virtio-fs device whose queues a vhost-user backend serves.
pub struct Fs {
    core: VirtioCore,
    config: FsConfigSpace,
    link: Box<dyn Link>,
    /// Features the backend offered (including vhost-user's PROTOCOL_FEATURES bit).
    backend_features: u64,
    /// Whether SET_VRING_ENABLE is needed (PROTOCOL_FEATURES negotiated).
    rings_need_enable: bool,
    /// The backend's "used buffers" eventfds, one per queue.
    calls: [EventFd; NUM_QUEUES],
    health: Arc<FsHealth>,
}

impl Fs {
    /// Makes the device for the share `tag` after the vhost-user handshake with the
    /// backend behind `link`: SET_OWNER, GET_FEATURES and the protocol features.
    pub fn new(
        tag: &str,
        mut link: Box<dyn Link>,
        events: EventLoopHandle,
    ) -> Result<Self, FsError> {
        let config = FsConfigSpace::new(tag, 1)?;
        link.set_owner()?;
        let backend_features = link.get_features()?;
        if backend_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::NotModern);
        }
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let rings_need_enable = backend_features & protocol != 0;
        if rings_need_enable {
            let offered = link.get_protocol_features()?;
            link.set_protocol_features(offered & PROTOCOL_FEATURES)?;
        }
        let calls = [eventfd()?, eventfd()?];
        Ok(Self {
            core: VirtioCore::new(
                VIRTIO_ID_FS,
                backend_features & GUEST_FEATURES,
                &[QUEUE_SIZE; NUM_QUEUES],
                events,
                "virtio-fs",
            ),
            config,
            link,
            backend_features,
            rings_need_enable,
            calls,
            health: Arc::new(FsHealth::new(tag)),
        })
    }

    /// The share's health, for reporting a lost backend.
    pub fn health(&self) -> Arc<FsHealth> {
        self.health.clone()
    }

    /// Sends the backend everything it needs to serve the queues.
    fn start_backend(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue; NUM_QUEUES],
        kicks: &[EventFd; NUM_QUEUES],
    ) -> Result<(), FsError> {
        let protocol = self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.link
            .set_features(self.core.acked_features() | protocol)?;
        self.link.set_mem_table(&memory_table(mem)?)?;
        for (i, (q, kick)) in queues.iter().zip(kicks).enumerate() {
            self.link.set_vring_num(i, q.size())?;
            let addr = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host_address(mem, q.desc_table())?,
                used_ring_addr: host_address(mem, q.used_ring())?,
                avail_ring_addr: host_address(mem, q.avail_ring())?,
                log_addr: None,
            };
            self.link.set_vring_addr(i, &addr)?;
            self.link.set_vring_base(i, q.next_avail())?;
            self.link.set_vring_call(i, &self.calls[i])?;
            self.link.set_vring_kick(i, kick)?;
            if self.rings_need_enable {
                self.link.set_vring_enable(i, true)?;
            }
        }
        Ok(())
    }
}

fn eventfd() -> Result<EventFd, FsError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)
}

/// The memory table for SET_MEM_TABLE: every region with its memfd and offset.
fn memory_table(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>, FsError> {
    mem.iter()
        .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|_| FsError::NotShared))
        .collect()
}

/// hvlite's address of guest address `gpa` (vring addresses are given in the frontend's
/// address space and translated by the backend through the memory table).
fn host_address(mem: &GuestMemoryMmap, gpa: u64) -> Result<u64, FsError> {
    mem.get_host_address(GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|_| FsError::Address(gpa))
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        self.core.device_type()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.core.queue_sizes()
    }

    fn avail_features(&self) -> u64 {
        self.core.avail_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.core.ack_features(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let (queues, kicks) =
            (self.core).ready_queues::<NUM_QUEUES>(&ctx.mem, ctx.queues, ctx.kicks)?;
        if !self.health.is_gone()
            && let Err(e) = self.start_backend(&ctx.mem, &queues, &kicks)
        {
            log::error!(
                "virtio-fs {}: the backend refused the queues: {e}; requests fail with EIO",
                self.health.tag()
            );
            self.health.mark_gone();
        }
        let calls = (self.calls.iter())
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ActivateError::Device(format!("cannot clone an eventfd: {e}")))?;
        let handler = CallHandler::new(
            ctx.mem,
            queues,
            kicks,
            calls,
            ctx.interrupt,
            self.link.socket_fd(),
            self.health.clone(),
        );
        self.core.install(Arc::new(Mutex::new(handler)))
    }

    fn reset(&mut self) {
        if self.core.is_active() && !self.health.is_gone() {
            for i in 0..NUM_QUEUES {
                if let Err(e) = self.link.get_vring_base(i) {
                    log::warn!("virtio-fs {}: stopping queue {i}: {e}", self.health.tag());
                }
            }
        }
        self.core.reset();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
