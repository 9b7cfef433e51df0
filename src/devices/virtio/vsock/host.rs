//! The host side of the device: the Unix socket listener for host-initiated connections
//! and its `CONNECT <port>` line, connecting to `<uds_path>_<port>` for guest-initiated
//! ones, and the in-process ports served through a channel.
//!
//! Every host socket the device keeps is non-blocking.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::Sender;
use std::time::Instant;

use super::config::MAX_CONNECT_LINE;
use crate::devices::virtio::FrameIo;

// Host streams move payloads with one readv/writev straight from and to guest memory.
impl FrameIo for UnixStream {}

/// What the device shares with the event loop about the host side: the listener, the
/// path it is bound to, and the in-process ports.
#[derive(Debug, Default)]
pub struct Backend {
    uds_path: Option<PathBuf>,
    listener: Option<UnixListener>,
    ports: Mutex<HashMap<u32, Sender<UnixStream>>>,
}

impl Backend {
    /// Binds a non-blocking listener at `uds_path`, if any.
    pub fn bind(uds_path: Option<PathBuf>) -> io::Result<Self> {
        let listener = match &uds_path {
            Some(path) => {
                let l = UnixListener::bind(path)?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        Ok(Self {
            uds_path,
            listener,
            ports: Mutex::new(HashMap::new()),
        })
    }

    /// The listener's path.
    pub fn uds_path(&self) -> Option<&Path> {
        self.uds_path.as_deref()
    }

    /// The listener, if there is a path.
    pub fn listener(&self) -> Option<&UnixListener> {
        self.listener.as_ref()
    }

    /// Serves guest connections to host `port` in-process (see
    /// [`Vsock::register_host_port`](super::Vsock::register_host_port)).
    pub fn register_port(&self, port: u32, tx: Sender<UnixStream>) {
        self.lock_ports().insert(port, tx);
    }

    /// The host stream for a guest connection to host `port`: an in-process port gets one
    /// end of a new socket pair (the other end goes to its channel; a port whose receiver
    /// is gone is unregistered); else `<uds_path>_<port>` is connected without blocking.
    pub fn connect(&self, port: u32) -> io::Result<UnixStream> {
        let registered = self.lock_ports().get(&port).cloned();
        if let Some(tx) = registered {
            let (ours, theirs) = UnixStream::pair()?;
            ours.set_nonblocking(true)?;
            if tx.send(theirs).is_ok() {
                return Ok(ours);
            }
            // The receiver is gone: the port is not served in-process any more.
            self.lock_ports().remove(&port);
        }
        let Some(base) = &self.uds_path else {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "no in-process port and no Unix socket path",
            ));
        };
        let mut path = base.as_os_str().to_owned();
        path.push(format!("_{port}"));
        connect_nonblocking(Path::new(&path))
    }

    fn lock_ports(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Sender<UnixStream>>> {
        // A panic elsewhere cannot leave the map inconsistent: keep using it.
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Connects a non-blocking Unix stream socket to `path`. A listener whose backlog is full
/// fails with `WouldBlock` instead of stalling the event loop.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    if path.as_os_str().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty Unix socket path",
        ));
    }
    // A path too long for sockaddr_un is InvalidInput too.
    let addr = socket2::SockAddr::unix(path)?;
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    sock.connect(&addr)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(sock)))
}

/// Reads up to `buf.len()` bytes without consuming them.
fn peek(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable buffer of the length passed.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Why a host peer's `CONNECT` line was refused.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("the line is longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    #[error("the line is not `CONNECT <port>`")]
    Malformed,
    #[error("the peer closed before ending the line")]
    Closed,
    #[error("cannot read the line")]
    Io(#[source] io::Error),
}

/// Parses `CONNECT <port>\n` (a trailing `\r` is tolerated); the port is decimal.
pub fn parse_connect_line(line: &[u8]) -> Result<u32, LineError> {
    let line = line.strip_suffix(b"\n").ok_or(LineError::Malformed)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let port = line.strip_prefix(b"CONNECT ").ok_or(LineError::Malformed)?;
    if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
        return Err(LineError::Malformed);
    }
    std::str::from_utf8(port)
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or(LineError::Malformed)
}

/// A host peer that connected to the listener and has not finished its `CONNECT` line.
#[derive(Debug)]
pub struct PendingHost {
    pub stream: UnixStream,
    line: Vec<u8>,
    /// When the peer is given up.
    pub deadline: Instant,
}

impl PendingHost {
    pub fn new(stream: UnixStream, deadline: Instant) -> Self {
        Self {
            stream,
            line: Vec::with_capacity(MAX_CONNECT_LINE),
            deadline,
        }
    }

    /// Reads what the peer sent of its line, never past the newline (what follows is
    /// data for the guest). `Ok(None)`: the line is not complete yet.
    pub fn poll_line(&mut self) -> Result<Option<u32>, LineError> {
        let mut buf = [0u8; MAX_CONNECT_LINE];
        loop {
            let room = MAX_CONNECT_LINE - self.line.len();
            if room == 0 {
                return Err(LineError::TooLong);
            }
            let n = match peek(&self.stream, &mut buf[..room]) {
                Ok(0) => return Err(LineError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LineError::Io(e)),
            };
            let end = buf[..n].iter().position(|&b| b == b'\n');
            let take = end.map_or(n, |i| i + 1);
            let start = self.line.len();
            self.line.resize(start + take, 0);
            // The bytes were just peeked: the read returns them at once.
            self.stream
                .read_exact(&mut self.line[start..])
                .map_err(LineError::Io)?;
            if end.is_some() {
                return parse_connect_line(&self.line).map(Some);
            }
        }
    }
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
