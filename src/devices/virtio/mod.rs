//! Virtio devices (virtio 1.x, "modern") and their MMIO transport.
//!
//! Layers, one file each:
//! - [`VirtioDevice`]: a device as the transport sees it: features, config space, queue
//!   sizes, activation and reset. Knows nothing about MMIO registers.
//! - [`VirtioCore`]: what every device embeds: type, offered and acked features, queue
//!   sizes, configuration generation and the queue handler's place on the event loop;
//!   its [`CoreState`] is saved and restored as a unit. A device implements
//!   [`CoreDevice`] (its core, config space and activation) and gets the rest of
//!   [`VirtioDevice`] from the core.
//! - [`mmio::MmioTransport`]: the virtio-mmio version 2 register block on the MMIO bus; it
//!   negotiates features, collects the queue configuration and activates the device.
//! - Per device (e.g. [`block`]): request parsing and execution on a `virtio_queue::Queue`
//!   (no eventfds), and the event-loop glue that reacts to queue notifications.
//!
//! Queue notifications reach the device through ioeventfds (one per queue, registered by
//! the VMM at the transport's QueueNotify register), and the device interrupts the guest
//! through an irqfd ([`VirtioInterrupt`]). Queue processing that every device shares is in
//! [`queue`]; frame I/O between a file descriptor and guest memory in [`frame_io`]. The vCPU threads never run device I/O.

pub mod activation;
pub mod balloon;
pub mod block;
pub mod core;
pub mod frame_io;
pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rate_limiter;
pub mod rng;
pub mod vsock;

#[cfg(test)]
pub(crate) mod test_utils;

use std::sync::Arc;

use event_manager::{MutEventSubscriber, RemoteEndpoint};
use std::sync::Mutex;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: the device complies with virtio 1.x (required of modern devices).
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

pub use self::core::{CoreState, CoreStateError, VirtioCore};
pub use frame_io::FrameIo;
pub use interrupt::{QueueSignal, VIRTIO_INT_CONFIG, VIRTIO_INT_USED_RING, VirtioInterrupt};
pub use queue::{DrainError, RingError, drain_queue, drain_queue_until, next_avail_chain};

/// A subscriber of the device event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;
/// Handle for running closures on the device event loop's thread (adding a device's
/// queue handler when the driver activates it, removing it on reset).
pub type EventLoopHandle = RemoteEndpoint<Subscriber>;

/// What a device needs to start serving its queues once the driver set DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory, where the queues and buffers live.
    pub mem: GuestMemoryMmap,
    /// The queues, configured and ready, one per entry of `queue_max_sizes()`.
    pub queues: Vec<Queue>,
    /// Notification eventfds, one per queue: readable when the driver kicked that queue.
    pub kicks: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver configured {got} queues, the device has {want}")]
    QueueCount { got: usize, want: usize },
    #[error("cannot register the device with the event loop: {0}")]
    EventLoop(String),
    #[error("device activation failed: {0}")]
    Device(String),
}

/// A virtio device as seen by its transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 = block, 1 = net, 19 = vsock, ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (including VIRTIO_F_VERSION_1).
    fn avail_features(&self) -> u64;
    /// Features the driver accepted (a subset of `avail_features`, checked by the transport).
    fn set_acked_features(&mut self, features: u64);
    /// The ConfigGeneration register: changes whenever the device changes its
    /// configuration space.
    fn config_generation(&self) -> u32 {
        0
    }
    /// Reads the device configuration space at `offset`; out-of-range bytes read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving the queues (called once the driver set DRIVER_OK).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving the queues after the driver reset the device; the device must be
    /// ready to be activated again.
    fn reset(&mut self);
}

/// A device built on a [`VirtioCore`]: it gives its core, its configuration space and its
/// activation; type, features, queue sizes, generation, config writes (ignored) and reset
/// come from the core unless the device says otherwise, and [`VirtioDevice`] follows.
pub trait CoreDevice: Send {
    /// The embedded core.
    fn core(&self) -> &VirtioCore;
    /// The embedded core, to change.
    fn core_mut(&mut self) -> &mut VirtioCore;
    /// See [`VirtioDevice::config_generation`].
    fn config_generation(&self) -> u32 {
        self.core().config_generation()
    }
    /// See [`VirtioDevice::read_config`].
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// See [`VirtioDevice::write_config`]; by default the space is read-only.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{}: ignoring a {}-byte config write at {offset:#x}",
            self.core().name(),
            data.len()
        );
    }
    /// See [`VirtioDevice::activate`].
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// See [`VirtioDevice::reset`]; by default the core's reset.
    fn reset(&mut self) {
        self.core_mut().reset();
    }
}

impl<T: CoreDevice> VirtioDevice for T {
    fn device_type(&self) -> u32 {
        self.core().device_type()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.core().queue_sizes()
    }

    fn avail_features(&self) -> u64 {
        self.core().avail_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.core_mut().ack_features(features);
    }

    fn config_generation(&self) -> u32 {
        CoreDevice::config_generation(self)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        CoreDevice::read_config(self, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        CoreDevice::write_config(self, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        CoreDevice::activate(self, ctx)
    }

    fn reset(&mut self) {
        CoreDevice::reset(self);
    }
}
