//! The agent in a template VM (`hvlite.template=1`, see
//! [`hvlite_protocol::agent::CMDLINE_TEMPLATE`]).
//!
//! hvlite builds a template by booting the agent, waiting for its Hello and snapshotting the
//! paused VM while the agent waits here on that first connection. Every container restored
//! from the template resumes in [`wait_for_reset`]: the vsock device's TRANSPORT_RESET
//! breaks the old connection, the agent connects again and says Hello to the new host. The
//! container's root drive was an empty placeholder in the template; the restore opens the
//! real image and announces its capacity with a config-change interrupt, which
//! [`wait_for_capacity`] waits for before anything mounts it. [`apply_sync`] then sets the
//! clock and reseeds the random generator from the host's `Start` (all VMs restored from
//! one template would otherwise share its clock and random state).

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hvlite_protocol::agent::protocol::GuestSync;

/// How long the root device may take to show its capacity after a restore.
pub const CAPACITY_TIMEOUT: Duration = Duration::from_secs(10);
const CAPACITY_POLL: Duration = Duration::from_millis(2);

/// `RNDADDENTROPY`, `_IOW('R', 0x03, int[2])` (linux/random.h; not in the libc crate).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`, `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Reads (and drops) whatever arrives on `conn` until it breaks: end of file or an error
/// (the transport reset after a restore). Returns why, for the console.
pub fn wait_for_reset(conn: &mut impl Read) -> String {
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return "closed".into(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return e.to_string(),
        }
    }
}

/// The sysfs file with the size (in 512-byte sectors) of the block device `dev`
/// (`/dev/vdb` → `/sys/class/block/vdb/size`).
pub fn size_file(dev: &str) -> String {
    let name = dev.rsplit('/').next().unwrap_or(dev);
    format!("/sys/class/block/{name}/size")
}

/// Waits until `read_size` reports a non-zero size (or `timeout` passes); returns it.
pub fn wait_for_capacity(
    mut read_size: impl FnMut() -> Option<u64>,
    timeout: Duration,
) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match read_size() {
            Some(n) if n > 0 => return Ok(n),
            _ if Instant::now() >= deadline => {
                return Err(format!(
                    "the container's root device has no capacity after {timeout:?}"
                ));
            }
            _ => std::thread::sleep(CAPACITY_POLL),
        }
    }
}

/// Reads a sysfs size file.
pub fn read_size(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sets the wall clock and feeds the entropy of `sync`; each failure is returned as a
/// message (the caller prints them; the process starts anyway).
pub fn apply_sync(sync: &GuestSync) -> Vec<String> {
    let mut problems = Vec::new();
    let ts = libc::timespec {
        tv_sec: (sync.realtime_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (sync.realtime_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        problems.push(format!("setting the clock: {}", io::Error::last_os_error()));
    }
    if !sync.entropy.is_empty()
        && let Err(e) = add_entropy(&sync.entropy)
    {
        problems.push(format!("adding the host's entropy: {e}"));
    }
    problems
}

/// The `struct rand_pool_info` RNDADDENTROPY takes: entropy in bits, length, bytes.
pub fn rand_pool_info(bytes: &[u8]) -> Vec<u8> {
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&len.saturating_mul(8).to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(bytes);
    info
}

fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    let info = rand_pool_info(bytes);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of the size its buf_size field gives,
    // which `info` holds; the fd is open.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_ends_the_wait() {
        assert_eq!(wait_for_reset(&mut &b"stale bytes"[..]), "closed");
        struct Reset;
        impl Read for Reset {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::ECONNRESET))
            }
        }
        assert!(wait_for_reset(&mut Reset).contains("reset"));
    }

    #[test]
    fn capacity_is_awaited_then_reported() {
        assert_eq!(size_file("/dev/vdb"), "/sys/class/block/vdb/size");
        let mut seen = vec![None, Some(0), Some(0), Some(65536)].into_iter();
        let got = wait_for_capacity(|| seen.next().flatten(), Duration::from_secs(5));
        assert_eq!(got, Ok(65536));
        let err = wait_for_capacity(|| Some(0), Duration::from_millis(20)).unwrap_err();
        assert!(err.contains("no capacity"), "{err}");
        assert_eq!(read_size("/nonexistent/size"), None);
    }

    #[test]
    fn pool_info_layout() {
        let info = rand_pool_info(&[1, 2, 3, 4]);
        assert_eq!(&info[..4], &32i32.to_ne_bytes());
        assert_eq!(&info[4..8], &4i32.to_ne_bytes());
        assert_eq!(&info[8..], &[1, 2, 3, 4]);
    }
}
