//! Fuzzes the virtio-blk request path: the input is a small guest (queue geometry, then
//! guest memory holding the descriptor table, the avail ring and the buffers), and the
//! device serves the whole queue against a 16 KiB in-memory disk. It must never panic.
//!
//! Input layout:
//! - byte 0: bit 0 read-only disk, bit 1 VIRTIO_RING_F_EVENT_IDX;
//! - byte 1: log2 of the queue size (mod 9: 1..=256 entries);
//! - bytes 2..8: descriptor table, avail ring and used ring addresses (u16 LE each);
//! - bytes 8..16: offset and length of a configuration-space read;
//! - the rest: guest memory from address 0 (two adjacent 32 KiB regions, so buffers can
//!   straddle a region boundary, and a 4 KiB region after a hole at 0x20000).

#![no_main]

use std::ffi::CString;
use std::io;
use std::sync::{Arc, OnceLock};

use hvlite::devices::virtio::QueueSignal;
use hvlite::devices::virtio::block::config::ConfigSpace;
use hvlite::devices::virtio::block::{BlockCounters, BlockQueue, DiskImage};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const DISK_BYTES: i64 = 16 * 1024;

struct Disks {
    rw: Arc<DiskImage>,
    ro: Arc<DiskImage>,
}

/// One memfd-backed disk per process, opened read-write and read-only.
fn disks() -> &'static Disks {
    static DISKS: OnceLock<Disks> = OnceLock::new();
    DISKS.get_or_init(|| {
        let name = CString::new("hvlite-fuzz-disk").expect("no NUL");
        // SAFETY: `name` is a valid C string; the returned fd is owned by this process
        // for its lifetime (the disks reopen it through /proc).
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` is the memfd just created.
        let rc = unsafe { libc::ftruncate(fd, DISK_BYTES) };
        assert_eq!(rc, 0, "ftruncate: {}", io::Error::last_os_error());
        let path = format!("/proc/self/fd/{fd}");
        Disks {
            rw: Arc::new(DiskImage::open(&path, false).expect("open rw")),
            ro: Arc::new(DiskImage::open(&path, true).expect("open ro")),
        }
    })
}

struct NullSignal;

impl QueueSignal for NullSignal {
    fn signal_used_queue(&self) -> io::Result<()> {
        Ok(())
    }
    fn signal_needs_reset(&self) -> io::Result<()> {
        Ok(())
    }
}

fn u16_at(data: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([data[i], data[i + 1]])
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (head, image) = data.split_at(16);
    let read_only = head[0] & 1 != 0;
    let event_idx = head[0] & 2 != 0;
    let size = 1u16 << (head[1] % 9);

    let config = ConfigSpace::new(DISK_BYTES as u64 / 512);
    let mut buf = [0u8; 64];
    let len = usize::from(head[12]) % buf.len();
    config.read(
        u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]])),
        &mut buf[..len],
    );

    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x8000),
        (GuestAddress(0x8000), 0x8000),
        (GuestAddress(0x2_0000), 0x1000),
    ])
    .expect("guest memory");
    let image = &image[..image.len().min(0x1_0000)];
    mem.write_slice(image, GuestAddress(0)).expect("in range");

    let Ok(mut queue) = Queue::new(256) else {
        return;
    };
    queue.set_size(size);
    queue.set_desc_table_address(Some(u32::from(u16_at(head, 2))), Some(0));
    queue.set_avail_ring_address(Some(u32::from(u16_at(head, 4))), Some(0));
    queue.set_used_ring_address(Some(u32::from(u16_at(head, 6))), Some(0));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    // The transport refuses to activate a device whose queue is not valid.
    if !queue.is_valid(&mem) {
        return;
    }

    let d = disks();
    let disk = Arc::clone(if read_only { &d.ro } else { &d.rw });
    let mut blk = BlockQueue::new(mem, queue, disk, Arc::new(BlockCounters::default()));
    let _ = blk.process(&NullSignal);
    // A second kick with nothing new (or after the queue broke).
    let _ = blk.process(&NullSignal);
});
