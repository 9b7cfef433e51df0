//! Saving and restoring a virtio-mmio transport with its device's queues.
//!
//! A queue's positions are taken from guest memory: the used ring's index is the next used
//! entry, and the next available entry is set to the same value, so a chain the device
//! had taken but not used yet is taken again after the restore (devices here complete
//! chains in order). The state is saved while the device event loop runs nothing else.

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{DRIVER_OK, MmioError, MmioTransport, QueueConfig};
use crate::snapshot::state::{QueueState, VirtioState};

/// Index of vsock's event queue and the TRANSPORT_RESET event id (virtio 1.2, 5.10.6.6).
const VSOCK_EVENT_QUEUE: usize = 2;
const VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// Why a saved transport cannot be restored onto this one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreMismatch {
    #[error("the snapshot has virtio device type {saved} where this VM has {here}")]
    DeviceType { saved: u32, here: u32 },
    #[error("the snapshot's device has {saved} queues, this one {here}")]
    QueueCount { saved: usize, here: usize },
    #[error("queue {index}: the snapshot's maximum size {saved} differs from {here}")]
    QueueMax { index: usize, saved: u16, here: u16 },
    #[error(
        "the snapshot's driver accepted features {acked:#x} this device does not offer ({offered:#x})"
    )]
    Features { acked: u64, offered: u64 },
}

impl MmioTransport {
    /// The transport's registers and queue positions, for a snapshot.
    pub fn save_state(&self) -> VirtioState {
        let queues = self
            .queues
            .iter()
            .map(|q| {
                let used = if self.activated {
                    self.mem
                        .read_obj::<u16>(GuestAddress(q.device.wrapping_add(2)))
                        .unwrap_or(0)
                } else {
                    0
                };
                QueueState {
                    max_size: q.max_size,
                    size: q.num,
                    ready: q.ready,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                    next_avail: used,
                    next_used: used,
                }
            })
            .collect();
        VirtioState {
            device_type: self.device_type,
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            driver_features: self.driver_features,
            driver_features_invalid: self.driver_features_invalid,
            status: self.status,
            selectors: [
                self.queue_sel,
                self.device_features_sel,
                self.driver_features_sel,
            ],
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            activated: self.activated,
            queues,
        }
    }

    /// Checks that `s` was saved from a device like this one.
    pub fn check_state(&self, s: &VirtioState) -> Result<(), RestoreMismatch> {
        if s.device_type != self.device_type {
            return Err(RestoreMismatch::DeviceType {
                saved: s.device_type,
                here: self.device_type,
            });
        }
        if s.queues.len() != self.queues.len() {
            return Err(RestoreMismatch::QueueCount {
                saved: s.queues.len(),
                here: self.queues.len(),
            });
        }
        for (index, (saved, here)) in s.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != here.max_size {
                return Err(RestoreMismatch::QueueMax {
                    index,
                    saved: saved.max_size,
                    here: here.max_size,
                });
            }
        }
        if s.acked_features & !self.avail_features != 0 {
            return Err(RestoreMismatch::Features {
                acked: s.acked_features,
                offered: self.avail_features,
            });
        }
        Ok(())
    }

    /// Takes the state of a snapshot (checked with [`Self::check_state`]) and, if the
    /// device was running, activates it with its queues where they were. InterruptStatus
    /// is restored before the activation, which may raise interrupts of its own. A vsock
    /// device tells its driver TRANSPORT_RESET: its connections did not survive.
    pub fn restore_state(&mut self, s: &VirtioState) -> Result<(), MmioError> {
        self.queues = s
            .queues
            .iter()
            .map(|q| QueueConfig {
                max_size: q.max_size,
                num: q.size,
                ready: q.ready,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
            })
            .collect();
        [
            self.queue_sel,
            self.device_features_sel,
            self.driver_features_sel,
        ] = s.selectors;
        self.driver_features = s.driver_features;
        self.driver_features_invalid = s.driver_features_invalid;
        self.acked_features = s.acked_features;
        self.status = s.status;
        self.interrupt.restore(s.interrupt_status, s.needs_reset);
        if s.acked_features != 0 {
            self.device.set_acked_features(s.acked_features);
        }
        if !s.activated || s.status & DRIVER_OK == 0 {
            return Ok(());
        }
        let mut positions: Vec<(u16, u16)> = s
            .queues
            .iter()
            .map(|q| (q.next_avail, q.next_used))
            .collect();
        let reset_sent =
            self.device_type == VIRTIO_ID_VSOCK && self.send_transport_reset(&mut positions);
        self.try_activate(&positions)?;
        self.activated = true;
        if reset_sent && let Err(e) = self.interrupt.signal_used_queue() {
            log::warn!("virtio-vsock: cannot raise the TRANSPORT_RESET interrupt: {e}");
        }
        Ok(())
    }

    /// Puts a TRANSPORT_RESET event into vsock's event queue and moves that queue's
    /// positions past it; false when the driver left no buffer for it.
    fn send_transport_reset(&self, positions: &mut [(u16, u16)]) -> bool {
        let event_idx =
            self.acked_features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
        let (Some(config), Some(pos)) = (
            self.queues.get(VSOCK_EVENT_QUEUE),
            positions.get_mut(VSOCK_EVENT_QUEUE),
        ) else {
            return false;
        };
        let Ok(mut queue) = config.to_queue(VSOCK_EVENT_QUEUE, event_idx, &self.mem) else {
            log::warn!("virtio-vsock: the event queue is not usable; no TRANSPORT_RESET sent");
            return false;
        };
        queue.set_next_avail(pos.0);
        queue.set_next_used(pos.1);
        let chain = queue.iter(&self.mem).ok().and_then(|mut it| it.next());
        let Some(chain) = chain else {
            log::warn!("virtio-vsock: no event buffer from the driver; no TRANSPORT_RESET sent");
            return false;
        };
        let head = chain.head_index();
        let written = chain
            .clone()
            .find(|d| d.is_write_only() && d.len() >= 4)
            .map(|d| {
                self.mem
                    .write_obj(VSOCK_EVENT_TRANSPORT_RESET.to_le(), d.addr())
                    .is_ok()
            })
            .unwrap_or(false);
        let len = if written { 4 } else { 0 };
        if queue.add_used(&self.mem, head, len).is_err() {
            log::warn!("virtio-vsock: cannot use the event buffer; no TRANSPORT_RESET sent");
            return false;
        }
        *pos = (queue.next_avail(), queue.next_used());
        log::info!("virtio-vsock: TRANSPORT_RESET sent to the guest");
        written
    }
}

impl MmioTransport {
    /// Tells the driver that the device's configuration changed (e.g. a disk restored
    /// with another size).
    pub fn signal_config_change(&self) {
        if let Err(e) = self.interrupt.signal_config_change() {
            log::warn!("virtio-mmio: cannot raise the config-change interrupt: {e}");
        }
    }
}
