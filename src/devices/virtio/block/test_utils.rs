//! Helpers for the virtio-blk unit tests: guest memory, descriptor chains, temp disks.

use std::io::Write;

use tempfile::NamedTempFile as TempFile;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::disk::DiskImage;

/// Guest memory size: queue structures at 0, buffers from [`BUF`].
pub const MEM_SIZE: usize = 0x40_0000;
/// Where the header goes.
pub const HDR: u64 = 0x10_0000;
/// Where data buffers go.
pub const BUF: u64 = 0x20_0000;
/// Where the status byte goes.
pub const STATUS: u64 = 0x1f_0000;
/// Sectors in the default test disk.
pub const DISK_SECTORS: u64 = 64;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

/// Byte `i` of the test disk's initial contents.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// A temp file of `sectors` sectors filled with [`pattern`], opened as a disk.
pub fn temp_disk(sectors: u64, read_only: bool) -> (TempFile, DiskImage) {
    let file = tempfile::Builder::new()
        .prefix("hvlite-blk-test")
        .tempfile()
        .expect("temp file");
    let data: Vec<u8> = (0..sectors * 512).map(pattern).collect();
    file.as_file().write_all(&data).expect("fill temp file");
    let disk = DiskImage::open(file.path(), read_only).expect("open disk");
    (file, disk)
}

pub fn file_bytes(file: &TempFile) -> Vec<u8> {
    std::fs::read(file.path()).expect("read temp file")
}

/// A device-readable descriptor.
pub fn rd(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0))
}

/// A device-writable descriptor.
pub fn wr(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(
        addr,
        len,
        VRING_DESC_F_WRITE as u16,
        0,
    ))
}

/// A descriptor with explicit flags and next index (for hand-built tables).
pub fn raw(addr: u64, len: u32, write: bool, next: Option<u16>) -> RawDescriptor {
    let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    if next.is_some() {
        flags |= VRING_DESC_F_NEXT as u16;
    }
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next.unwrap_or(0)))
}

/// Writes a request header at `addr`.
pub fn put_header(mem: &GuestMemoryMmap, addr: u64, request_type: u32, sector: u64) {
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&request_type.to_le_bytes());
    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(addr)).expect("header");
}

pub fn get_u8(mem: &GuestMemoryMmap, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).expect("read u8")
}

pub fn get_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr))
        .expect("read bytes");
    v
}

pub fn fill(mem: &GuestMemoryMmap, addr: u64, len: usize, byte: u8) {
    mem.write_slice(&vec![byte; len], GuestAddress(addr))
        .expect("fill");
}
