//! How the VM's end is requested (by a device or a vCPU) and awaited (by the VMM).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// Why the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest init reported its command's exit status through the exit port.
    GuestStatus(u8),
    /// The guest asked for a reset (i8042 reset line, or a KVM system-event reset).
    Reset,
    /// The guest powered off (KVM system-event shutdown) or was shut down from outside.
    Shutdown,
    /// The guest kernel panicked; the kernel's panic line.
    GuestPanic(String),
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN), at this guest RIP.
    TripleFault { vcpu: u8, rip: u64 },
    /// The VMM could not go on (for example an instruction it cannot emulate).
    Fatal(String),
}

impl ExitReason {
    /// The one-line error for an end that is a failure of the guest or the VMM.
    pub fn failure(&self) -> Option<String> {
        match self {
            Self::GuestStatus(_) | Self::Reset | Self::Shutdown => None,
            Self::GuestPanic(line) => Some(format!("guest kernel panicked: {line}")),
            Self::TripleFault { vcpu, rip } => Some(format!(
                "guest triple fault on vCPU {vcpu} at RIP {rip:#x} (KVM shutdown exit)"
            )),
            Self::Fatal(msg) => Some(msg.clone()),
        }
    }
}

/// A one-shot latch: the first request wins; every vCPU sees [`ExitLatch::is_set`] from then on.
#[derive(Debug, Default)]
pub struct ExitLatch {
    set: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    cond: Condvar,
}

impl ExitLatch {
    /// A latch that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests the end of the VM. Later requests are ignored; returns whether this one won.
    pub fn request(&self, reason: ExitReason) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return false;
        }
        log::debug!("VM exit requested: {reason:?}");
        *slot = Some(reason);
        self.set.store(true, Ordering::SeqCst);
        self.cond.notify_all();
        true
    }

    /// Whether an end has been requested.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Blocks until an end is requested and returns its reason.
    pub fn wait(&self) -> ExitReason {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = slot.as_ref() {
                return reason.clone();
            }
            slot = self.cond.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_request_wins_and_wakes_waiter() {
        let latch = Arc::new(ExitLatch::new());
        assert!(!latch.is_set());
        let l2 = latch.clone();
        let waiter = std::thread::spawn(move || l2.wait());
        assert!(latch.request(ExitReason::GuestStatus(7)));
        assert!(!latch.request(ExitReason::Reset));
        assert!(latch.is_set());
        assert_eq!(waiter.join().unwrap(), ExitReason::GuestStatus(7));
        assert_eq!(latch.wait(), ExitReason::GuestStatus(7));
    }
}
