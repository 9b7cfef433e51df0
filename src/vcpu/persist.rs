//! Saving and restoring one vCPU's KVM state. A vCPU saves itself when it parks for a
//! pause (so a snapshot of a paused VM reads states that cannot change any more), and a
//! restored vCPU gets its state before its thread starts.

use std::sync::{Mutex, MutexGuard};

use kvm_bindings::{Msrs, kvm_cpuid_entry2, kvm_msr_entry};
use kvm_ioctls::VcpuFd;

use crate::snapshot::state::{SavedMsrs, VcpuState};

/// MSRs read or written with one ioctl.
const MSR_BATCH: usize = 64;

/// A KVM state ioctl that failed.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {index}: {what} failed")]
pub struct PersistError {
    /// The vCPU.
    pub index: u8,
    /// The ioctl.
    pub what: &'static str,
    #[source]
    pub source: kvm_ioctls::Error,
}

fn err(index: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> PersistError {
    move |source| PersistError {
        index,
        what,
        source,
    }
}

/// Reads every MSR of `list`: in batches, stepping over (and recording) each one KVM
/// refuses to read, since KVM_GET_MSRS stops at the first failure.
fn save_msrs(fd: &VcpuFd, index: u8, list: &[u32]) -> Result<SavedMsrs, PersistError> {
    let mut saved = SavedMsrs {
        entries: Vec::with_capacity(list.len()),
        unreadable: Vec::new(),
    };
    let mut rest = list;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| PersistError {
            index,
            what: "building the MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = fd.get_msrs(&mut msrs).map_err(err(index, "KVM_GET_MSRS"))?;
        saved
            .entries
            .extend_from_slice(&msrs.as_slice()[..n.min(batch.len())]);
        if n < batch.len() {
            let bad = batch[n];
            log::warn!(
                "vCPU {index}: MSR {bad:#x} is listed as saveable but KVM refuses to read it; \
                 the snapshot records it as unreadable"
            );
            saved.unreadable.push(bad);
            rest = &rest[n + 1..];
        } else {
            rest = &rest[batch.len()..];
        }
    }
    Ok(saved)
}

/// Writes `msrs`; one KVM refuses is logged by index and skipped, never dropped silently.
fn restore_msrs(fd: &VcpuFd, index: u8, msrs: &SavedMsrs) -> Result<(), PersistError> {
    for &bad in &msrs.unreadable {
        log::warn!("vCPU {index}: MSR {bad:#x} was unreadable when the snapshot was taken");
    }
    let mut rest = msrs.entries.as_slice();
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let kvm_msrs = Msrs::from_entries(batch).map_err(|_| PersistError {
            index,
            what: "building the MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = fd.set_msrs(&kvm_msrs).map_err(err(index, "KVM_SET_MSRS"))?;
        if n < batch.len() {
            log::warn!(
                "vCPU {index}: KVM refused to restore MSR {:#x} (value {:#x})",
                batch[n].index,
                batch[n].data
            );
            rest = &rest[n + 1..];
        } else {
            rest = &rest[batch.len()..];
        }
    }
    Ok(())
}

/// Reads vCPU `index`'s whole state. `cpuid` is what hvlite set on it, `msr_list` the
/// MSRs KVM reports as saveable (KVM_GET_MSR_INDEX_LIST).
pub fn save(
    fd: &VcpuFd,
    index: u8,
    cpuid: &[kvm_cpuid_entry2],
    msr_list: &[u32],
) -> Result<VcpuState, PersistError> {
    // The TSC frequency is optional: an old KVM may lack KVM_GET_TSC_KHZ.
    let tsc_khz = fd.get_tsc_khz().unwrap_or_else(|e| {
        log::warn!("vCPU {index}: KVM_GET_TSC_KHZ failed ({e}); the TSC frequency is not saved");
        0
    });
    Ok(VcpuState {
        cpuid: cpuid.to_vec(),
        mp_state: fd.get_mp_state().map_err(err(index, "KVM_GET_MP_STATE"))?,
        regs: fd.get_regs().map_err(err(index, "KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(err(index, "KVM_GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(err(index, "KVM_GET_XSAVE"))?,
        xcrs: fd.get_xcrs().map_err(err(index, "KVM_GET_XCRS"))?,
        debugregs: fd
            .get_debug_regs()
            .map_err(err(index, "KVM_GET_DEBUGREGS"))?,
        lapic: fd.get_lapic().map_err(err(index, "KVM_GET_LAPIC"))?,
        msrs: save_msrs(fd, index, msr_list)?,
        events: fd
            .get_vcpu_events()
            .map_err(err(index, "KVM_GET_VCPU_EVENTS"))?,
        tsc_khz,
    })
}

/// Writes `state` into a new vCPU whose CPUID is already set. The order follows what KVM
/// needs: mp_state and registers first, the LAPIC before the MSRs (TSC deadline), pending
/// events last.
pub fn restore(fd: &VcpuFd, index: u8, state: &VcpuState) -> Result<(), PersistError> {
    if state.tsc_khz != 0 {
        let here = fd.get_tsc_khz().unwrap_or(0);
        if here != state.tsc_khz
            && let Err(e) = fd.set_tsc_khz(state.tsc_khz)
        {
            log::warn!(
                "vCPU {index}: TSC frequency {} kHz cannot be set (this host runs at {here} kHz): {e}",
                state.tsc_khz
            );
        }
    }
    fd.set_mp_state(state.mp_state)
        .map_err(err(index, "KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs)
        .map_err(err(index, "KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs)
        .map_err(err(index, "KVM_SET_SREGS"))?;
    // SAFETY: `state.xsave` is a whole kvm_xsave (4 KiB) owned here; KVM reads only that
    // much with KVM_SET_XSAVE.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(err(index, "KVM_SET_XSAVE"))?;
    fd.set_xcrs(&state.xcrs)
        .map_err(err(index, "KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debugregs)
        .map_err(err(index, "KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic)
        .map_err(err(index, "KVM_SET_LAPIC"))?;
    restore_msrs(fd, index, &state.msrs)?;
    fd.set_vcpu_events(&state.events)
        .map_err(err(index, "KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

/// Where parked vCPUs leave their saved states for a snapshot: one slot per vCPU, filled
/// each time the vCPU parks and cleared when it runs again.
#[derive(Debug, Default)]
pub struct SavedStates {
    slots: Mutex<Vec<Option<Result<VcpuState, String>>>>,
}

impl SavedStates {
    /// Slots for `count` vCPUs, all empty.
    pub fn new(count: usize) -> Self {
        Self {
            slots: Mutex::new((0..count).map(|_| None).collect()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<Result<VcpuState, String>>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores vCPU `index`'s state (or why it could not be read).
    pub fn put(&self, index: u8, state: Result<VcpuState, String>) {
        if let Some(slot) = self.lock().get_mut(usize::from(index)) {
            *slot = Some(state);
        }
    }

    /// Empties vCPU `index`'s slot (it runs again).
    pub fn clear(&self, index: u8) {
        if let Some(slot) = self.lock().get_mut(usize::from(index)) {
            *slot = None;
        }
    }

    /// Every vCPU's state, in index order; an error names the first vCPU without one.
    pub fn all(&self) -> Result<Vec<VcpuState>, String> {
        let slots = self.lock();
        let mut out = Vec::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            match slot {
                Some(Ok(s)) => out.push(s.clone()),
                Some(Err(e)) => return Err(format!("vCPU {i}: {e}")),
                None => return Err(format!("vCPU {i} has not saved its state (is it paused?)")),
            }
        }
        Ok(out)
    }
}
