//! AF_VSOCK stream sockets (and `shutdown`, which works on any socket), through socket2.
//! Every socket is close-on-exec (socket2 sets it on Linux).

use std::io;
use std::net::Shutdown;
use std::os::fd::{BorrowedFd, OwnedFd};

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

fn socket() -> io::Result<Socket> {
    Socket::new(Domain::VSOCK, Type::STREAM, None)
}

/// A stream socket connected to `cid`:`port` (blocking). A failed attempt (EINTR
/// included) leaves nothing behind: retry with a new call.
pub fn connect(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let sock = socket()?;
    sock.connect(&SockAddr::vsock(cid, port))?;
    Ok(sock.into())
}

/// A socket listening on `port` of every local CID.
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    let sock = socket()?;
    sock.bind(&SockAddr::vsock(libc::VMADDR_CID_ANY, port))?;
    sock.listen(1)?;
    Ok(sock.into())
}

/// Accepts one connection on a listening socket; returns it and the peer's CID.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, u32)> {
    let listener = SockRef::from(&listener);
    loop {
        match listener.accept() {
            Ok((conn, addr)) => {
                let cid = addr.as_vsock_address().map_or(0, |(cid, _)| cid);
                return Ok((conn.into(), cid));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// shutdown(SHUT_WR): the peer reads EOF; this side can still read.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    SockRef::from(&fd).shutdown(Shutdown::Write)
}
