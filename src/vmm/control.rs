//! A handle on a running VM for other threads (the API): pause and resume its vCPUs,
//! press Ctrl-Alt-Del on its keyboard, and learn when it has started.

use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use std::collections::HashMap;
use std::path::Path;

use super::persist::{CreateStats, SnapshotSource, create_snapshot};
use crate::devices::i8042::{I8042, KeyboardError};
use crate::devices::virtio::balloon::BalloonShared;
use crate::devices::virtio::block::LiveDrive;
use crate::devices::virtio::rate_limiter::RateLimiter;
use crate::vcpu::{self, pause::PauseGate};

/// How long a pause may take before it is given up (a vCPU stuck in the kernel).
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a control request failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the VM is not running")]
    NotRunning,
    #[error("the vCPUs did not pause within {0:?}")]
    PauseTimeout(Duration),
    #[error(transparent)]
    Keyboard(#[from] KeyboardError),
    #[error("the VM must be paused to be snapshotted")]
    NotPaused,
    #[error("the snapshot failed: {0}")]
    Snapshot(String),
    #[error("a VM with a balloon cannot be snapshotted yet (the balloon's state is not saved)")]
    BalloonSnapshot,
}

/// Where the VM is in its life, as the handle sees it.
enum Phase {
    /// Not booted (yet, or again after a failed boot).
    Idle,
    /// vCPU threads running.
    Live(Live),
    /// The boot failed before the vCPUs ran.
    Failed(String),
    /// The VM has ended (the vCPU threads are being or have been joined).
    Ended,
}

/// What the handle needs of a running VM.
struct Live {
    /// The vCPU threads, to kick out of KVM_RUN; valid while the phase is `Live`.
    vcpus: Vec<libc::pthread_t>,
    keyboard: Arc<Mutex<I8042>>,
}

/// Shared by the VMM (which attaches the running VM) and its controllers.
pub struct VmControl {
    gate: Arc<PauseGate>,
    phase: Mutex<Phase>,
    changed: Condvar,
    /// What a snapshot of the running VM reads.
    snapshot: Mutex<Option<Arc<SnapshotSource>>>,
    /// The running VM's drives, by drive_id (PATCH /drives).
    drives: Mutex<HashMap<String, Arc<LiveDrive>>>,
    /// The running VM's balloon (PATCH /balloon, statistics).
    balloon: Mutex<Option<Arc<BalloonShared>>>,
    /// The running VM's interfaces' TX rate limiters, by iface_id.
    net_limiters: Mutex<HashMap<String, Arc<Mutex<RateLimiter>>>>,
    /// The running VM's interfaces' RX rate limiters, by iface_id.
    net_rx_limiters: Mutex<HashMap<String, Arc<Mutex<RateLimiter>>>>,
}

impl Default for VmControl {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VmControl {
    /// A handle with no VM yet.
    pub fn new() -> Self {
        Self {
            gate: Arc::new(PauseGate::new()),
            phase: Mutex::new(Phase::Idle),
            changed: Condvar::new(),
            snapshot: Mutex::new(None),
            drives: Mutex::new(HashMap::new()),
            net_limiters: Mutex::new(HashMap::new()),
            net_rx_limiters: Mutex::new(HashMap::new()),
            balloon: Mutex::new(None),
        }
    }

    /// Called by the VMM with the VM's balloon (or `None` when the VM is gone).
    pub fn set_balloon(&self, balloon: Option<Arc<BalloonShared>>) {
        *lock(&self.balloon) = balloon;
    }

    /// The running VM's balloon, if it has one.
    pub fn balloon(&self) -> Option<Arc<BalloonShared>> {
        lock(&self.balloon).clone()
    }

    /// Registers a running interface's RX limiter.
    pub fn add_net_rx_limiter(&self, id: &str, limiter: Arc<Mutex<RateLimiter>>) {
        lock(&self.net_rx_limiters).insert(id.to_string(), limiter);
    }

    /// A running interface's RX limiter.
    pub fn net_rx_limiter(&self, id: &str) -> Option<Arc<Mutex<RateLimiter>>> {
        lock(&self.net_rx_limiters).get(id).cloned()
    }

    /// Registers a running interface's TX limiter.
    pub fn add_net_limiter(&self, id: &str, limiter: Arc<Mutex<RateLimiter>>) {
        lock(&self.net_limiters).insert(id.to_string(), limiter);
    }

    /// The TX rate limiter of the running VM's interface `id`.
    pub fn net_limiter(&self, id: &str) -> Option<Arc<Mutex<RateLimiter>>> {
        lock(&self.net_limiters).get(id).cloned()
    }

    /// Called by the VMM for each drive it attaches.
    pub fn add_drive(&self, id: &str, drive: Arc<LiveDrive>) {
        lock(&self.drives).insert(id.to_string(), drive);
    }

    /// The running VM's drive `id`.
    pub fn drive(&self, id: &str) -> Option<Arc<LiveDrive>> {
        lock(&self.drives).get(id).cloned()
    }

    /// The gate every vCPU of the VM must obey.
    pub fn pause_gate(&self) -> Arc<PauseGate> {
        Arc::clone(&self.gate)
    }

    fn set(&self, phase: Phase) {
        *lock(&self.phase) = phase;
        self.changed.notify_all();
    }

    /// Called by the VMM once the vCPU threads run.
    pub fn attach(&self, threads: &[JoinHandle<()>], keyboard: Arc<Mutex<I8042>>) {
        let vcpus = threads.iter().map(JoinHandleExt::as_pthread_t).collect();
        self.set(Phase::Live(Live { vcpus, keyboard }));
    }

    /// Called by the VMM before it joins the vCPU threads: the handle stops using them.
    pub fn detach(&self) {
        self.gate.resume();
        self.set(Phase::Ended);
    }

    /// Records that a boot failed before the vCPUs ran.
    pub fn fail(&self, msg: String) {
        let mut phase = lock(&self.phase);
        if matches!(*phase, Phase::Idle) {
            *phase = Phase::Failed(msg);
            self.changed.notify_all();
        }
    }

    /// Forgets a failed boot, before another attempt.
    pub fn reset(&self) {
        let mut phase = lock(&self.phase);
        if matches!(*phase, Phase::Failed(_)) {
            *phase = Phase::Idle;
        }
    }

    /// Waits until the VM runs (Ok), its boot failed (the message) or it has ended.
    pub fn wait_started(&self) -> Result<(), String> {
        let mut phase = lock(&self.phase);
        loop {
            match &*phase {
                Phase::Idle => {}
                Phase::Live(_) => return Ok(()),
                Phase::Failed(msg) => return Err(msg.clone()),
                Phase::Ended => return Err("the VM ended while starting".into()),
            }
            phase = self.changed.wait(phase).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Stops every vCPU; returns once each one has parked outside KVM_RUN.
    pub fn pause(&self) -> Result<(), ControlError> {
        let phase = lock(&self.phase);
        let Phase::Live(live) = &*phase else {
            return Err(ControlError::NotRunning);
        };
        self.gate.request_pause();
        let parked = self
            .gate
            .wait_parked(live.vcpus.len(), PAUSE_TIMEOUT, || kick_all(&live.vcpus));
        if parked {
            Ok(())
        } else {
            self.gate.resume();
            Err(ControlError::PauseTimeout(PAUSE_TIMEOUT))
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) -> Result<(), ControlError> {
        let phase = lock(&self.phase);
        if !matches!(*phase, Phase::Live(_)) {
            return Err(ControlError::NotRunning);
        }
        self.gate.resume();
        Ok(())
    }

    /// Called by the VMM once the VM's devices exist: snapshots read them from `source`.
    pub fn set_snapshot_source(&self, source: Arc<SnapshotSource>) {
        *lock(&self.snapshot) = Some(source);
    }

    /// Called by the VMM when the VM is gone.
    pub fn clear_snapshot_source(&self) {
        *lock(&self.snapshot) = None;
    }

    /// Writes a snapshot of the paused VM.
    pub fn create_snapshot(
        &self,
        state_path: &Path,
        mem_path: &Path,
    ) -> Result<CreateStats, ControlError> {
        let phase = lock(&self.phase);
        let Phase::Live(live) = &*phase else {
            return Err(ControlError::NotRunning);
        };
        if !self.gate.is_requested() || self.gate.parked() < live.vcpus.len() {
            return Err(ControlError::NotPaused);
        }
        if self.balloon().is_some() {
            return Err(ControlError::BalloonSnapshot);
        }
        let source = lock(&self.snapshot)
            .clone()
            .ok_or(ControlError::NotRunning)?;
        create_snapshot(&source, state_path, mem_path)
            .map_err(|e| ControlError::Snapshot(crate::control::error_chain(&e)))
    }

    /// Presses Ctrl-Alt-Del on the VM's keyboard.
    pub fn ctrl_alt_del(&self) -> Result<(), ControlError> {
        let phase = lock(&self.phase);
        let Phase::Live(live) = &*phase else {
            return Err(ControlError::NotRunning);
        };
        let mut kbd = lock(&live.keyboard);
        kbd.press_ctrl_alt_del().map_err(ControlError::from)
    }
}

/// Sends the kick signal to every vCPU thread.
fn kick_all(vcpus: &[libc::pthread_t]) {
    for &t in vcpus {
        // SAFETY: the threads are alive: the caller holds the phase lock, and the VMM
        // detaches (taking that lock) before it joins them. The kick signal has a handler.
        unsafe { libc::pthread_kill(t, vcpu::kick_signal()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_before_the_start_fail() {
        let c = VmControl::new();
        assert_eq!(c.pause(), Err(ControlError::NotRunning));
        assert_eq!(c.resume(), Err(ControlError::NotRunning));
        assert_eq!(c.ctrl_alt_del(), Err(ControlError::NotRunning));
        c.fail("no kernel".into());
        assert_eq!(c.wait_started(), Err("no kernel".into()));
        c.reset();
        c.detach();
        assert!(c.wait_started().is_err());
    }
}
