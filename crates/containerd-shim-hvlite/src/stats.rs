//! `Stats`: what the VM costs the host, as containerd's cgroups v1 `Metrics` (what `ctr
//! task metrics` and the CRI plugin decode): CPU time and resident memory of the
//! container's monitor process, which is the VMM (guest memory included), from /proc.

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;

use crate::error::ShimError;

/// containerd's type name for cgroups v1 metrics.
pub const METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";

/// CPU and memory figures of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessFigures {
    pub user_ns: u64,
    pub kernel_ns: u64,
    pub rss_bytes: u64,
    pub threads: u64,
}

/// Parses /proc/PID/stat (utime, stime, num_threads) and the VmRSS line of /proc/PID/status.
pub fn parse(stat: &str, status: &str, ticks_per_sec: u64) -> Option<ProcessFigures> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3; utime is field 14, stime 15, num_threads 20.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let ns = |t: u64| t.saturating_mul(1_000_000_000) / ticks_per_sec.max(1);
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Some(ProcessFigures {
        user_ns: ns(ticks(11)?),
        kernel_ns: ns(ticks(12)?),
        rss_bytes: rss_kib * 1024,
        threads: ticks(17)?,
    })
}

/// Reads the figures of `pid`.
pub fn read(pid: i32) -> Result<ProcessFigures, ShimError> {
    let gone = |e| ShimError::Io(format!("/proc/{pid}"), e);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(gone)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(gone)?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse(&stat, &status, u64::try_from(hz).unwrap_or(100))
        .ok_or_else(|| ShimError::Precondition(format!("/proc/{pid}/stat: unexpected format")))
}

/// The figures as cgroups v1 metrics, packed as containerd expects.
pub fn to_any(f: &ProcessFigures) -> Result<Any, ShimError> {
    let mut m = Metrics::new();
    let mut cpu = CPUStat::new();
    let mut usage = CPUUsage::new();
    usage.user = f.user_ns;
    usage.kernel = f.kernel_ns;
    usage.total = f.user_ns + f.kernel_ns;
    cpu.usage = Some(usage).into();
    m.cpu = Some(cpu).into();
    let mut mem = MemoryStat::new();
    mem.rss = f.rss_bytes;
    let mut entry = MemoryEntry::new();
    entry.usage = f.rss_bytes;
    mem.usage = Some(entry).into();
    m.memory = Some(mem).into();
    let mut pids = PidsStat::new();
    pids.current = f.threads;
    m.pids = Some(pids).into();
    let value = m
        .write_to_bytes()
        .map_err(|e| ShimError::Precondition(format!("cannot encode metrics: {e}")))?;
    Ok(Any {
        type_url: METRICS_TYPE.into(),
        value,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_proc_text() {
        let stat = "42 (hv lite) S 1 42 42 0 -1 0 0 0 0 0 250 50 0 0 20 0 7 0 1000 1 1";
        let status = "Name:\tx\nVmRSS:\t  2048 kB\n";
        let f = parse(stat, status, 100).unwrap();
        assert_eq!(f.user_ns, 2_500_000_000);
        assert_eq!(f.kernel_ns, 500_000_000);
        assert_eq!(f.rss_bytes, 2 << 20);
        assert_eq!(f.threads, 7);
        assert!(parse("garbage", "", 100).is_none());
        let any = to_any(&f).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage.total, 3_000_000_000);
        assert_eq!(m.memory.usage.usage, 2 << 20);
        let me = read(std::process::id() as i32).unwrap();
        assert!(me.rss_bytes > 0 && me.threads >= 1);
    }
}
