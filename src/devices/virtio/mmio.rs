//! virtio-mmio transport, version 2 ("modern", virtio 1.x section 4.2.2).
//!
//! [`MmioTransport`] is the 4 KiB register window of one virtio device on the MMIO bus. It
//! walks the driver through the status state machine (ACKNOWLEDGE, DRIVER, FEATURES_OK,
//! DRIVER_OK), negotiates features, records the queue configuration and, on DRIVER_OK,
//! hands the validated queues to the device ([`VirtioDevice::activate`]).
//!
//! Every register is guest-controlled: misuse (wrong access size, wrong phase, bad values)
//! is ignored with a debug log, and a configuration the device cannot run with is reported
//! to the driver through DEVICE_NEEDS_RESET ([`VirtioInterrupt::signal_needs_reset`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateContext, ActivateError, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt};
use crate::devices::bus::BusDevice;

/// Size of a transport's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register: the VMM registers each queue's kick eventfd as a KVM
/// ioeventfd at `window base + NOTIFY_REG_OFFSET`, 4 bytes, datamatch = queue index (u32).
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
/// MagicValue: "virt" in little-endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Version of the register layout (2 = virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// VendorID: the bytes "HVLT" (hvlite) in little-endian order. Linux ignores it.
pub const MMIO_VENDOR_ID: u32 = 0x544c_5648;
/// Start of the device-specific configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

// Register offsets (section 4.2.2).
const REG_MAGIC_VALUE: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = NOTIFY_REG_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;

const ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
/// Status bits the driver may set.
const DRIVER_STATUS_BITS: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED;

/// Errors of the transport: construction errors are returned, activation errors are logged
/// and reported to the driver as DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("{kicks} kick eventfds for a device with {queues} queues")]
    KickCount { kicks: usize, queues: usize },
    #[error("queue {index}: invalid maximum size {size}")]
    QueueMaxSize { index: usize, size: u16 },
    #[error("queue {index} is not ready ({total} queues must be set up)")]
    QueueNotReady { index: usize, total: usize },
    #[error("queue {index}: invalid size {size} (maximum {max})")]
    QueueSize { index: usize, size: u32, max: u16 },
    #[error("queue {index}: {source}")]
    QueueConfig {
        index: usize,
        source: virtio_queue::Error,
    },
    #[error("queue {index}: rings not inside guest memory")]
    QueueMemory { index: usize },
    #[error("cannot clone a kick eventfd: {0}")]
    CloneKick(std::io::Error),
    #[error(transparent)]
    Activate(#[from] ActivateError),
}

/// What the driver wrote to one queue's registers; checked and turned into a
/// [`Queue`] on DRIVER_OK.
#[derive(Clone, Copy, Debug)]
struct QueueConfig {
    max_size: u16,
    num: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            num: u32::from(max_size),
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    fn to_queue(
        self,
        index: usize,
        event_idx: bool,
        mem: &GuestMemoryMmap,
    ) -> Result<Queue, MmioError> {
        let config_err = |source| MmioError::QueueConfig { index, source };
        let mut queue = Queue::new(self.max_size).map_err(config_err)?;
        let size = u16::try_from(self.num).map_err(|_| MmioError::QueueSize {
            index,
            size: self.num,
            max: self.max_size,
        })?;
        queue.try_set_size(size).map_err(|_| MmioError::QueueSize {
            index,
            size: self.num,
            max: self.max_size,
        })?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(config_err)?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(config_err)?;
        queue
            .try_set_used_ring_address(GuestAddress(self.device))
            .map_err(config_err)?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(MmioError::QueueMemory { index });
        }
        Ok(queue)
    }
}

fn set_low(reg: &mut u64, value: u32) {
    *reg = (*reg & !0xffff_ffff) | u64::from(value);
}

fn set_high(reg: &mut u64, value: u32) {
    *reg = (*reg & 0xffff_ffff) | (u64::from(value) << 32);
}

/// The virtio-mmio (version 2) register block of one device.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    device_type: u32,
    avail_features: u64,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    kicks: Vec<EventFd>,
    queues: Vec<QueueConfig>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a non-zero word beyond the 64 feature bits.
    driver_features_invalid: bool,
    acked_features: u64,
    status: u32,
    activated: bool,
    /// Register accesses and status changes refused (shared with the metrics).
    refused: Arc<AtomicU64>,
}

impl MmioTransport {
    /// A transport for `device`; `kicks` holds one notification eventfd per queue (the VMM
    /// registers clones of them as ioeventfds on QueueNotify, see [`NOTIFY_REG_OFFSET`]).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        kicks: Vec<EventFd>,
    ) -> Result<Self, MmioError> {
        let max_sizes = device.queue_max_sizes();
        if kicks.len() != max_sizes.len() {
            return Err(MmioError::KickCount {
                kicks: kicks.len(),
                queues: max_sizes.len(),
            });
        }
        for (index, &size) in max_sizes.iter().enumerate() {
            // Validates the maximum size (a power of two, 1..=32768).
            Queue::new(size).map_err(|_| MmioError::QueueMaxSize { index, size })?;
        }
        let queues = max_sizes.iter().map(|&max| QueueConfig::new(max)).collect();
        Ok(Self {
            device_type: device.device_type(),
            avail_features: device.avail_features(),
            device,
            mem,
            interrupt,
            kicks,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_invalid: false,
            acked_features: 0,
            status: 0,
            activated: false,
            refused: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The virtio device ID (DeviceID register).
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Whether the device is running (activated on DRIVER_OK and not reset since).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The counter of refused accesses (unknown or read-only registers, wrong widths,
    /// writes in the wrong status, absent queues, bad status transitions and features,
    /// failed activations), for the metrics.
    pub fn refusals(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.refused)
    }

    fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device behind the transport, mutably.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::try_from(self.queue_sel).ok()?)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => MMIO_VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size.into()),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready.into()),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS if self.interrupt.needs_reset() => self.status | NEEDS_RESET,
            REG_STATUS => self.status,
            // The transport cannot see device-side configuration changes.
            REG_CONFIG_GENERATION => self.device.config_generation(),
            _ => {
                self.refuse();
                debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_QUEUE_NUM
            | REG_QUEUE_READY
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, value),
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            _ => {
                self.refuse();
                debug!("virtio-mmio: write of read-only or unknown register {offset:#x}");
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & DRIVER == 0 || self.status & (FEATURES_OK | FAILED) != 0 {
            self.refuse();
            debug!(
                "virtio-mmio: DriverFeatures write in status {:#x}",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => set_low(&mut self.driver_features, value),
            1 => set_high(&mut self.driver_features, value),
            _ if value != 0 => self.driver_features_invalid = true,
            _ => {}
        }
    }

    fn write_queue_reg(&mut self, offset: u64, value: u32) {
        if self.status & FEATURES_OK == 0 || self.status & (DRIVER_OK | FAILED) != 0 {
            self.refuse();
            debug!(
                "virtio-mmio: queue register {offset:#x} written in status {:#x}",
                self.status
            );
            return;
        }
        let sel = self.queue_sel;
        let Some(queue) = usize::try_from(sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            debug!("virtio-mmio: queue register {offset:#x} written for absent queue {sel}");
            return;
        };
        match offset {
            REG_QUEUE_NUM => queue.num = value,
            REG_QUEUE_READY => match value {
                0 | 1 => queue.ready = value == 1,
                _ => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    debug!("virtio-mmio: QueueReady write of {value:#x}");
                }
            },
            REG_QUEUE_DESC_LOW => set_low(&mut queue.desc, value),
            REG_QUEUE_DESC_HIGH => set_high(&mut queue.desc, value),
            REG_QUEUE_DRIVER_LOW => set_low(&mut queue.driver, value),
            REG_QUEUE_DRIVER_HIGH => set_high(&mut queue.driver, value),
            REG_QUEUE_DEVICE_LOW => set_low(&mut queue.device, value),
            REG_QUEUE_DEVICE_HIGH => set_high(&mut queue.device, value),
            _ => {}
        }
    }

    fn notify(&self, value: u32) {
        match usize::try_from(value).ok().and_then(|i| self.kicks.get(i)) {
            Some(kick) => {
                if let Err(e) = kick.write(1) {
                    warn!("virtio-mmio: cannot signal the kick of queue {value}: {e}");
                }
            }
            None => {
                self.refuse();
                debug!("virtio-mmio: QueueNotify for absent queue {value}");
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device; drivers echo it back when they add a
        // bit to the status they read.
        let value = value & !NEEDS_RESET;
        let old = self.status;
        let added = value & !old;
        let in_order = (value & DRIVER == 0 || value & ACKNOWLEDGE != 0)
            && (value & FEATURES_OK == 0 || value & DRIVER != 0)
            && (value & DRIVER_OK == 0 || value & FEATURES_OK != 0);
        if value & !DRIVER_STATUS_BITS != 0
            || value & old != old
            || !in_order
            || (old & FAILED != 0 && added != 0)
        {
            self.refuse();
            debug!("virtio-mmio: ignored status transition {old:#x} -> {value:#x}");
            return;
        }
        let mut new = value;
        if added & FEATURES_OK != 0 {
            if self.features_acceptable() {
                self.acked_features = self.driver_features;
                self.device.set_acked_features(self.driver_features);
            } else {
                self.refuse();
                debug!(
                    "virtio-mmio: rejected driver features {:#x} (device offers {:#x})",
                    self.driver_features, self.avail_features
                );
                new &= !(FEATURES_OK | DRIVER_OK);
            }
        }
        self.status = new;
        if added & new & DRIVER_OK != 0 && new & FAILED == 0 && !self.activated {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        !self.driver_features_invalid
            && self.driver_features & !self.avail_features == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        match self.try_activate(&[]) {
            Ok(()) => self.activated = true,
            Err(e) => {
                self.refuse();
                warn!(
                    "virtio-mmio: cannot activate device type {}: {e}",
                    self.device_type
                );
                if let Err(e) = self.interrupt.signal_needs_reset() {
                    warn!("virtio-mmio: cannot signal the needs-reset interrupt: {e}");
                }
            }
        }
    }

    /// Hands the queues to the device; `positions` (from a snapshot) gives each queue's
    /// next available and next used index, a fresh queue starts at 0.
    fn try_activate(&mut self, positions: &[(u16, u16)]) -> Result<(), MmioError> {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let total = self.queues.len();
        let mut queues = Vec::with_capacity(total);
        for (index, config) in self.queues.iter().enumerate() {
            if !config.ready {
                return Err(MmioError::QueueNotReady { index, total });
            }
            let mut queue = config.to_queue(index, event_idx, &self.mem)?;
            if let Some(&(next_avail, next_used)) = positions.get(index) {
                queue.set_next_avail(next_avail);
                queue.set_next_used(next_used);
            }
            queues.push(queue);
        }
        let kicks = self
            .kicks
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(MmioError::CloneKick)?;
        self.device.activate(ActivateContext {
            mem: self.mem.clone(),
            queues,
            kicks,
            interrupt: self.interrupt.clone(),
        })?;
        Ok(())
    }

    /// Device reset (the driver wrote 0 to Status).
    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for queue in &mut self.queues {
            *queue = QueueConfig::new(queue.max_size);
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_invalid = false;
        self.acked_features = 0;
        self.status = 0;
        self.interrupt.reset();
    }
}

/// Whether `[offset, offset + len)` lies inside the window.
fn in_window(offset: u64, len: usize) -> bool {
    u64::try_from(len)
        .ok()
        .and_then(|len| offset.checked_add(len))
        .is_some_and(|end| end <= MMIO_WINDOW_SIZE)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !in_window(offset, data.len()) {
            self.refuse();
            debug!("virtio-mmio: read of {} bytes at {offset:#x}", data.len());
        } else if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            self.refuse();
            debug!(
                "virtio-mmio: {}-byte register read at {offset:#x}",
                data.len()
            );
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !in_window(offset, data.len()) {
            self.refuse();
            debug!("virtio-mmio: write of {} bytes at {offset:#x}", data.len());
        } else if offset >= CONFIG_SPACE_OFFSET {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
        } else if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        } else {
            self.refuse();
            debug!(
                "virtio-mmio: {}-byte register write at {offset:#x}",
                data.len()
            );
        }
    }
}

mod persist;

#[cfg(test)]
mod tests;
