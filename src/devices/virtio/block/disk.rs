//! The disk image behind a virtio-blk device: a regular file or a block device, accessed
//! with positional vectored I/O (`preadv`/`pwritev`) straight between the file and guest
//! memory, without bounce buffers. All methods take `&self`: positional I/O needs no
//! shared file offset, so one image can serve several threads.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::VolatileSlice;

use super::config::{DEVICE_ID_LEN, SECTOR_SHIFT, SECTOR_SIZE};

/// Most iovecs one `preadv`/`pwritev` call accepts (Linux UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// Why a disk image cannot be opened or accessed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk image {}: no such file or directory", path.display())]
    NotFound { path: PathBuf },
    #[error("disk image {}: permission denied{}", path.display(),
        if *read_only { "" } else { " (add ',ro' to attach it read-only)" })]
    PermissionDenied { path: PathBuf, read_only: bool },
    #[error("disk image {}: not a regular file or block device", path.display())]
    NotAFile { path: PathBuf },
    #[error("disk image {}: size {size} bytes is not a multiple of 512", path.display())]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error("disk image {}: cannot open", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {}: cannot read its size", path.display())]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {}: {op} at byte {offset} failed", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    read_only: bool,
    size: u64,
    id: [u8; DEVICE_ID_LEN],
}

impl DiskImage {
    /// Opens `path` (a regular file or a block device whose size is a multiple of 512
    /// bytes), read-only if `read_only`, else read-write.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> Result<Self, DiskError> {
        let path = path.as_ref().to_path_buf();
        let classify = |source: io::Error| match source.kind() {
            io::ErrorKind::NotFound => DiskError::NotFound { path: path.clone() },
            io::ErrorKind::PermissionDenied => DiskError::PermissionDenied {
                path: path.clone(),
                read_only,
            },
            io::ErrorKind::IsADirectory => DiskError::NotAFile { path: path.clone() },
            _ => DiskError::Open {
                path: path.clone(),
                source,
            },
        };
        let meta = std::fs::metadata(&path).map_err(classify)?;
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(DiskError::NotAFile { path });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
            .map_err(classify)?;
        // Block devices report a length of 0 in their metadata; seeking to the end works
        // for both kinds.
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.clone(),
                source,
            })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::UnalignedSize { path, size });
        }
        let id = device_id(meta.dev(), meta.ino());
        Ok(Self {
            file,
            path,
            read_only,
            size,
            id,
        })
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Size in bytes (when opened).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.size >> SECTOR_SHIFT
    }

    /// The 20-byte device ID (serial) for VIRTIO_BLK_T_GET_ID: derived from the file's
    /// device and inode numbers, so it is stable across runs on the same host.
    pub fn device_id(&self) -> &[u8; DEVICE_ID_LEN] {
        &self.id
    }

    /// Reads the image at byte `offset` into `bufs` (guest memory), in order. Bytes past
    /// the end of the file read as zeros.
    pub fn read_into(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> Result<(), DiskError> {
        self.transfer(offset, bufs, Direction::Read)
    }

    /// Writes `bufs` (guest memory), in order, to the image at byte `offset`.
    pub fn write_from(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> Result<(), DiskError> {
        if self.read_only {
            return Err(self.io_error("write", offset, io::Error::from_raw_os_error(libc::EROFS)));
        }
        self.transfer(offset, bufs, Direction::Write)
    }

    /// Makes written data durable (`fdatasync`).
    pub fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|source| self.io_error("flush", 0, source))
    }

    fn io_error(&self, op: &'static str, offset: u64, source: io::Error) -> DiskError {
        DiskError::Io {
            path: self.path.clone(),
            op,
            offset,
            source,
        }
    }

    fn transfer(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_>],
        dir: Direction,
    ) -> Result<(), DiskError> {
        let fd = self.file.as_raw_fd();
        let fail = |(at, source)| self.io_error(dir.name(), at, source);
        if let [one] = bufs {
            // The common single-buffer case, without allocating.
            let guard = one.ptr_guard_mut();
            let mut iov = [libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: guard.len(),
            }];
            let iovs: &mut [libc::iovec] = if guard.len() > 0 { &mut iov } else { &mut [] };
            return transfer_iovecs(fd, iovs, offset, dir).map_err(fail);
        }
        // The guards keep the pointers valid for the duration of the system calls.
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
        let mut iovs: Vec<libc::iovec> = guards
            .iter()
            .filter(|g| g.len() > 0)
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: g.len(),
            })
            .collect();
        transfer_iovecs(fd, &mut iovs, offset, dir).map_err(fail)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
        }
    }
}

/// Moves the bytes of `iovs` (non-empty buffers that stay valid throughout) between the
/// file `fd` at `offset` and memory, retrying on EINTR and continuing after short
/// transfers. A read that reaches end of file zero-fills the rest. On failure returns the
/// file offset it failed at.
fn transfer_iovecs(
    fd: i32,
    iovs: &mut [libc::iovec],
    mut offset: u64,
    dir: Direction,
) -> Result<(), (u64, io::Error)> {
    let mut idx = 0;
    while idx < iovs.len() {
        let pos = libc::off_t::try_from(offset)
            .map_err(|_| (offset, io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
        let rest = &iovs[idx..];
        // Fits in c_int: at most IOV_MAX.
        let count = rest.len().min(IOV_MAX) as libc::c_int;
        let ret = match (dir, rest) {
            // One buffer: the plain calls are a little cheaper.
            // SAFETY: the iovec points at `iov_len` bytes of guest memory the caller keeps
            // mapped (PtrGuardMut) for the call; the kernel writes only within them.
            (Direction::Read, [one]) => unsafe { libc::pread(fd, one.iov_base, one.iov_len, pos) },
            // SAFETY: as above; the kernel only reads the buffer.
            (Direction::Write, [one]) => unsafe {
                libc::pwrite(fd, one.iov_base, one.iov_len, pos)
            },
            // SAFETY: `rest` holds at least `count` iovecs that point at guest memory the
            // caller keeps mapped for the call; the kernel writes only within them.
            (Direction::Read, _) => unsafe { libc::preadv(fd, rest.as_ptr(), count, pos) },
            // SAFETY: as above; the kernel only reads the buffers.
            (Direction::Write, _) => unsafe { libc::pwritev(fd, rest.as_ptr(), count, pos) },
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((offset, err));
        }
        let mut done = ret as usize;
        if done == 0 {
            match dir {
                Direction::Read => {
                    zero_fill(&iovs[idx..]);
                    return Ok(());
                }
                Direction::Write => return Err((offset, io::ErrorKind::WriteZero.into())),
            }
        }
        offset += done as u64;
        while done > 0 {
            let iov = &mut iovs[idx];
            if done >= iov.iov_len {
                done -= iov.iov_len;
                idx += 1;
            } else {
                // SAFETY: `done < iov_len`, so the new base stays inside the same buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(done) }.cast();
                iov.iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

fn zero_fill(iovs: &[libc::iovec]) {
    for iov in iovs {
        // SAFETY: each iovec describes a writable buffer of `iov_len` bytes that stays
        // mapped for the duration of the transfer (see `transfer_iovecs`).
        unsafe { std::ptr::write_bytes(iov.iov_base.cast::<u8>(), 0, iov.iov_len) };
    }
}

/// A 20-byte ASCII ID ("hvl-" and 16 hex digits of an FNV-1a hash of device and inode).
fn device_id(dev: u64, ino: u64) -> [u8; DEVICE_ID_LEN] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in dev.to_le_bytes().into_iter().chain(ino.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let text = format!("hvl-{hash:016x}");
    let mut id = [0u8; DEVICE_ID_LEN];
    let n = text.len().min(DEVICE_ID_LEN);
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
