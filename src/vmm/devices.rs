//! Attaching virtio devices to the VM: each gets a 4 KiB virtio-mmio window and an IRQ
//! line, one ioeventfd per queue on its QueueNotify register (so a guest kick never
//! leaves the kernel for a vCPU thread), an irqfd for its interrupt, and an entry that
//! announces it on the kernel command line.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::cmdline::VirtioMmioEntry;
use crate::boot::layout;
use crate::devices::bus::{BusError, Buses};
use crate::devices::virtio::mmio::{MMIO_WINDOW_SIZE, MmioError, MmioTransport, NOTIFY_REG_OFFSET};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};

/// Errors attaching a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "too many virtio devices (at most {})",
        layout::MAX_VIRTIO_MMIO_DEVICES
    )]
    TooMany,
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("KVM: cannot register the device's irqfd")]
    Irqfd(#[source] kvm_ioctls::Error),
    #[error("KVM: cannot register the device's ioeventfd")]
    Ioeventfd(#[source] kvm_ioctls::Error),
    #[error("cannot create the virtio-mmio transport")]
    Transport(#[from] MmioError),
    #[error("cannot place the device on the MMIO bus")]
    Bus(#[from] BusError),
}

/// Hands out virtio-mmio slots (window and IRQ) in order.
#[derive(Default)]
pub struct VirtioMmioSlots {
    next: u32,
    attached: Vec<VirtioMmioEntry>,
    refusals: Vec<Arc<AtomicU64>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl VirtioMmioSlots {
    /// No device attached yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The refused-access counter of the device attached last (for the metrics).
    pub fn last_refusals(&self) -> Option<Arc<AtomicU64>> {
        self.refusals.last().cloned()
    }

    /// The devices attached so far, for the kernel command line.
    pub fn entries(&self) -> &[VirtioMmioEntry] {
        &self.attached
    }

    /// The transports attached so far, in slot order (for snapshots).
    pub fn transports(&self) -> &[Arc<Mutex<MmioTransport>>] {
        &self.transports
    }

    /// Attaches `device` to the next free slot.
    pub fn attach(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        buses: &mut Buses,
        device: Box<dyn VirtioDevice>,
    ) -> Result<VirtioMmioEntry, DeviceError> {
        let index = self.next;
        let irq = layout::virtio_mmio_irq(index).ok_or(DeviceError::TooMany)?;
        let base = layout::virtio_mmio_addr(index);
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&irq_evt, irq)
            .map_err(DeviceError::Irqfd)?;
        let mut kicks = Vec::new();
        for queue in 0..device.queue_max_sizes().len() {
            let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
            let queue = u32::try_from(queue).map_err(|_| DeviceError::TooMany)?;
            vm.register_ioevent(
                &kick,
                &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET),
                queue,
            )
            .map_err(DeviceError::Ioeventfd)?;
            kicks.push(kick);
        }
        let transport = MmioTransport::new(
            device,
            mem.clone(),
            Arc::new(VirtioInterrupt::new(irq_evt)),
            kicks,
        )?;
        let refusals = transport.refusals();
        let transport = Arc::new(Mutex::new(transport));
        buses
            .mmio
            .insert(transport.clone(), base, MMIO_WINDOW_SIZE)?;
        self.transports.push(transport);
        self.refusals.push(refusals);
        let entry = VirtioMmioEntry {
            base,
            size: MMIO_WINDOW_SIZE,
            irq,
        };
        self.next += 1;
        self.attached.push(entry);
        Ok(entry)
    }
}
