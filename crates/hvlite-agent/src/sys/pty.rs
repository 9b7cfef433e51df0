//! Pseudo-terminals for processes with `terminal: true`: a new pty from a devpts instance,
//! its window size, and making it the controlling terminal of a child.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use hvlite_protocol::agent::protocol::WindowSize;

use super::check;

/// A new pty from the `ptmx` node at `ptmx` (the devpts instance the process will see):
/// (master, slave). Both are close-on-exec; the slave is opened without becoming anyone's
/// controlling terminal.
pub fn open(ptmx: &CStr) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: `ptmx` is a NUL-terminated path; open returns a new fd or -1.
    let fd = check(unsafe {
        libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: open succeeded; the fd is fresh and owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int through the pointer, which is valid for the call.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCGPTPEER takes open flags as a plain value and returns a new fd or -1.
    let fd = check(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the ioctl returned a fresh fd owned by nothing else.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((master, slave))
}

/// Sets the window size of the terminal `fd` (master or slave); the foreground process group
/// gets SIGWINCH.
pub fn set_size(fd: BorrowedFd<'_>, size: WindowSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize through the pointer, which is valid for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// Child (after setsid): makes the terminal `fd` the controlling terminal.
pub fn make_controlling(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes a plain int argument (0: do not steal).
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}
