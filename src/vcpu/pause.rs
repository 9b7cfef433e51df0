//! Pausing the vCPUs: the VMM raises a flag and kicks every vCPU out of KVM_RUN; each vCPU
//! thread sees the flag between two KVM_RUN calls, reports itself parked and sleeps until
//! the flag is lowered (or the VM ends).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::exit::ExitLatch;

/// The pause flag shared by the VMM and its vCPU threads.
#[derive(Debug, Default)]
pub struct PauseGate {
    /// Fast path for the vCPU loop: set while a pause is requested.
    requested: AtomicBool,
    state: Mutex<GateState>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Whether the vCPUs should stay parked.
    paused: bool,
    /// vCPU threads parked right now.
    parked: usize,
}

impl PauseGate {
    /// A gate that lets every vCPU run.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a pause is requested (checked by the vCPU loop after every KVM_RUN).
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Asks the vCPUs to park; they do so once they are out of KVM_RUN (kick them).
    pub fn request_pause(&self) {
        let mut state = self.lock();
        state.paused = true;
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        let mut state = self.lock();
        state.paused = false;
        self.requested.store(false, Ordering::SeqCst);
        self.cond.notify_all();
    }

    /// How many vCPU threads are parked.
    pub fn parked(&self) -> usize {
        self.lock().parked
    }

    /// Waits up to `timeout` until `count` vCPUs are parked, kicking them through
    /// `kick` every millisecond meanwhile; false on timeout or when the pause was lifted.
    pub fn wait_parked(&self, count: usize, timeout: Duration, mut kick: impl FnMut()) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if !state.paused {
                return false;
            }
            if state.parked >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            drop(state);
            kick();
            state = self.lock();
            state = self
                .cond
                .wait_timeout(state, Duration::from_millis(1))
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Called by a vCPU thread that saw [`Self::is_requested`]: stays parked until the
    /// pause is lifted or the VM ends.
    pub fn park(&self, latch: &ExitLatch) {
        let mut state = self.lock();
        state.parked += 1;
        self.cond.notify_all();
        while state.paused && !latch.is_set() {
            // Wake up now and then to see the exit latch, which has its own condvar.
            state = self
                .cond
                .wait_timeout(state, Duration::from_millis(50))
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        state.parked -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn vcpus_park_until_resumed() {
        let gate = Arc::new(PauseGate::new());
        let latch = Arc::new(ExitLatch::new());
        let steps = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (gate, latch, steps) = (gate.clone(), latch.clone(), steps.clone());
                std::thread::spawn(move || {
                    while !latch.is_set() {
                        if gate.is_requested() {
                            gate.park(&latch);
                        }
                        steps.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(100));
                    }
                })
            })
            .collect();
        gate.request_pause();
        assert!(gate.wait_parked(2, Duration::from_secs(5), || {}));
        let frozen = steps.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(steps.load(Ordering::SeqCst), frozen);
        gate.resume();
        let deadline = Instant::now() + Duration::from_secs(5);
        while steps.load(Ordering::SeqCst) == frozen && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(steps.load(Ordering::SeqCst) > frozen);
        // A paused VM still ends.
        gate.request_pause();
        assert!(gate.wait_parked(2, Duration::from_secs(5), || {}));
        latch.request(crate::exit::ExitReason::Shutdown);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gate.parked(), 0);
    }

    #[test]
    fn waiting_gives_up() {
        let gate = PauseGate::new();
        gate.request_pause();
        let mut kicks = 0;
        assert!(!gate.wait_parked(1, Duration::from_millis(20), || kicks += 1));
        assert!(kicks > 0);
        gate.resume();
        assert!(!gate.wait_parked(1, Duration::from_secs(1), || {}));
    }
}
