//! The host TAP device behind a virtio-net device; frames move through it with
//! [`FrameIo`].
//!
//! The TAP is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte vnet header
//! (`struct virtio_net_hdr_v1`), so every frame read or written is exactly what the
//! virtio-net driver puts in its buffers: header, then the Ethernet frame. The device
//! moves frames with one readv/writev whose iovecs point straight into guest memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use vm_memory::VolatileSlice;

use super::config::HDR_LEN;
use crate::devices::virtio::frame_io::FrameIo;

/// The TUN/TAP clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Longest interface name (IFNAMSIZ without the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Why a TAP could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid TAP name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot open TAP {name:?}: {TUN_DEVICE} does not exist (is the tun module loaded?)")]
    TunMissing { name: String },
    #[error("cannot open TAP {name:?}: permission denied on {TUN_DEVICE}")]
    TunPermission { name: String },
    #[error("cannot open TAP {name:?}: cannot open {TUN_DEVICE}")]
    OpenTun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "TAP {name:?} does not exist and cannot be created: permission denied (needs \
         CAP_NET_ADMIN; or create it first with `ip tuntap add {name} mode tap user <user>`)"
    )]
    CreateDenied { name: String },
    #[error("cannot attach to TAP {name:?}: permission denied (it belongs to another user)")]
    AttachDenied { name: String },
    #[error("cannot attach to TAP {name:?}: it is already in use by another process")]
    Busy { name: String },
    #[error("cannot attach to {name:?}: it exists but is not a single-queue TAP device")]
    NotATap { name: String },
    #[error("cannot attach to TAP {name:?}")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the vnet header size of TAP {name:?}")]
    VnetHeader {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the offloads {flags:#x} of TAP {name:?}")]
    Offload {
        name: String,
        flags: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the MTU of TAP {name:?}")]
    Mtu {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// A TAP device opened for one virtio-net device (single queue, non-blocking).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

impl Tap {
    /// Opens the TAP `name`, creating it if it does not exist (which needs
    /// CAP_NET_ADMIN). A TAP created here is not persistent: it disappears when the `Tap`
    /// is dropped. The vnet header size is set to 12; offloads start off.
    pub fn open(name: &str) -> Result<Self, TapError> {
        validate_name(name)?;
        let existed = Path::new("/sys/class/net").join(name).exists();
        let file = open_tun_device(name)?;
        let mut ifr = ifreq_for(name);
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `ifr` is; the fd is
        // an open /dev/net/tun.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            return Err(set_iff_error(name, existed, io::Error::last_os_error()));
        }
        let tap = Self {
            file,
            name: name.to_string(),
            created: !existed,
        };
        let size = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int from the pointer, which points at `size`.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(TapError::VnetHeader {
                name: tap.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        tap.set_offloads(0)?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this `Tap` created the interface (it goes away when the `Tap` is dropped).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Sets the TUN_F_* offloads: the kinds of frames the TAP may hand to the guest.
    pub fn set_offloads(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The interface MTU.
    pub fn mtu(&self) -> Result<usize, TapError> {
        let fail = |source| TapError::Mtu {
            name: self.name.clone(),
            source,
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(fail(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new socket that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ifr = ifreq_for(&self.name);
        // SAFETY: SIOCGIFMTU reads and writes one `struct ifreq`, which `ifr` is.
        let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut ifr) };
        if ret < 0 {
            return Err(fail(io::Error::last_os_error()));
        }
        // SAFETY: SIOCGIFMTU succeeded, so the kernel stored the MTU in `ifru_mtu`.
        let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
        usize::try_from(mtu).map_err(|_| fail(io::Error::from_raw_os_error(libc::EINVAL)))
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl FrameIo for Tap {}

impl<T: FrameIo> FrameIo for std::sync::Arc<T> {
    fn read_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        T::read_frame(self, bufs)
    }

    fn write_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        T::write_frame(self, bufs)
    }
}

/// Checks that `name` can be a network interface name.
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let invalid = |reason| TapError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(invalid("reserved name"));
    }
    let bad = |c: char| c == '/' || c == ':' || c == '%' || c.is_whitespace() || c.is_control();
    if name.chars().any(bad) {
        return Err(invalid(
            "contains '/', ':', '%', whitespace or control characters",
        ));
    }
    Ok(())
}

fn open_tun_device(name: &str) -> Result<File, TapError> {
    let name = name.to_string();
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                TapError::TunMissing { name }
            }
            Some(libc::EACCES) | Some(libc::EPERM) => TapError::TunPermission { name },
            _ => TapError::OpenTun { name, source },
        })
}

fn set_iff_error(name: &str, existed: bool, source: io::Error) -> TapError {
    let name = name.to_string();
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) if existed => TapError::AttachDenied { name },
        Some(libc::EPERM) | Some(libc::EACCES) => TapError::CreateDenied { name },
        Some(libc::EBUSY) => TapError::Busy { name },
        Some(libc::EINVAL) if existed => TapError::NotATap { name },
        _ => TapError::SetIff { name, source },
    }
}

/// A zeroed `struct ifreq` carrying `name` (validated: at most 15 bytes, no NUL).
fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers, addresses
    // and pointers), for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes().take(MAX_NAME_LEN)) {
        *dst = src as libc::c_char;
    }
    ifr
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;
