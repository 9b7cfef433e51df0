//! File descriptors: pipes, poll, non-blocking mode, and moving fds into place in a child.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{check, dup2};

/// pipe2(O_CLOEXEC): (read end, write end), both above fd 2 (see [`above_stdio`]).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// `fd` itself if it is above 2, else a close-on-exec duplicate above 2 (the original is
/// closed). Keeps fds 0-2 free for the console and for a child's stdio, even when the init
/// started without them.
pub fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC duplicates a valid descriptor to the lowest free number >= 3.
    let dup = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: fcntl succeeded: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Sets O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL only read and change the status flags of a valid descriptor.
    unsafe {
        let flags = check(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        check(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// A `pollfd` for `fd` (or an ignored entry for `None`) waiting for `events`.
pub fn poll_entry(fd: Option<BorrowedFd<'_>>, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        // poll(2) ignores entries with a negative fd.
        fd: fd.map_or(-1, |f| f.as_raw_fd()),
        events: if fd.is_some() { events } else { 0 },
        revents: 0,
    }
}

/// poll(2) with a timeout in milliseconds (negative: none). An interrupted call returns
/// `Ok(0)` like a timeout; the caller loops anyway.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    let n = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fds` is a valid, writable array of `n` pollfd structs.
    match check(unsafe { libc::poll(fds.as_mut_ptr(), n, timeout_ms) }) {
        Ok(ready) => Ok(usize::try_from(ready).unwrap_or(0)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// In a child before exec: makes `target` (0, 1 or 2) refer to `src` and stay open across
/// exec. Allocates nothing.
pub fn install_fd(src: RawFd, target: RawFd) -> io::Result<()> {
    if src == target {
        // SAFETY: F_SETFD with 0 clears FD_CLOEXEC on a descriptor the child owns.
        check(unsafe { libc::fcntl(target, libc::F_SETFD, 0) }).map(drop)
    } else {
        dup2(src, target)
    }
}

/// write(2) of `bytes` to `fd` in one call, for a child before exec (allocates nothing).
pub fn write_raw(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is a valid buffer of `bytes.len()` bytes for the duration of the call.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
