//! Vectored frame I/O between a file descriptor and guest memory: one readv/writev per
//! frame whose iovecs point straight into guest memory. Used by virtio-net (the TAP) and
//! virtio-vsock (the host's Unix sockets).

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};

use vm_memory::VolatileSlice;

use super::queue::MAX_IOVECS;

/// A frame channel the device reads from and writes to: one frame (vnet header plus
/// Ethernet frame) per call, gathered from or scattered into guest memory. Implemented by
/// [`Tap`](super::net::Tap); tests use a SOCK_SEQPACKET socket, which keeps frame boundaries the same way.
pub trait FrameIo: AsRawFd + Send + Sync {
    /// Reads one frame into `bufs`, in order; `WouldBlock` when none is pending.
    fn read_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        vectored_io(self.as_raw_fd(), bufs, Direction::Read)
    }

    /// Writes one frame gathered from `bufs`, in order.
    fn write_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        vectored_io(self.as_raw_fd(), bufs, Direction::Write)
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// iovecs kept on the stack for frames of at most this many buffers.
const STACK_IOVECS: usize = 64;

/// One readv/writev on `fd` with iovecs pointing at `bufs`.
fn vectored_io(fd: RawFd, bufs: &[VolatileSlice<'_>], dir: Direction) -> io::Result<usize> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut stack = [empty; STACK_IOVECS];
    let mut heap = Vec::new();
    let iovs: &mut [libc::iovec] = match bufs.len() {
        n if n <= STACK_IOVECS => &mut stack[..n],
        n if n <= MAX_IOVECS => {
            heap.resize(n, empty);
            &mut heap
        }
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    for (iov, buf) in iovs.iter_mut().zip(bufs) {
        // The slices have no dirty bitmap (`()`), so the guard holds no state; the
        // borrowed slices keep the memory mapped for the call.
        let guard = buf.ptr_guard_mut();
        *iov = libc::iovec {
            iov_base: guard.as_ptr().cast(),
            iov_len: guard.len(),
        };
    }
    // At most MAX_IOVECS (1024) entries: fits in a c_int.
    let count = iovs.len() as libc::c_int;
    let ret = match dir {
        // SAFETY: each iovec points at `iov_len` bytes of mapped guest memory that the
        // borrowed `bufs` keep alive for the call; the kernel writes only there.
        Direction::Read => unsafe { libc::readv(fd, iovs.as_ptr(), count) },
        // SAFETY: as above; the kernel only reads the buffers.
        Direction::Write => unsafe { libc::writev(fd, iovs.as_ptr(), count) },
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // Non-negative and bounded by the buffer lengths.
    Ok(ret as usize)
}
