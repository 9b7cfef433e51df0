//! What every virtio device here has besides its own logic, in one struct each device
//! embeds ([`VirtioCore`]): its type, the features it offers and those the driver
//! accepted, its queue sizes, the configuration generation, and its place on the event
//! loop for the queue handler. [`CoreState`] is the part that describes the device to the
//! guest, so it can be saved and restored as a unit.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::activation::{HandlerSlot, ready_queues};
use super::{ActivateError, EventLoopHandle, Subscriber};

/// The guest-visible state of a [`VirtioCore`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreState {
    /// Virtio device ID.
    pub device_type: u32,
    /// Features offered.
    pub avail_features: u64,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Maximum size of each queue.
    pub queue_sizes: Vec<u16>,
    /// The ConfigGeneration register.
    pub config_generation: u32,
}

/// Why a [`CoreState`] does not fit a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreStateError {
    #[error("saved state is for device type {saved}, this device is type {device}")]
    DeviceType { saved: u32, device: u32 },
    #[error("saved queue sizes {saved:?} differ from this device's {device:?}")]
    QueueSizes { saved: Vec<u16>, device: Vec<u16> },
    #[error("saved features {saved:#x} are not all offered by this device ({device:#x})")]
    Features { saved: u64, device: u64 },
}

/// The common part of a virtio device.
#[derive(Debug)]
pub struct VirtioCore {
    state: CoreState,
    handler: HandlerSlot,
}

impl VirtioCore {
    /// A device of `device_type` offering `avail_features`, with queues of
    /// `queue_sizes`; its queue handler runs on the event loop behind `events`. `name`
    /// names the device in errors and logs.
    pub fn new(
        device_type: u32,
        avail_features: u64,
        queue_sizes: &[u16],
        events: EventLoopHandle,
        name: &'static str,
    ) -> Self {
        Self {
            state: CoreState {
                device_type,
                avail_features,
                acked_features: 0,
                queue_sizes: queue_sizes.to_vec(),
                config_generation: 0,
            },
            handler: HandlerSlot::new(events, name),
        }
    }

    /// The device's name in errors and logs.
    pub fn name(&self) -> &'static str {
        self.handler.device()
    }

    /// Virtio device ID.
    pub fn device_type(&self) -> u32 {
        self.state.device_type
    }

    /// Maximum size of each queue.
    pub fn queue_sizes(&self) -> &[u16] {
        &self.state.queue_sizes
    }

    /// Features offered.
    pub fn avail_features(&self) -> u64 {
        self.state.avail_features
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.state.acked_features
    }

    /// Whether the driver accepted feature `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.state.acked_features & (1u64 << bit) != 0
    }

    /// Records the features the driver accepted, keeping only those offered.
    pub fn ack_features(&mut self, features: u64) {
        self.state.acked_features = features & self.state.avail_features;
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.state.config_generation
    }

    /// The device changed its configuration space: the driver rereads it.
    pub fn bump_config_generation(&mut self) {
        self.state.config_generation = self.state.config_generation.wrapping_add(1);
    }

    /// Whether the queue handler is on the event loop.
    pub fn is_active(&self) -> bool {
        self.handler.is_active()
    }

    /// The driver's `N` queues and their kick eventfds, checked and set up as the acked
    /// features say, for an activation (an error if the device is already active).
    pub fn ready_queues<const N: usize>(
        &self,
        mem: &GuestMemoryMmap,
        queues: Vec<Queue>,
        kicks: Vec<EventFd>,
    ) -> Result<([Queue; N], [EventFd; N]), ActivateError> {
        self.handler.check_idle()?;
        ready_queues(
            mem,
            queues,
            kicks,
            self.has_feature(VIRTIO_RING_F_EVENT_IDX),
        )
    }

    /// Puts the queue handler on the event loop.
    pub fn install(&mut self, handler: Subscriber) -> Result<(), ActivateError> {
        self.handler.install(handler)
    }

    /// Device reset: takes the handler off the event loop and forgets the acked features.
    pub fn reset(&mut self) {
        self.handler.remove();
        self.state.acked_features = 0;
    }

    /// The guest-visible state, to be saved.
    pub fn state(&self) -> CoreState {
        self.state.clone()
    }

    /// Takes over saved state, which must describe this device: the same type and queue
    /// sizes, and features it offers.
    pub fn restore(&mut self, saved: &CoreState) -> Result<(), CoreStateError> {
        let device = &self.state;
        if saved.device_type != device.device_type {
            return Err(CoreStateError::DeviceType {
                saved: saved.device_type,
                device: device.device_type,
            });
        }
        if saved.queue_sizes != device.queue_sizes {
            return Err(CoreStateError::QueueSizes {
                saved: saved.queue_sizes.clone(),
                device: device.queue_sizes.clone(),
            });
        }
        let unknown = (saved.avail_features | saved.acked_features) & !device.avail_features;
        if unknown != 0 {
            return Err(CoreStateError::Features {
                saved: saved.avail_features | saved.acked_features,
                device: device.avail_features,
            });
        }
        self.state.acked_features = saved.acked_features;
        self.state.config_generation = saved.config_generation;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::EventLoop;

    #[test]
    fn features_are_masked_and_reset() {
        let lp = EventLoop::start();
        let offered = (1 << VIRTIO_RING_F_EVENT_IDX) | 0b1;
        let mut core = VirtioCore::new(2, offered, &[256], lp.handle.clone(), "virtio-test");
        assert_eq!((core.device_type(), core.queue_sizes()), (2, &[256][..]));
        core.ack_features(u64::MAX);
        assert_eq!(core.acked_features(), offered);
        assert!(core.has_feature(VIRTIO_RING_F_EVENT_IDX) && !core.has_feature(1));
        assert!(!core.has_feature(64));
        core.bump_config_generation();
        assert_eq!(core.config_generation(), 1);
        core.reset();
        assert_eq!(core.acked_features(), 0);
        assert!(!core.is_active());
    }

    #[test]
    fn state_round_trips_and_must_fit() {
        let lp = EventLoop::start();
        let mut a = VirtioCore::new(1, 0b111, &[256, 256], lp.handle.clone(), "a");
        a.ack_features(0b101);
        a.bump_config_generation();
        let saved = a.state();
        let json = serde_json::to_string(&saved).unwrap();
        let saved: CoreState = serde_json::from_str(&json).unwrap();
        let mut b = VirtioCore::new(1, 0b111, &[256, 256], lp.handle.clone(), "b");
        b.restore(&saved).unwrap();
        assert_eq!(b.state(), a.state());

        let mut other = VirtioCore::new(2, 0b111, &[256, 256], lp.handle.clone(), "c");
        assert!(matches!(
            other.restore(&saved),
            Err(CoreStateError::DeviceType {
                saved: 1,
                device: 2
            })
        ));
        let mut fewer = VirtioCore::new(1, 0b111, &[256], lp.handle.clone(), "d");
        assert!(matches!(
            fewer.restore(&saved),
            Err(CoreStateError::QueueSizes { .. })
        ));
        let mut less = VirtioCore::new(1, 0b011, &[256, 256], lp.handle.clone(), "e");
        assert!(matches!(
            less.restore(&saved),
            Err(CoreStateError::Features { .. })
        ));
        assert_eq!(less.acked_features(), 0);
    }
}
