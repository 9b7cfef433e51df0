//! A sampling profiler of guest code, for finding where an (emulated) boot spends its
//! time: a timer thread kicks vCPU 0 out of KVM_RUN at a fixed period and the vCPU records
//! its RIP. The histogram is written as `RIP COUNT` lines (hex RIP, most frequent first);
//! `scripts/guest-profile.py` maps it to kernel symbols.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::exit::ExitLatch;

/// A histogram of sampled guest instruction pointers.
#[derive(Debug, Default)]
pub struct RipSamples {
    counts: HashMap<u64, u64>,
}

impl RipSamples {
    /// Counts one sample at `rip`.
    pub fn record(&mut self, rip: u64) {
        *self.counts.entry(rip).or_default() += 1;
    }

    /// Number of samples taken.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// `RIP COUNT` lines, most frequent first (ties by address).
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut rows: Vec<(&u64, &u64)> = self.counts.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (rip, count) in rows {
            writeln!(out, "{rip:016x} {count}")?;
        }
        Ok(())
    }
}

/// Where a vCPU's samples go.
#[derive(Debug)]
pub struct Profile {
    /// Output file.
    pub path: PathBuf,
    /// Samples so far.
    pub samples: RipSamples,
    /// The output, created up front: the vCPU thread's seccomp filter allows no open.
    out: io::Result<File>,
}

impl Profile {
    /// An empty profile written to `path` (created now) at the end.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            samples: RipSamples::default(),
            out: File::create(path),
        }
    }

    /// Writes the histogram to the output file.
    pub fn save(&self) -> io::Result<()> {
        let file = self
            .out
            .as_ref()
            .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
        let mut out = BufWriter::new(file);
        self.samples.write(&mut out)?;
        out.flush()
    }
}

/// Kicks `vcpu` with `signal` every `period` until `latch` fires.
pub fn spawn_sampler<T>(
    vcpu: &JoinHandle<T>,
    signal: libc::c_int,
    period: Duration,
    latch: Arc<ExitLatch>,
) -> io::Result<JoinHandle<()>> {
    let target = vcpu.as_pthread_t();
    thread::Builder::new()
        .name("guest-profiler".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Vmm);
            while !latch.is_set() {
                thread::sleep(period);
                // SAFETY: `target` is the pthread of a vCPU thread that is joined only after
                // this sampler has been joined, so the id stays valid while we signal it.
                unsafe { libc::pthread_kill(target, signal) };
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_sorted_by_count() {
        let mut s = RipSamples::default();
        for rip in [0x20, 0x10, 0x10, 0x30, 0x10, 0x20] {
            s.record(rip);
        }
        assert_eq!(s.total(), 6);
        let mut out = Vec::new();
        s.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0000000000000010 3\n0000000000000020 2\n0000000000000030 1\n"
        );
    }
}
