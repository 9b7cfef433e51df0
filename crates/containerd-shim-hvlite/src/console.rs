//! The task's own terminal (`ctr run -t`, a pod's `tty: true`): as with runc, the shim
//! listens on a console socket, the monitor (`oci::console::hand_over`) sends it the
//! master of a host pty whose slave it relays to the guest process's terminal, and the
//! shim copies between that master and containerd's FIFOs. ResizePty sets the master's
//! window size, which the monitor passes on to the guest.

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::error::ShimError;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A listening console socket (a short path in the temporary directory, removed on drop).
pub struct ConsoleSocket {
    listener: UnixListener,
    pub path: PathBuf,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self, ShimError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "hvlite-shim-{}-{n}.console.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(|e| ShimError::Io(path.display().to_string(), e))?;
        Ok(Self { listener, path })
    }

    /// The pty master the monitor sent (it does so before it says it is ready, so the
    /// connection is already queued when this is called).
    pub fn receive(&self) -> Result<File, ShimError> {
        let io = |e: std::io::Error| ShimError::Io(self.path.display().to_string(), e);
        self.listener.set_nonblocking(true).map_err(io)?;
        let (conn, _) = self.listener.accept().map_err(io)?;
        let mut name = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .map_err(|e| io(e.into()))?;
        for cmsg in msg.cmsgs().map_err(|e| io(e.into()))? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg
                && let Some(&fd) = fds.first()
            {
                // SAFETY: SCM_RIGHTS just gave this process `fd`; nothing else owns it.
                return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        Err(ShimError::Precondition(
            "the monitor sent no terminal on the console socket".into(),
        ))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copies between the pty `master` and containerd's FIFOs: `stdin` to the master,
/// the master to `stdout`, until either side ends.
pub fn relay(
    master: &File,
    stdin: Option<String>,
    mut stdout: Box<dyn Write + Send>,
) -> Result<(), ShimError> {
    let io = |e: std::io::Error| ShimError::Io("terminal".into(), e);
    let mut to_master = master.try_clone().map_err(io)?;
    let mut from_master = master.try_clone().map_err(io)?;
    if let Some(path) = stdin {
        std::thread::Builder::new()
            .name("tty-in".into())
            .spawn(move || {
                if let Ok(mut stdin) = crate::stdio::open_stdin_blocking(&path) {
                    let _ = std::io::copy(&mut stdin, &mut to_master);
                }
            })
            .map_err(io)?;
    }
    std::thread::Builder::new()
        .name("tty-out".into())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            // The read ends with EIO once the monitor (the slave's last holder) is gone.
            while let Ok(n) = from_master.read(&mut buf) {
                if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
        .map_err(io)?;
    Ok(())
}

/// Sets the window size of the terminal `master`.
pub fn resize(master: &File, rows: u32, cols: u32) -> Result<(), ShimError> {
    nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
    let ws = libc::winsize {
        ws_row: u16::try_from(rows).unwrap_or(u16::MAX),
        ws_col: u16::try_from(cols).unwrap_or(u16::MAX),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, valid for the call.
    unsafe { tiocswinsz(master.as_raw_fd(), &ws) }
        .map(drop)
        .map_err(|e| ShimError::Io("terminal".into(), e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_master_comes_through_the_socket_and_resizes() {
        let sock = ConsoleSocket::new().unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let stream = std::os::unix::net::UnixStream::connect(&sock.path).unwrap();
        use std::os::fd::AsFd;
        hvlite::oci::console::send_fd(stream.as_fd(), pty.master.as_fd()).unwrap();
        let master = sock.receive().unwrap();
        resize(&master, 40, 100).unwrap();
        let size = hvlite::oci::console::window_size(pty.slave.as_fd()).unwrap();
        assert_eq!((size.height, size.width), (40, 100));
        let path = sock.path.clone();
        drop(sock);
        assert!(!path.exists());
        // Nothing queued: a clear error, not a hang.
        let empty = ConsoleSocket::new().unwrap();
        assert!(empty.receive().is_err());
    }
}
