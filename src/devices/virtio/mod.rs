//! Virtio devices (virtio 1.x, "modern") and their MMIO transport.
//!
//! Layers, one file each:
//! - [`VirtioDevice`]: a device as the transport sees it: features, config space, queue
//!   sizes, activation and reset. Knows nothing about MMIO registers.
//! - [`mmio::MmioTransport`]: the virtio-mmio version 2 register block on the MMIO bus; it
//!   negotiates features, collects the queue configuration and activates the device.
//! - Per device (e.g. [`block`]): request parsing and execution on a `virtio_queue::Queue`
//!   (no eventfds), and the event-loop glue that reacts to queue notifications.
//!
//! Queue notifications reach the device through ioeventfds (one per queue, registered by
//! the VMM at the transport's QueueNotify register), and the device interrupts the guest
//! through an irqfd ([`IrqTrigger`]). The vCPU threads never run device I/O.

pub mod activation;
pub mod block;
pub mod mmio;
pub mod net;
pub mod vsock;

#[cfg(test)]
pub(crate) mod test_utils;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use event_manager::{MutEventSubscriber, RemoteEndpoint};
use std::sync::Mutex;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: the device complies with virtio 1.x (required of modern devices).
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Interrupt status bit: the device used buffers in a queue.
pub const VIRTIO_INT_USED_RING: u32 = 0x1;
/// Interrupt status bit: the device's configuration changed (or it needs a reset).
pub const VIRTIO_INT_CONFIG: u32 = 0x2;

/// A subscriber of the device event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;
/// Handle for running closures on the device event loop's thread (adding a device's
/// queue handler when the driver activates it, removing it on reset).
pub type EventLoopHandle = RemoteEndpoint<Subscriber>;

/// The device's channel back to the driver: raises the interrupt line (sets a bit in the
/// transport's InterruptStatus register and signals the irqfd that KVM injects into the
/// guest) and flags DEVICE_NEEDS_RESET when the driver broke the device's rules.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irq: EventFd,
}

impl IrqTrigger {
    /// A trigger that signals `irq` (an eventfd registered with KVM as an irqfd).
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq,
        }
    }

    /// Sets `bit` (VIRTIO_INT_*) in InterruptStatus and raises the interrupt.
    pub fn trigger(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }

    /// Tells the driver that buffers were used.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.trigger(VIRTIO_INT_USED_RING)
    }

    /// Tells the driver that the configuration changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.trigger(VIRTIO_INT_CONFIG)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The device met an error it cannot recover from (for example a malformed avail
    /// ring): the transport reports DEVICE_NEEDS_RESET in its Status register, and the
    /// driver is told through a configuration-change interrupt.
    pub fn signal_needs_reset(&self) -> io::Result<()> {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.trigger(VIRTIO_INT_CONFIG)
    }

    /// Whether [`IrqTrigger::signal_needs_reset`] was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Clears every pending bit and the needs-reset flag (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// The eventfd behind the interrupt (for tests and for registering the irqfd).
    pub fn eventfd(&self) -> &EventFd {
        &self.irq
    }
}

/// How [`drain_queue`] stopped early.
#[derive(Debug)]
pub enum DrainError<E> {
    /// Serving the chains failed.
    Serve(E),
    /// Reading or writing the notification-suppression fields failed.
    Notification(virtio_queue::Error),
    /// The ring said chains were available, yet a whole pass took none: its next entry is
    /// one the queue iterator refuses (a head index out of range). Serving again would spin
    /// forever, so the ring counts as malformed.
    Stuck,
}

/// Serves a queue until the driver has nothing more for it: with notifications off,
/// `serve` is called until it takes no chain (it returns how many it took); then
/// notifications are re-enabled and, if the driver added chains meanwhile, it goes round
/// again. `ring` gives the queue and guest memory out of `state`. Returns the number of
/// chains served.
pub fn drain_queue<S, E>(
    state: &mut S,
    ring: fn(&mut S) -> (&mut Queue, &GuestMemoryMmap),
    mut serve: impl FnMut(&mut S) -> Result<usize, E>,
) -> Result<usize, DrainError<E>> {
    use virtio_queue::QueueT;

    let mut handled = 0;
    let mut after_more = false;
    loop {
        let (queue, mem) = ring(state);
        queue
            .disable_notification(mem)
            .map_err(DrainError::Notification)?;
        let mut served = 0;
        loop {
            let n = serve(state).map_err(DrainError::Serve)?;
            if n == 0 {
                break;
            }
            served += n;
        }
        handled += served;
        if after_more && served == 0 {
            return Err(DrainError::Stuck);
        }
        let (queue, mem) = ring(state);
        after_more = queue
            .enable_notification(mem)
            .map_err(DrainError::Notification)?;
        if !after_more {
            return Ok(handled);
        }
    }
}

/// Takes the next chain from `queue`, for a device that takes chains only when it has
/// something to put into them (a receive queue). Driver notifications are off while
/// chains are taken and back on once the ring is empty, after which the ring is looked at
/// once more: chains added meanwhile came with no notification. `notify_enabled` tracks
/// that state across calls (true for a fresh queue). `Ok(None)`: the ring is empty and
/// notifications are on. `avail_err` wraps a malformed ring error; a ring that announces
/// a chain the iterator refuses is [`DrainError::Stuck`].
pub fn next_avail_chain<'m, E>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    notify_enabled: &mut bool,
    avail_err: fn(virtio_queue::Error) -> E,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, DrainError<E>> {
    use virtio_queue::{QueueOwnedT, QueueT};

    let mut after_more = false;
    loop {
        let next = queue
            .iter(mem)
            .map_err(|e| DrainError::Serve(avail_err(e)))?
            .next();
        if let Some(chain) = next {
            if *notify_enabled {
                *notify_enabled = false;
                queue
                    .disable_notification(mem)
                    .map_err(DrainError::Notification)?;
            }
            return Ok(Some(chain));
        }
        if after_more {
            return Err(DrainError::Stuck);
        }
        *notify_enabled = true;
        after_more = queue
            .enable_notification(mem)
            .map_err(DrainError::Notification)?;
        if !after_more {
            return Ok(None);
        }
    }
}

/// What a device needs to start serving its queues once the driver set DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory, where the queues and buffers live.
    pub mem: GuestMemoryMmap,
    /// The queues, configured and ready, one per entry of `queue_max_sizes()`.
    pub queues: Vec<Queue>,
    /// Notification eventfds, one per queue: readable when the driver kicked that queue.
    pub kicks: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<IrqTrigger>,
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
