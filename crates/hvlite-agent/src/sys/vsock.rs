//! AF_VSOCK stream sockets (and `shutdown`, which works on any socket).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::check;

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain values.
    let fd =
        check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is valid (svm_zero must be zero).
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    // AF_VSOCK (40) fits in sa_family_t.
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// A stream socket connected to `cid`:`port` (blocking, close-on-exec). A failed attempt
/// (EINTR included) leaves nothing behind: retry with a new call.
pub fn connect(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let addr = address(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            ADDR_LEN,
        )
    })?;
    Ok(fd)
}

/// A socket listening on `port` of every local CID.
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let addr = address(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            ADDR_LEN,
        )
    })?;
    // SAFETY: listen takes plain values on a bound socket.
    check(unsafe { libc::listen(fd.as_raw_fd(), 1) })?;
    Ok(fd)
}

/// Accepts one connection on a listening socket; returns it and the peer's CID.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, u32)> {
    loop {
        let mut addr = address(0, 0);
        let mut len = ADDR_LEN;
        // SAFETY: `addr` and `len` are valid for the kernel to write a sockaddr_vm into.
        let rc = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                (&raw mut addr).cast::<libc::sockaddr>(),
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        match check(rc) {
            // SAFETY: accept4 succeeded: a fresh descriptor nothing else owns.
            Ok(fd) => return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, addr.svm_cid)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// shutdown(SHUT_WR): the peer reads EOF; this side can still read.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown takes plain values on a valid descriptor.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) }).map(drop)
}
