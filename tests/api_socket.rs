//! The API socket is private: mode 0600 from the moment it listens, so another user
//! (here uid 65534, nobody) cannot connect; the owner can.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Connects to `path` from a forked child running as uid/gid 65534; returns the errno of
/// the refused connect, or 0 if it connected.
fn connect_as_nobody(path: &Path) -> i32 {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: an all-zero sockaddr_un is valid; the path fits (scratch paths are short).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = c_path.as_bytes_with_nul();
    assert!(bytes.len() <= addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the child makes only raw system calls (no allocation) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: plain system calls on initialised values; errno read via libc.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                libc::_exit(200);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let rc = libc::connect(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            let code = if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::_exit(code.min(199));
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    let code = libc::WEXITSTATUS(status);
    assert_ne!(code, 200, "the child could not become nobody");
    code
}

#[test]
fn the_api_socket_is_mode_0600_and_refuses_other_users() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("HVLITE_REQUIRE_KVM").is_none(),
            "this test needs root to switch to uid 65534"
        );
        eprintln!("SKIPPED the_api_socket_is_mode_0600_and_refuses_other_users: not root");
        return;
    }
    let dir = scratch("api-socket-mode");
    // The directory itself lets everyone through: only the socket's mode may refuse.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("api.sock");
    let mut child = Command::new(hvlite())
        .args(["run", "--api-sock", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hvlite");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "the API socket never came up");
        assert!(child.try_wait().unwrap().is_none(), "hvlite exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = std::fs::symlink_metadata(&sock).unwrap().mode() & 0o777;
    let refused = connect_as_nobody(&sock);
    // Loosened by hand, the same socket lets nobody in: the refusal came from the mode.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let loosened = connect_as_nobody(&sock);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode, 0o600);
    assert_eq!(refused, libc::EACCES, "nobody was not refused");
    assert_eq!(loosened, 0, "with mode 0666 nobody should connect");
}
