//! Guest kernel panics: the console is watched for the kernel's `Kernel panic - not
//! syncing:` line. The VM then ends one of two ways: with `panic=-1` (hvlite's default) the
//! kernel resets at once, and [`PanicRecord::explain`] turns that reset into
//! [`ExitReason::GuestPanic`]; with `panic=0` the kernel would hang after its
//! `---[ end Kernel panic` line, so that line ends the VM.

use std::sync::{Arc, Mutex};

use crate::exit::{ExitLatch, ExitReason};

/// How the kernel starts its panic line.
const PANIC_START: &str = "Kernel panic - not syncing:";
/// How the kernel starts the last line of a panic report.
const PANIC_END: &str = "---[ end Kernel panic";

/// The panic line of `line`, without a leading timestamp, if it is one.
pub fn panic_line(line: &str) -> Option<&str> {
    line.find(PANIC_START).map(|at| line[at..].trim_end())
}

/// The first panic line the guest printed, shared between the console watcher and the VMM.
#[derive(Clone, Debug, Default)]
pub struct PanicRecord(Arc<Mutex<Option<String>>>);

impl PanicRecord {
    /// Nothing recorded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The recorded panic line.
    pub fn line(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, line: &str) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            log::debug!("guest panic seen: {line}");
            *slot = Some(line.to_string());
        }
    }

    /// An observer for [`super::line_watch::LineWatch`]: records the panic line and ends
    /// the VM at the end of the panic report.
    pub fn watcher(&self, latch: Arc<ExitLatch>) -> impl FnMut(&str) + Send + use<> {
        let record = self.clone();
        move |line: &str| {
            // The end line repeats the panic text, so it is looked for first.
            if line.contains(PANIC_END) {
                let text = record.line().unwrap_or_else(|| line.trim().to_string());
                latch.request(ExitReason::GuestPanic(text));
            } else if let Some(panic) = panic_line(line) {
                record.record(panic);
            }
        }
    }

    /// How the VM ended, given what the console showed: after a panic, anything but the
    /// guest's own exit status (the reset that follows, a lost agent connection, ...) is
    /// reported as the panic.
    pub fn explain(&self, reason: ExitReason) -> ExitReason {
        match (reason, self.line()) {
            (r @ (ExitReason::GuestStatus(_) | ExitReason::GuestPanic(_)), _) => r,
            (_, Some(line)) => ExitReason::GuestPanic(line),
            (r, None) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::line_watch::LineWatch;
    use std::io::Write;

    const VFS: &str = "Kernel panic - not syncing: VFS: Unable to mount root fs on \
                       unknown-block(0,0)";

    #[test]
    fn the_panic_line_is_found_without_its_timestamp() {
        let line = format!("[   16.2] {VFS}\r");
        assert_eq!(panic_line(&line), Some(VFS));
        assert_eq!(panic_line("[ 1.0] Run /init as init process"), None);
    }

    #[test]
    fn a_reset_after_a_panic_is_the_panic() {
        let record = PanicRecord::new();
        let latch = Arc::new(ExitLatch::new());
        let mut w = LineWatch::new(Vec::new(), record.watcher(latch.clone()));
        assert_eq!(record.explain(ExitReason::Reset), ExitReason::Reset);
        w.write_all(format!("[ 3.1] {VFS}\r\n[ 3.2] Rebooting in 1 seconds..\r\n").as_bytes())
            .unwrap();
        assert!(!latch.is_set(), "panic=-1 resets by itself");
        let panic = ExitReason::GuestPanic(VFS.to_string());
        assert_eq!(record.explain(ExitReason::Reset), panic);
        assert_eq!(record.explain(ExitReason::Shutdown), panic);
        assert_eq!(
            record.explain(ExitReason::Fatal("agent gone".into())),
            panic
        );
        assert_eq!(
            record.explain(ExitReason::GuestStatus(3)),
            ExitReason::GuestStatus(3)
        );
    }

    #[test]
    fn the_end_of_the_report_ends_the_vm() {
        let record = PanicRecord::new();
        let latch = Arc::new(ExitLatch::new());
        let mut w = LineWatch::new(Vec::new(), record.watcher(latch.clone()));
        w.write_all(format!("{VFS}\nCPU: 0 PID: 1\n---[ end {VFS} ]---\n").as_bytes())
            .unwrap();
        assert_eq!(latch.wait(), ExitReason::GuestPanic(VFS.to_string()));
    }
}
