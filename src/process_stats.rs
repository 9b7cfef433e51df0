//! Figures about the hvlite process itself, used by the VMM, the vCPUs, metrics and the
//! API: when it started ([`PROCESS_START`]), its CPU time, and its resident set with and
//! without guest memory.

use std::fs;
use std::sync::OnceLock;
use std::time::Instant;

/// When the process started (set first thing in `main`), for the "time to first KVM_RUN"
/// and boot-time figures.
pub static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Resident memory of this process, split into guest memory and the VMM's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Whole process RSS in KiB.
    pub rss_kib: u64,
    /// Resident guest memory in KiB (the mappings backing guest RAM).
    pub guest_kib: u64,
}

impl MemoryUsage {
    /// RSS that is not guest memory.
    pub fn vmm_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_kib)
    }
}

/// Sums the `Rss:` of the mappings in `smaps` that start at one of `starts`, and the
/// total `Rss:` of all mappings.
pub fn parse_smaps(smaps: &str, starts: &[u64]) -> MemoryUsage {
    let mut usage = MemoryUsage::default();
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            usage.rss_kib += kib;
            if in_guest {
                usage.guest_kib += kib;
            }
        } else if let Some((start, _)) = first.split_once('-') {
            // A mapping header line: "start-end perms offset dev inode [path]".
            if let Ok(addr) = u64::from_str_radix(start, 16) {
                in_guest = starts.contains(&addr);
            }
        }
    }
    usage
}

/// Reads this process's memory usage; `guest_starts` are the host addresses of the guest
/// memory mappings.
pub fn memory_usage(guest_starts: &[u64]) -> std::io::Result<MemoryUsage> {
    let smaps = fs::read_to_string("/proc/self/smaps")?;
    Ok(parse_smaps(&smaps, guest_starts))
}

/// CPU time (user + system) this process has used so far, all threads included.
pub fn process_cpu_time() -> std::io::Result<std::time::Duration> {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let micros = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    Ok(std::time::Duration::from_micros(
        micros(ru.ru_utime) + micros(ru.ru_stime),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_guest_from_vmm() {
        let smaps = "\
5555000-5556000 r-xp 00000000 08:01 1 /usr/bin/hvlite
Size:                  4 kB
Rss:                   4 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:               20480 kB
7ffd000-7ffe000 rw-p 00000000 00:00 0 [stack]
Rss:                 132 kB
";
        let u = parse_smaps(smaps, &[0x7f00_0000_0000]);
        assert_eq!(u.rss_kib, 4 + 20480 + 132);
        assert_eq!(u.guest_kib, 20480);
        assert_eq!(u.vmm_kib(), 136);
    }
}
