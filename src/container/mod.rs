//! Running a container's process in a microVM (`hvlite run --rootfs DIR -- CMD`).
//!
//! hvlite supplies the guest side itself: the guest kernel boots from a tiny read-only
//! "agent disk" holding hvlite's guest agent as init ([`agent_disk`]); the container's root
//! filesystem is the second disk ([`rootfs`]). The agent connects back over virtio-vsock
//! and receives the process to run ([`session`], protocol in [`crate::agent::protocol`]);
//! the process's stdout and stderr come back separately, hvlite's stdin is forwarded with
//! `-i`, SIGINT/SIGTERM/SIGHUP are forwarded ([`signals`]), and hvlite exits with the
//! process's status (128+N when signal N killed it). The kernel console stays quiet unless
//! `--console` asks for it; its tail is shown when the guest fails ([`console`]).

pub mod agent_disk;
pub mod console;
pub mod exec;
pub mod image;
pub mod paths;
pub mod retry;
pub mod rootfs;
pub mod session;
pub mod shares;
pub mod signals;
pub mod spec;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::agent::{
    self,
    protocol::{AGENT_VSOCK_PORT, ProtocolError},
};
use crate::config::{DiskConfig, VmConfig, VsockConfig};
use crate::exit::{ExitLatch, ExitReason};
use crate::vmm::{self, Console, RunEnv, VmmError};
use console::{ConsoleTail, crash_watch};
use rootfs::RootMode;
use spec::ProcessOptions;

/// The guest CID a container VM gets when `--vsock` does not set one.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// A container run: the VM's resources, the root filesystem and the process.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    /// Kernel, memory, vCPUs, extra disks, network, vsock, extra kernel options. Its
    /// `initrd` and `command` must be empty.
    pub vm: VmConfig,
    /// `--rootfs`: a directory or an ext4 image.
    pub rootfs: PathBuf,
    /// The process.
    pub process: ProcessOptions,
    /// `--console`: show the guest kernel's console on stderr.
    pub console: bool,
    /// `--volume`: host directories mounted in the container (virtio-fs).
    pub volumes: Vec<shares::Volume>,
    /// `--rootfs-mode`: how a root directory reaches the guest.
    pub rootfs_mode: shares::RootfsMode,
}

/// Errors before or around the VM of a container run.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Paths(#[from] paths::PathsError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    AgentDisk(#[from] agent_disk::AgentDiskError),
    #[error("the command: {0}")]
    Spec(#[source] ProtocolError),
    #[error("cannot set up signal forwarding")]
    Signals(#[source] io::Error),
    #[error("cannot start the VM's thread")]
    Thread(#[source] io::Error),
    #[error("cannot start the agent session")]
    Session(#[source] io::Error),
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

/// How a container run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// Why the VM ended: `GuestStatus` carries the process's status.
    pub reason: ExitReason,
    /// The last lines of the guest console (empty with `--console`, which showed them).
    pub console_tail: String,
}

/// The kernel options that make the agent disk the root and tell the agent where the
/// container root is (`root`: a device, or `virtiofs:TAG`).
pub fn kernel_options(root: &str, mode: RootMode, console: bool) -> String {
    let mut opts = format!(
        "root=/dev/vda ro rootfstype=ext4 init={} {} {}={} {}={}",
        agent::AGENT_INIT_PATH,
        agent::CMDLINE_AGENT,
        agent::CMDLINE_ROOT,
        root,
        agent::CMDLINE_ROOT_MODE,
        mode.as_option()
    );
    if !console {
        opts.push_str(" quiet");
    }
    opts
}

/// What the session of a running container offers another front end (the OCI runtime's
/// monitor): signals to the process, and the VM's end.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    /// The agent session (signal forwarding, whether the process started).
    pub shared: Arc<session::SessionShared>,
    /// Ends the VM.
    pub latch: Arc<ExitLatch>,
}

/// How a front end other than `hvlite run` adjusts a container run.
#[derive(Default)]
pub struct RunHooks {
    /// The process for the agent, instead of `cfg.process`'s.
    pub spec: Option<agent::protocol::ProcessSpec>,
    /// A root filesystem already prepared, instead of preparing `cfg.rootfs`.
    pub root: Option<rootfs::PreparedRoot>,
    /// Hold the process back until the host says go.
    pub gate: Option<session::StartGate>,
    /// Called with the session before the VM boots.
    pub on_session: Option<Box<dyn FnOnce(SessionHandle) + Send>>,
    /// Where the process's stdio goes, instead of hvlite's own stdin, stdout and stderr.
    pub outputs: Option<session::Outputs>,
    /// A handle to pause and resume the VM from another thread.
    pub control: Option<Arc<vmm::control::VmControl>>,
}

/// Runs the container described by `cfg` until its process ends.
///
/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread first: call it before starting
/// any other thread.
pub fn run(cfg: ContainerConfig) -> Result<RunOutcome, ContainerError> {
    run_with(cfg, RunHooks::default())
}

/// [`run`], adjusted by `hooks`.
pub fn run_with(cfg: ContainerConfig, hooks: RunHooks) -> Result<RunOutcome, ContainerError> {
    signals::block_forwarded().map_err(ContainerError::Signals)?;
    let spec = match hooks.spec {
        Some(spec) => spec,
        None => cfg.process.to_spec(|k| std::env::var(k).ok()),
    };
    spec.validate().map_err(ContainerError::Spec)?;

    let mut vm = cfg.vm;
    let virtiofs_root = hooks.root.is_none()
        && cfg.rootfs_mode == shares::RootfsMode::Virtiofs
        && cfg.rootfs.is_dir();
    let (root_disk, root_option, mode) = if virtiofs_root {
        let (share, option) = shares::root_share(cfg.rootfs.clone());
        log::info!(
            "rootfs: {} through virtio-fs (read-only, overlay)",
            cfg.rootfs.display()
        );
        vm.shares.push(share);
        (None, option, RootMode::Overlay)
    } else {
        let root = match hooks.root {
            Some(root) => root,
            None => rootfs::prepare(&cfg.rootfs)?,
        };
        log::info!(
            "rootfs: {} ({}, {:.1} ms)",
            root.image.display(),
            match (root.mode, root.built) {
                (RootMode::ReadWrite, _) => "the image itself, read-write",
                (RootMode::Overlay, true) => "image built",
                (RootMode::Overlay, false) => "cached image",
            },
            root.elapsed.as_secs_f64() * 1000.0
        );
        let disk = DiskConfig {
            path: root.image.clone(),
            read_only: root.mode == RootMode::Overlay,
            root: false,
            rate_limiter: None,
        };
        (
            Some(disk),
            agent::DEFAULT_ROOT_DEVICE.to_string(),
            root.mode,
        )
    };
    let agent = paths::agent_binary()?;
    let agent_image = agent_disk::agent_disk(&agent)?;

    // The agent disk is the guest's root, but kernel_options() says so itself, with the
    // agent's own root options.
    let mut disks = vec![DiskConfig {
        path: agent_image,
        read_only: true,
        root: false,
        rate_limiter: None,
    }];
    disks.extend(root_disk);
    disks.append(&mut vm.disks);
    vm.disks = disks;
    let (volume_shares, volume_option) = shares::volume_shares(&cfg.volumes);
    vm.shares.extend(volume_shares);
    let mut opts = kernel_options(&root_option, mode, cfg.console);
    if let Some(v) = volume_option {
        opts = format!("{opts} {v}");
    }
    vm.cmdline = Some(match vm.cmdline.take() {
        Some(user) => format!("{opts} {user}"),
        None => opts,
    });
    vm.command = None;
    let vsock = vm.vsock.get_or_insert(VsockConfig {
        cid: DEFAULT_GUEST_CID,
        uds: None,
    });
    log::debug!("container VM: vsock cid {}", vsock.cid);
    log::info!("container VM: {} vCPU(s), {} MiB", vm.cpus, vm.memory_mib);

    // The signal forwarder outlives a retried boot: it always serves the current one.
    // A signal that stopped a boot before the process started also rules out a retry.
    let current: Arc<Mutex<Option<SessionHandle>>> = Arc::default();
    let stopped = Arc::new(AtomicBool::new(false));
    let (target, stop) = (Arc::clone(&current), Arc::clone(&stopped));
    let forwarder = signals::spawn_forwarder(move |sig| {
        let Some(now) = target.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        if now.shared.forward_signal(sig) {
            log::debug!("forwarded signal {sig} to the container's process");
        } else {
            log::info!("signal {sig} before the process started: stopping the VM");
            stop.store(true, Ordering::SeqCst);
            now.latch
                .request(ExitReason::GuestStatus(signals::status_for(sig)));
        }
    })
    .map_err(ContainerError::Signals)?;
    drop(forwarder);

    // A front end that holds the session or gives its own stdio (the OCI monitor) gets no
    // retry: its handle would name the first boot's session, its stdio would be used up.
    let retryable = hooks.gate.is_none() && hooks.on_session.is_none() && hooks.outputs.is_none();
    let mut once = Some((hooks.gate, hooks.on_session, hooks.outputs));
    let mut attempt = 0;
    loop {
        let (gate, on_session, outputs) = once.take().unwrap_or((None, None, None));
        let mut boot_vm = vm.clone();
        if let Some(opt) = retry::test_crash_option(attempt, |k| std::env::var(k).ok()) {
            let line = boot_vm.cmdline.get_or_insert_with(String::new);
            line.push(' ');
            line.push_str(opt);
        }
        let boot = Boot {
            vm: &boot_vm,
            spec: spec.clone(),
            console: cfg.console,
            gate,
            on_session,
            outputs,
            current: &current,
            control: hooks.control.clone(),
        };
        // Each boot in its own thread: the VMM filters the thread that runs a VM with
        // seccomp, and a retry must start from an unfiltered one.
        let (outcome, started) = std::thread::scope(|s| {
            let vm_thread = std::thread::Builder::new()
                .name("container-vm".into())
                .spawn_scoped(s, move || boot.run())
                .map_err(ContainerError::Thread)?;
            vm_thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        if retryable
            && !stopped.load(Ordering::SeqCst)
            && retry::should_retry(&outcome.reason, started, attempt)
        {
            log::warn!(
                "the guest agent (PID 1) crashed before the container's process started ({}); \
                 booting the VM once more{}",
                outcome.reason.failure().unwrap_or_default(),
                if crate::host::HostKind::detect().is_pvm() {
                    " (a PVM host defect: docs/pvm-defect.md)"
                } else {
                    ""
                }
            );
            attempt += 1;
            continue;
        }
        return Ok(outcome);
    }
}

/// One boot of a container VM.
struct Boot<'a> {
    vm: &'a VmConfig,
    spec: agent::protocol::ProcessSpec,
    console: bool,
    gate: Option<session::StartGate>,
    on_session: Option<Box<dyn FnOnce(SessionHandle) + Send>>,
    /// The process's stdio, if not hvlite's own.
    outputs: Option<session::Outputs>,
    /// Where the signal forwarder finds the session of the boot that runs.
    current: &'a Mutex<Option<SessionHandle>>,
    /// Pauses and resumes the VM from another thread.
    control: Option<Arc<vmm::control::VmControl>>,
}

impl Boot<'_> {
    /// Boots the VM and serves the agent's session until the VM ends; also says whether the
    /// process had started.
    fn run(self) -> Result<(RunOutcome, bool), ContainerError> {
        let latch = Arc::new(ExitLatch::new());
        let (agent_tx, agent_rx) = mpsc::channel();
        let stdin = self.spec.stdin;
        let outputs = self.outputs.unwrap_or_else(|| session::Outputs {
            stdout: Box::new(io::stdout()),
            stderr: Box::new(io::stderr()),
            stdin: stdin.then(|| Box::new(io::stdin()) as Box<dyn io::Read + Send>),
        });
        let (shared, session_thread) =
            session::spawn_gated(self.spec, agent_rx, Arc::clone(&latch), outputs, self.gate)
                .map_err(ContainerError::Session)?;
        let handle = SessionHandle {
            shared: Arc::clone(&shared),
            latch: Arc::clone(&latch),
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.clone());
        if let Some(on_session) = self.on_session {
            on_session(handle);
        }

        let tail = ConsoleTail::new();
        let pvm = crate::host::HostKind::detect().is_pvm();
        let shown: Box<dyn io::Write + Send> = if self.console {
            Box::new(io::stderr())
        } else {
            Box::new(tail.clone())
        };
        let console = Console {
            out: Box::new(crash_watch(shown, pvm)),
            forward_stdin: false,
        };
        let env = RunEnv {
            console,
            latch: Arc::clone(&latch),
            vsock_ports: vec![(AGENT_VSOCK_PORT, agent_tx)],
        };
        let vmm_hooks = vmm::RunHooks {
            metrics: None,
            control: self.control,
        };
        let result = vmm::run_with(self.vm, env, vmm_hooks);
        // The session writes all output before it ends the VM, so nothing is lost by not
        // waiting long for it: it may still be blocked on a connection the VM never closed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        while !session_thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let reason = result?;
        let outcome = RunOutcome {
            reason,
            console_tail: tail.text(),
        };
        Ok((outcome, shared.is_started()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_options_name_the_agent_and_root() {
        let o = kernel_options("/dev/vdb", RootMode::Overlay, false);
        assert!(o.starts_with("root=/dev/vda ro rootfstype=ext4 init=/hvlite-init "));
        assert!(o.contains("hvlite.agent=1 hvlite.root=/dev/vdb hvlite.rootmode=overlay"));
        assert!(o.ends_with(" quiet"));
        let o = kernel_options("/dev/vdb", RootMode::ReadWrite, true);
        assert!(o.contains("hvlite.rootmode=rw") && !o.contains("quiet"));
        let o = kernel_options("virtiofs:rootfs", RootMode::Overlay, false);
        assert!(o.contains("hvlite.root=virtiofs:rootfs hvlite.rootmode=overlay"));
    }
}
