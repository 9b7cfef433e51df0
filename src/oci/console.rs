//! `terminal: true` on the host side, as runc does it: the runtime makes a host pty pair,
//! sends the master to the engine's `--console-socket` (AF_UNIX, SCM_RIGHTS), and relays
//! between the pty's slave and the guest process's terminal (the agent's stream): what the
//! engine writes to the master reaches the process's terminal, the process's output comes
//! back, and window size changes made on the master are sent on as `Resize`.

use std::fs::File;
use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use crate::agent::protocol::{MAX_CHUNK, WindowSize};

use super::state::short_socket_path;

/// How often the relay looks at the host terminal's window size.
pub const SIZE_POLL: Duration = Duration::from_millis(100);

/// Why the terminal could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot create a pty")]
    Pty(#[source] io::Error),
    #[error("cannot connect to the console socket {0}")]
    Connect(PathBuf, #[source] io::Error),
    #[error("cannot send the pty master to the console socket {0}")]
    Send(PathBuf, #[source] io::Error),
    #[error("process.terminal is true but no --console-socket was given")]
    NoSocket,
}

/// Creates a host pty of `size`, sends its master to the console socket at `socket`, and
/// returns the slave (the relay's end).
pub fn hand_over(socket: &Path, size: WindowSize) -> Result<File, ConsoleError> {
    let ws = nix::pty::Winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| ConsoleError::Pty(e.into()))?;
    let (dir, name) = match (socket.parent(), socket.file_name()) {
        (Some(d), Some(n)) if !d.as_os_str().is_empty() => (d, n),
        _ => (Path::new("."), socket.as_os_str()),
    };
    let short = short_socket_path(dir, &name.to_string_lossy())
        .map_err(|e| ConsoleError::Connect(socket.into(), e))?;
    let stream =
        UnixStream::connect(&short.path).map_err(|e| ConsoleError::Connect(socket.into(), e))?;
    send_fd(stream.as_fd(), pty.master.as_fd())
        .map_err(|e| ConsoleError::Send(socket.into(), e))?;
    set_raw(pty.slave.as_fd());
    Ok(File::from(pty.slave))
}

/// Sends `fd` over the Unix socket `sock` with SCM_RIGHTS (and a name, as runc does).
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let name = b"/dev/ptmx";
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
    .map_err(io::Error::from)
}

/// The relay's end must pass bytes through unchanged: the guest's terminal does the line
/// discipline (echo, CR LF, ^C), not this one as well.
fn set_raw(fd: BorrowedFd<'_>) {
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    if let Ok(mut t) = tcgetattr(fd) {
        cfmakeraw(&mut t);
        if let Err(e) = tcsetattr(fd, SetArg::TCSANOW, &t) {
            log::warn!("cannot make the host pty raw: {e}");
        }
    }
}

/// The window size of the terminal `fd`.
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<WindowSize> {
    nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which is valid for the call.
    unsafe { tiocgwinsz(fd.as_raw_fd(), &mut ws) }.map_err(io::Error::from)?;
    Ok(WindowSize {
        height: ws.ws_row,
        width: ws.ws_col,
    })
}

/// Starts the relay's two threads on the host pty's `slave`: one copies what the engine
/// types to `input` until it returns false or the master is closed (then `eof` is called
/// once); one passes window size changes (from `first` on) to `resize`, which returns
/// whether the size was delivered (an undelivered one is offered again).
pub fn relay(
    slave: &File,
    first: WindowSize,
    mut input: impl FnMut(&[u8]) -> bool + Send + 'static,
    eof: impl FnOnce() + Send + 'static,
    mut resize: impl FnMut(WindowSize) -> bool + Send + 'static,
) -> io::Result<()> {
    let mut reader = slave.try_clone()?;
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Host);
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                match reader.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        if !input(&buf[..n]) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // EOF or EIO: the engine closed the master.
                    _ => break,
                }
            }
            eof();
        })?;
    let watched: OwnedFd = slave.try_clone()?.into();
    std::thread::Builder::new()
        .name("console-size".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Host);
            let mut last = first;
            loop {
                std::thread::sleep(SIZE_POLL);
                let Ok(now) = window_size(watched.as_fd()) else {
                    return;
                };
                if now != last && now.height > 0 && now.width > 0 && resize(now) {
                    last = now;
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::cmsg_space;
    use nix::sys::socket::{ControlMessageOwned, recvmsg};
    use std::io::{IoSliceMut, Write};
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;

    #[test]
    fn the_master_reaches_the_console_socket_and_the_relay_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let size = WindowSize {
            height: 33,
            width: 99,
        };
        let slave = hand_over(&path, size).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let fd = match msg.cmsgs().unwrap().next() {
            Some(ControlMessageOwned::ScmRights(fds)) => fds[0],
            other => panic!("no fd: {other:?}"),
        };
        // SAFETY: the fd was just received and nothing else owns it.
        let mut master = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        assert_eq!(window_size(master.as_fd()).unwrap(), size);

        let (tx, rx) = mpsc::channel();
        let (size_tx, size_rx) = mpsc::channel();
        let (eof_tx, eof_rx) = mpsc::channel();
        relay(
            &slave,
            size,
            move |d| tx.send(d.to_vec()).is_ok(),
            move || eof_tx.send(()).unwrap(),
            move |s| size_tx.send(s).is_ok(),
        )
        .unwrap();
        master.write_all(b"typed\r").unwrap();
        let mut got = Vec::new();
        while got.len() < 6 {
            got.extend(rx.recv().unwrap());
        }
        assert_eq!(
            got, b"typed\r",
            "raw: no line discipline on the relay's end"
        );
        // Output written to the slave reaches the master unchanged.
        (&slave).write_all(b"out\n").unwrap();
        let mut out = [0u8; 4];
        master.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"out\n");
        let bigger = WindowSize {
            height: 50,
            width: 150,
        };
        nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
        let ws = libc::winsize {
            ws_row: 50,
            ws_col: 150,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize through a pointer valid for the call.
        unsafe { tiocswinsz(master.as_raw_fd(), &ws) }.unwrap();
        assert_eq!(size_rx.recv().unwrap(), bigger);
        drop(master);
        eof_rx.recv().unwrap();
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let e = hand_over(
            Path::new("/nonexistent/hvlite/c.sock"),
            WindowSize::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ConsoleError::Connect(..)), "{e}");
    }
}
