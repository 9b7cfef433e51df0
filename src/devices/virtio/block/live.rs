//! What may change on a running virtio-blk device, shared by the device, its queue
//! handler and the API (`PATCH /drives/{id}`): the disk image behind it (a new backing
//! file; the guest is told through a configuration-change interrupt and reads the new
//! capacity) and the rate limiter's buckets.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::disk::{DiskError, DiskImage};
use crate::devices::virtio::VirtioInterrupt;
use crate::devices::virtio::rate_limiter::{RateLimiter, TokenBucket};

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LiveDriveError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("the drive has no rate limiter to change")]
    NoLimiter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The changeable state of one drive.
#[derive(Debug)]
pub struct LiveDrive {
    disk: Mutex<Arc<DiskImage>>,
    /// Configuration changes so far (added to the core's generation).
    generation: AtomicU32,
    /// The device's interrupt, once the driver activated it.
    interrupt: Mutex<Option<Arc<VirtioInterrupt>>>,
    limiter: Option<Arc<Mutex<RateLimiter>>>,
}

impl LiveDrive {
    /// A drive serving `disk`, limited by `limiter` if given.
    pub fn new(disk: DiskImage, limiter: Option<RateLimiter>) -> Self {
        Self {
            disk: Mutex::new(Arc::new(disk)),
            generation: AtomicU32::new(0),
            interrupt: Mutex::new(None),
            limiter: limiter.map(|l| Arc::new(Mutex::new(l))),
        }
    }

    /// The disk image now.
    pub fn disk(&self) -> Arc<DiskImage> {
        Arc::clone(&lock(&self.disk))
    }

    /// Configuration changes so far.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// The rate limiter, if any.
    pub fn limiter(&self) -> Option<&Arc<Mutex<RateLimiter>>> {
        self.limiter.as_ref()
    }

    /// Records the activated device's interrupt (None after a reset).
    pub fn set_interrupt(&self, irq: Option<Arc<VirtioInterrupt>>) {
        *lock(&self.interrupt) = irq;
    }

    /// Serves `path` from now on (opened with the drive's read-only flag); requests
    /// already taken finish on the old file. The guest gets a configuration-change
    /// interrupt and reads the new capacity.
    pub fn replace_disk(&self, path: &Path) -> Result<u64, LiveDriveError> {
        let read_only = self.disk().read_only();
        let new = DiskImage::open(path, read_only)?;
        let sectors = new.capacity_sectors();
        *lock(&self.disk) = Arc::new(new);
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(irq) = lock(&self.interrupt).as_ref()
            && let Err(e) = irq.signal_config_change()
        {
            log::warn!("virtio-blk: cannot signal the configuration change: {e}");
        }
        Ok(sectors)
    }

    /// Replaces the limiter's buckets; `None` keeps that one.
    pub fn update_limiter(
        &self,
        bandwidth: Option<Option<TokenBucket>>,
        ops: Option<Option<TokenBucket>>,
    ) -> Result<(), LiveDriveError> {
        let l = self.limiter.as_ref().ok_or(LiveDriveError::NoLimiter)?;
        lock(l).update(bandwidth, ops);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::super::test_utils::temp_disk;
    use super::*;
    use crate::devices::virtio::VIRTIO_INT_CONFIG;

    #[test]
    fn a_new_backing_file_bumps_the_generation_and_interrupts() {
        let (_f, disk) = temp_disk(8, false);
        let live = LiveDrive::new(disk, None);
        assert_eq!((live.disk().capacity_sectors(), live.generation()), (8, 0));
        let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        live.set_interrupt(Some(Arc::clone(&irq)));
        let bigger = tempfile::NamedTempFile::new().unwrap();
        bigger.as_file().set_len(64 * 512).unwrap();
        assert_eq!(live.replace_disk(bigger.path()).unwrap(), 64);
        assert_eq!((live.disk().capacity_sectors(), live.generation()), (64, 1));
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        assert_ne!(irq.status() & VIRTIO_INT_CONFIG, 0);
        // A file that cannot be opened changes nothing.
        assert!(live.replace_disk(Path::new("/nonexistent/disk")).is_err());
        assert_eq!((live.disk().capacity_sectors(), live.generation()), (64, 1));
        assert!(matches!(
            live.update_limiter(None, None),
            Err(LiveDriveError::NoLimiter)
        ));
    }
}
