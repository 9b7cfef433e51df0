//! vCPU threads: one per vCPU, each running KVM_RUN and dispatching its exits.

pub mod counters;
pub mod emulation;
pub mod exits;
pub mod pause;
pub mod persist;
pub mod profile;
pub mod regs;

use std::sync::Arc;
use std::thread::{self, JoinHandle};

use kvm_bindings::{CpuId, KVM_INTERNAL_ERROR_EMULATION, kvm_cpuid_entry2};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::bus::Buses;
use crate::exit::{ExitLatch, ExitReason};
use crate::host::HostKind;
use counters::{ExitKind, VcpuExitCounters};
use emulation::{MAX_INSN_LEN, exception_event, fixup_for, hex_bytes};
use exits::{Action, dispatch};

/// Errors creating or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("creating vCPU {0} failed")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("KVM_SET_CPUID2 on vCPU {0} failed")]
    SetCpuid(u8, #[source] kvm_ioctls::Error),
    #[error("setting up the registers of vCPU {0} failed")]
    Regs(u8, #[source] regs::RegsError),
    #[error("starting the thread of vCPU {0} failed")]
    Spawn(u8, #[source] std::io::Error),
    #[error("restoring vCPU state failed")]
    Restore(#[source] persist::PersistError),
}

/// Signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the (empty) handler of [`kick_signal`]; its only job is to make KVM_RUN
/// return EINTR.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop)
}

/// One vCPU, configured and ready to run on its own thread.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    host: HostKind,
    buses: Arc<Buses>,
    mem: GuestMemoryMmap,
    latch: Arc<ExitLatch>,
    profile: Option<profile::Profile>,
    exits: Arc<VcpuExitCounters>,
    pause: Arc<pause::PauseGate>,
    /// The CPUID set on the vCPU (a snapshot saves it).
    cpuid: Vec<kvm_cpuid_entry2>,
    /// Where the vCPU saves its state when it parks, with the MSRs to save.
    snapshot: Option<(Arc<persist::SavedStates>, Arc<Vec<u32>>)>,
}

impl Vcpu {
    /// Creates vCPU `index` with its CPUID, MSRs and local APIC set up.
    pub fn new(
        vm: &VmFd,
        index: u8,
        cpuid: &CpuId,
        host: HostKind,
        buses: Arc<Buses>,
        mem: GuestMemoryMmap,
        latch: Arc<ExitLatch>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        fd.set_cpuid2(cpuid)
            .map_err(|e| VcpuError::SetCpuid(index, e))?;
        regs::setup_msrs(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        regs::setup_lapic(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        Ok(Self {
            fd,
            index,
            host,
            buses,
            mem,
            latch,
            profile: None,
            exits: Arc::default(),
            pause: Arc::default(),
            cpuid: cpuid.as_slice().to_vec(),
            snapshot: None,
        })
    }

    /// Makes the vCPU save its state into `states` whenever it parks for a pause, with
    /// the MSRs of `msr_list`, so that a paused VM can be snapshotted.
    pub fn set_snapshot_slot(
        &mut self,
        states: Arc<persist::SavedStates>,
        msr_list: Arc<Vec<u32>>,
    ) {
        self.snapshot = Some((states, msr_list));
    }

    /// Gives the new vCPU a snapshot's state (instead of [`Self::setup_boot`]).
    pub fn restore_state(
        &self,
        state: &crate::snapshot::state::VcpuState,
    ) -> Result<(), VcpuError> {
        persist::restore(&self.fd, self.index, state).map_err(VcpuError::Restore)
    }

    /// Saves the state of this parked vCPU for a snapshot (see [`Self::set_snapshot_slot`]).
    fn save_for_snapshot(&mut self) {
        let Some((states, msrs)) = self.snapshot.clone() else {
            return;
        };
        // Completes an MMIO or port read that KVM still has to hand to the guest, without
        // entering the guest: KVM_RUN with immediate_exit returns EINTR at once.
        self.fd.set_kvm_immediate_exit(1);
        let completed = match self.fd.run() {
            Err(e) if e.errno() != libc::EINTR => Err(e),
            _ => Ok(()),
        };
        self.fd.set_kvm_immediate_exit(0);
        let state = match completed {
            Err(e) => Err(format!("completing the pending I/O failed: {e}")),
            Ok(()) => persist::save(&self.fd, self.index, &self.cpuid, &msrs)
                .map_err(|e| crate::control::error_chain(&e)),
        };
        if let Err(e) = &state {
            log::warn!("vCPU {}: cannot save its state: {e}", self.index);
        }
        states.put(self.index, state);
    }

    /// Records this vCPU's RIP whenever it is kicked, into a histogram saved at `path`
    /// when the vCPU stops (see [`profile`]).
    pub fn enable_profile(&mut self, path: &std::path::Path) {
        self.profile = Some(profile::Profile::new(path));
    }

    /// Counts this vCPU's exits into `exits` (shared by the VM's vCPUs, read by the
    /// metrics); without it they go to a private set nobody reads.
    pub fn set_exit_counters(&mut self, exits: Arc<VcpuExitCounters>) {
        self.exits = exits;
    }

    /// Makes this vCPU obey `gate` (shared by the VM's vCPUs, raised by the VMM to pause
    /// them); without it the vCPU never pauses.
    pub fn set_pause_gate(&mut self, gate: Arc<pause::PauseGate>) {
        self.pause = gate;
    }

    /// Makes this the boot vCPU: 64-bit mode at `entry`.
    pub fn setup_boot(
        &self,
        entry: u64,
        segs: &crate::boot::gdt::BootSegments,
        cr3: u64,
    ) -> Result<(), VcpuError> {
        regs::setup_boot_cpu(&self.fd, entry, segs, cr3).map_err(|e| VcpuError::Regs(self.index, e))
    }

    /// Starts the vCPU's thread. The thread ends when the VM's exit latch fires.
    pub fn spawn(self) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || self.run())
            .map_err(|e| VcpuError::Spawn(index, e))
    }

    fn run(mut self) {
        if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
            self.latch.request(ExitReason::Fatal(e.to_string()));
            return;
        }
        let mut first = true;
        while !self.latch.is_set() {
            if self.pause.is_requested() {
                self.save_for_snapshot();
                self.pause.park(&self.latch);
                if let Some((states, _)) = &self.snapshot {
                    states.clear(self.index);
                }
                continue;
            }
            if first && self.index == 0 {
                first = false;
                if let Some(start) = crate::process_stats::PROCESS_START.get() {
                    log::info!(
                        "first KVM_RUN {:.1} ms after process start",
                        start.elapsed().as_secs_f64() * 1e3
                    );
                }
            }
            let action = match self.fd.run() {
                Ok(exit) => {
                    self.exits.record(ExitKind::of(&exit));
                    dispatch(exit, &self.buses)
                }
                // A kick (EINTR) or an AP waiting for INIT/SIPI (EAGAIN): look at the
                // latch and go again.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.sample_rip();
                    Action::Continue
                }
                Err(e) => Action::Stop(ExitReason::Fatal(format!(
                    "KVM_RUN on vCPU {} failed: {e}",
                    self.index
                ))),
            };
            let action = match action {
                Action::InternalError => self.internal_error(),
                Action::TripleFault => self.triple_fault(),
                other => other,
            };
            if let Action::Stop(reason) = action {
                self.latch.request(reason);
                break;
            }
        }
        if let Some(p) = &self.profile {
            match p.save() {
                Ok(()) => log::info!(
                    "guest profile: {} samples in {}",
                    p.samples.total(),
                    p.path.display()
                ),
                Err(e) => log::warn!("cannot write guest profile {}: {e}", p.path.display()),
            }
        }
    }

    fn sample_rip(&mut self) {
        if let Some(p) = &mut self.profile
            && let Ok(regs) = self.fd.get_regs()
        {
            p.samples.record(regs.rip);
        }
    }

    /// Handles KVM_EXIT_SHUTDOWN: the guest triple-faulted; the VM ends naming this vCPU
    /// and where it was.
    fn triple_fault(&mut self) -> Action {
        let rip = match self.fd.get_regs() {
            Ok(regs) => regs.rip,
            Err(e) => {
                return Action::Stop(ExitReason::Fatal(format!(
                    "guest triple fault on vCPU {} (KVM shutdown exit; KVM_GET_REGS: {e})",
                    self.index
                )));
            }
        };
        Action::Stop(ExitReason::TripleFault {
            vcpu: self.index,
            rip,
        })
    }

    /// Handles KVM_EXIT_INTERNAL_ERROR: on PVM hosts, completes the instructions the
    /// emulator lacks; anything else ends the VM with a description.
    fn internal_error(&mut self) -> Action {
        // SAFETY: KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
        // member of the exit union.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        if internal.suberror != KVM_INTERNAL_ERROR_EMULATION {
            return Action::Stop(ExitReason::Fatal(format!(
                "vCPU {}: KVM internal error, suberror {}",
                self.index, internal.suberror
            )));
        }
        match self.complete_emulation() {
            Ok(()) => Action::Continue,
            Err(msg) => Action::Stop(ExitReason::Fatal(msg)),
        }
    }

    fn complete_emulation(&mut self) -> Result<(), String> {
        let mut regs = self
            .fd
            .get_regs()
            .map_err(|e| format!("vCPU {}: KVM_GET_REGS: {e}", self.index))?;
        let bytes = self.read_insn(regs.rip);
        let fixup = fixup_for(self.host, &bytes);
        let Some(fixup) = fixup else {
            return Err(format!(
                "vCPU {}: emulation failure at guest RIP {:#x}, instruction bytes [{}]",
                self.index,
                regs.rip,
                hex_bytes(&bytes)
            ));
        };
        self.exits.record(ExitKind::EmulationFixup);
        let inject = fixup.apply(&mut regs);
        self.fd
            .set_regs(&regs)
            .map_err(|e| format!("vCPU {}: KVM_SET_REGS: {e}", self.index))?;
        if let Some(vector) = inject {
            let events = self
                .fd
                .get_vcpu_events()
                .map_err(|e| format!("vCPU {}: KVM_GET_VCPU_EVENTS: {e}", self.index))?;
            self.fd
                .set_vcpu_events(&exception_event(events, vector))
                .map_err(|e| format!("vCPU {}: KVM_SET_VCPU_EVENTS: {e}", self.index))?;
        }
        log::trace!(
            "vCPU {}: completed {fixup:?} at {:#x}",
            self.index,
            regs.rip
        );
        Ok(())
    }

    /// Reads up to [`MAX_INSN_LEN`] bytes of guest code at virtual address `rip`, page by
    /// page through the guest's page tables; stops early where a page is not mapped.
    fn read_insn(&self, rip: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_INSN_LEN);
        let mut va = rip;
        while out.len() < MAX_INSN_LEN {
            let Ok(t) = self.fd.translate_gva(va) else {
                break;
            };
            if t.valid == 0 {
                break;
            }
            let in_page = 0x1000 - (va & 0xfff) as usize;
            let n = in_page.min(MAX_INSN_LEN - out.len());
            let mut buf = vec![0u8; n];
            if self
                .mem
                .read_slice(&mut buf, GuestAddress(t.physical_address))
                .is_err()
            {
                break;
            }
            out.extend_from_slice(&buf);
            va = va.wrapping_add(n as u64);
        }
        out
    }
}
