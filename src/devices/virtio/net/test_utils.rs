//! Helpers for the virtio-net unit tests: guest memory, descriptors, a socket that stands
//! in for the TAP, a signal recorder, and host-side access to a real TAP.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use crate::devices::virtio::FrameIo;

pub use crate::devices::virtio::test_utils::{
    BUF, MEM_SIZE, Signals, get_bytes, guest_memory, put_bytes, raw, rd, wr,
};

/// Where the second (TX) queue's rings go.
pub const TXQ: u64 = 0x8_0000;
/// A vnet header (all zero) followed by `len` pattern bytes derived from `seed`.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// The device's end of a datagram socket pair: keeps frame boundaries like a TAP.
#[derive(Debug)]
pub struct FakeTap(pub UnixDatagram);

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for FakeTap {}

/// (device end, host end), both non-blocking.
pub fn fake_tap() -> (FakeTap, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().expect("socket pair");
    a.set_nonblocking(true).expect("non-blocking");
    b.set_nonblocking(true).expect("non-blocking");
    (FakeTap(a), b)
}

/// The next datagram on the host end, if any.
pub fn host_recv(sock: &UnixDatagram) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1 << 17];
    match sock.recv(&mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("recv: {e}"),
    }
}

/// Whether real TAP tests can run here (root and /dev/net/tun); when not, a loud skip
/// notice, or a failure under `HVLITE_REQUIRE_KVM=1`.
pub fn tap_available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tun = std::path::Path::new(super::tap::TUN_DEVICE).exists();
    let missing = format!("needs root and {}", super::tap::TUN_DEVICE);
    hvlite_protocol::test_env::check(test, root && tun, &missing)
}

/// Runs `ip args...`, panicking on failure.
pub fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// A host-side AF_PACKET socket bound to interface `name`: sees what the TAP's reader
/// wrote, and its sends arrive at the TAP's reader.
#[derive(Debug)]
pub struct PacketSocket(std::os::unix::io::OwnedFd);

impl PacketSocket {
    pub fn bind(name: &str) -> Self {
        use std::os::unix::io::FromRawFd;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a new socket owned by nothing else.
        let sock = Self(unsafe { std::os::unix::io::OwnedFd::from_raw_fd(fd) });
        let cname = std::ffi::CString::new(name).expect("name");
        // SAFETY: `cname` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert!(index > 0, "no interface {name}");
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a sockaddr_ll of the size passed.
        let ret = unsafe {
            libc::bind(
                sock.0.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind: {}", io::Error::last_os_error());
        sock
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is a valid buffer of the length passed.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
    }

    /// Waits up to 2 s for a frame accepted by `want` (the kernel may send its own).
    pub fn recv_matching(&self, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut buf = vec![0u8; 1 << 17];
        while std::time::Instant::now() < deadline {
            // SAFETY: `buf` is a valid writable buffer of the length passed.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && want(&buf[..n as usize]) {
                return Some(buf[..n as usize].to_vec());
            }
            if n < 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        None
    }
}

/// An Ethernet frame of `len` bytes (>= 14) with a private EtherType (0x88b5) and a
/// recognisable payload.
pub fn eth_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x88, 0xb5];
    f.extend((0..len.saturating_sub(14)).map(|i| (i as u8).wrapping_add(seed)));
    f
}
