//! Guest RAM that another process can map: one memfd holds every region, each mapped
//! `MAP_SHARED` at its offset. Used when a vhost-user backend (virtiofsd) serves a device
//! and must read and write guest buffers itself; otherwise RAM stays anonymous.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Errors making shared guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create failed")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size the guest memory file to {0} bytes")]
    Size(u64, #[source] std::io::Error),
    #[error("cannot map the guest memory file")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// Guest memory of `ranges` (address, size), backed by one sealed-size memfd.
pub fn shared_ranges(ranges: &[(GuestAddress, usize)]) -> Result<GuestMemoryMmap, MemoryError> {
    let name = c"hvlite-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string; the call has no other inputs.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let total: u64 = ranges.iter().map(|&(_, len)| len as u64).sum();
    file.set_len(total)
        .map_err(|e| MemoryError::Size(total, e))?;
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(addr, len) in ranges {
        let f = file.try_clone().map_err(MemoryError::Memfd)?;
        regions.push((addr, len, Some(FileOffset::new(f, offset))));
        offset += len as u64;
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(MemoryError::Map)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;

    #[test]
    fn regions_share_one_file_at_their_offsets() {
        let mem =
            shared_ranges(&[(GuestAddress(0), 0x2000), (GuestAddress(0x10000), 0x1000)]).unwrap();
        let offsets: Vec<u64> = mem
            .iter()
            .map(|r| r.file_offset().unwrap().start())
            .collect();
        assert_eq!(offsets, [0, 0x2000]);
        mem.write_obj(0x1234u32, GuestAddress(0x10000)).unwrap();
        // The second region's bytes are in the file at its offset.
        let region = mem.find_region(GuestAddress(0x10000)).unwrap();
        let file = region.file_offset().unwrap().file();
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, 0x2000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x1234);
    }
}
