//! How a virtio device interrupts its driver: [`VirtioInterrupt`] holds the transport's
//! InterruptStatus and signals the irqfd KVM injects; queue processing reaches it through
//! the small [`QueueSignal`] trait, so it can be tested without eventfds.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// Interrupt status bit: the device used buffers in a queue.
pub const VIRTIO_INT_USED_RING: u32 = 0x1;
/// Interrupt status bit: the device's configuration changed (or it needs a reset).
pub const VIRTIO_INT_CONFIG: u32 = 0x2;

/// The device's channel back to the driver: raises the interrupt line (sets a bit in the
/// transport's InterruptStatus register and signals the irqfd that KVM injects into the
/// guest) and flags DEVICE_NEEDS_RESET when the driver broke the device's rules.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irq: EventFd,
}

impl VirtioInterrupt {
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

    /// Whether [`VirtioInterrupt::signal_needs_reset`] was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Clears every pending bit and the needs-reset flag (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Sets InterruptStatus and the needs-reset flag as a snapshot saved them, without
    /// raising the interrupt.
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// The eventfd behind the interrupt (for tests and for registering the irqfd).
    pub fn eventfd(&self) -> &EventFd {
        &self.irq
    }
}

/// How queue processing reaches the driver.
pub trait QueueSignal {
    /// Buffers were used: raise the used-ring interrupt.
    fn signal_used_queue(&self) -> io::Result<()>;
    /// The driver broke the queue (a malformed ring): ask it to reset the device.
    fn signal_needs_reset(&self) -> io::Result<()>;
}

impl QueueSignal for VirtioInterrupt {
    fn signal_used_queue(&self) -> io::Result<()> {
        VirtioInterrupt::signal_used_queue(self)
    }

    fn signal_needs_reset(&self) -> io::Result<()> {
        VirtioInterrupt::signal_needs_reset(self)
    }
}
