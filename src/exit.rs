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
    /// The guest powered off or a vCPU shut down (triple fault, KVM system-event shutdown).
    Shutdown,
    /// The VMM could not go on (for example an instruction it cannot emulate).
    Fatal(String),
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
