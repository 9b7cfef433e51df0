//! vCPU exit counters, shared by all vCPU threads of a VM and read by the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use kvm_ioctls::VcpuExit;

/// What a vCPU exit (or a VMM action in the vCPU loop) is counted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Hlt,
    Shutdown,
    SystemEvent,
    InternalError,
    FailEntry,
    /// An instruction completed for KVM's emulator (also counted as `InternalError`).
    EmulationFixup,
    /// Any other exit (IRQ window, interrupted, unexpected kinds).
    Other,
}

impl ExitKind {
    /// Every kind, in output order.
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::InternalError,
        ExitKind::FailEntry,
        ExitKind::EmulationFixup,
        ExitKind::Other,
    ];

    /// The metric name.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::InternalError => "internal_error",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::EmulationFixup => "emulation_fixups",
            ExitKind::Other => "other",
        }
    }

    /// The kind of a KVM exit.
    pub fn of(exit: &VcpuExit<'_>) -> Self {
        match exit {
            VcpuExit::IoIn(..) => ExitKind::IoIn,
            VcpuExit::IoOut(..) => ExitKind::IoOut,
            VcpuExit::MmioRead(..) => ExitKind::MmioRead,
            VcpuExit::MmioWrite(..) => ExitKind::MmioWrite,
            VcpuExit::Hlt => ExitKind::Hlt,
            VcpuExit::Shutdown => ExitKind::Shutdown,
            VcpuExit::SystemEvent(..) => ExitKind::SystemEvent,
            VcpuExit::InternalError => ExitKind::InternalError,
            VcpuExit::FailEntry(..) => ExitKind::FailEntry,
            _ => ExitKind::Other,
        }
    }
}

/// Cumulative exit counts of all vCPUs of a VM (relaxed atomics: each count is exact,
/// but a snapshot is not one instant across counters).
#[derive(Debug, Default)]
pub struct VcpuExitCounters {
    counts: [AtomicU64; ExitKind::ALL.len()],
}

impl VcpuExitCounters {
    /// Counts one `kind`.
    pub fn record(&self, kind: ExitKind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count of `kind` so far.
    pub fn get(&self, kind: ExitKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    /// Adds the counts of a snapshotted VM, (name, count) as [`Self::snapshot`] gave them;
    /// unknown names are ignored.
    pub fn preload(&self, counts: &[(String, u64)]) {
        for (name, n) in counts {
            if let Some(k) = ExitKind::ALL.iter().find(|k| k.name() == name) {
                self.counts[*k as usize].fetch_add(*n, Ordering::Relaxed);
            }
        }
    }

    /// (name, count) of every kind, in [`ExitKind::ALL`] order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        ExitKind::ALL
            .iter()
            .map(|&k| (k.name(), self.get(k)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_index_their_own_counter() {
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
    }

    #[test]
    fn classifies_and_counts() {
        let c = VcpuExitCounters::default();
        let mut d = [0u8; 1];
        for exit in [
            VcpuExit::IoOut(0x3f8, b"x"),
            VcpuExit::IoOut(0x3f8, b"y"),
            VcpuExit::IoIn(0x3f8, &mut d),
            VcpuExit::Hlt,
            VcpuExit::IrqWindowOpen,
            VcpuExit::FailEntry(1, 0),
        ] {
            c.record(ExitKind::of(&exit));
        }
        assert_eq!(c.get(ExitKind::IoOut), 2);
        assert_eq!(c.get(ExitKind::IoIn), 1);
        assert_eq!(c.get(ExitKind::Hlt), 1);
        assert_eq!(c.get(ExitKind::Other), 1);
        assert_eq!(c.get(ExitKind::FailEntry), 1);
        let snap = c.snapshot();
        assert_eq!(snap.len(), ExitKind::ALL.len());
        assert_eq!(snap[1], ("io_out", 2));
        assert_eq!(snap.iter().map(|(_, n)| n).sum::<u64>(), 6);
    }
}
