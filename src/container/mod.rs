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
pub mod template;
pub mod template_build;
pub mod template_cmd;

use std::io;
use std::path::{Path, PathBuf};
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
    /// Restore a template instead of booting, when the run can ([`template`]); false is
    /// `--no-template`.
    pub template: bool,
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
    #[error(transparent)]
    Template(#[from] template::TemplateError),
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

/// Runs the container described by `cfg` until its process ends: restores its template
/// (building it first if needed), or boots.
///
/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread once the VM is ready to start:
/// call it before starting any other thread.
pub fn run(cfg: ContainerConfig) -> Result<RunOutcome, ContainerError> {
    run_with(cfg, RunHooks::default())
}

/// [`run`], adjusted by `hooks`.
pub fn run_with(cfg: ContainerConfig, hooks: RunHooks) -> Result<RunOutcome, ContainerError> {
    let spec = match hooks.spec {
        Some(spec) => spec,
        None => cfg.process.to_spec(|k| std::env::var(k).ok()),
    };
    spec.validate().map_err(ContainerError::Spec)?;

    let virtiofs_root = hooks.root.is_none()
        && cfg.rootfs_mode == shares::RootfsMode::Virtiofs
        && cfg.rootfs.is_dir();
    let root = if virtiofs_root {
        log::info!(
            "rootfs: {} through virtio-fs (read-only, overlay)",
            cfg.rootfs.display()
        );
        ContainerRoot::Virtiofs(cfg.rootfs.clone())
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
        ContainerRoot::Image(root.image, root.mode)
    };
    let agent = paths::agent_binary()?;
    let agent_image = agent_disk::agent_disk(&agent)?;

    let vm = container_vm(cfg.vm, &agent_image, &root, &cfg.volumes, cfg.console);
    let vsock = vm.vsock.as_ref().map_or(DEFAULT_GUEST_CID, |v| v.cid);
    log::debug!("container VM: vsock cid {vsock}");
    log::info!("container VM: {} vCPU(s), {} MiB", vm.cpus, vm.memory_mib);
    // The test switch goes on the first attempt's command line; with a template, it is in
    // the template's (a template of its own), so the restored agent crashes.
    let mut first_vm = vm.clone();
    if let Some(opt) = retry::test_crash_option(0, |k| std::env::var(k).ok()) {
        let line = first_vm.cmdline.get_or_insert_with(String::new);
        line.push(' ');
        line.push_str(opt);
    }
    // A front end that holds the session or gives its own stdio (the OCI monitor) gets no
    // retry: its handle would name the first boot's session, its stdio would be used up.
    let retryable = hooks.gate.is_none() && hooks.on_session.is_none() && hooks.outputs.is_none();
    let mut attempt = 0;
    let template = if cfg.template {
        match use_template(&first_vm, root.mode()) {
            TemplateUse::Restore(t) => Some(t),
            TemplateUse::Boot => None,
            // The agent crashed in the template's boot: that boot was the first attempt.
            TemplateUse::Failed(outcome)
                if retryable && retry::should_retry(&outcome.reason, false, attempt) =>
            {
                warn_retry(&outcome.reason, "the template's boot");
                attempt += 1;
                None
            }
            TemplateUse::Failed(outcome) => return Ok(outcome),
        }
    } else {
        log::info!("template: not used (--no-template): booting");
        None
    };
    // After the template build (its VM's threads come and go; a signal during the build
    // ends hvlite as it would any program), before the session's threads.
    signals::block_forwarded().map_err(ContainerError::Signals)?;

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

    let mut once = Some((hooks.gate, hooks.on_session, hooks.outputs));
    loop {
        let (gate, on_session, outputs) = once.take().unwrap_or((None, None, None));
        // A retry boots cold: it shares nothing with the attempt that crashed (retry.rs).
        let (boot_vm, restore) = match attempt {
            0 => (&first_vm, template.as_ref()),
            _ => (&vm, None),
        };
        let boot = Boot {
            vm: boot_vm,
            restore: restore.map(|t| {
                let uds = vm.vsock.as_ref().and_then(|v| v.uds.clone());
                t.restore_spec(&agent_image, root.image(), uds)
            }),
            template_dir: restore.map(|t| (t.info.key.clone(), t.dir.clone())),
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
            warn_retry(
                &outcome.reason,
                match restore {
                    Some(_) => "the restored template",
                    None => "the boot",
                },
            );
            attempt += 1;
            continue;
        }
        return Ok(outcome);
    }
}

/// Logs the retry of a run whose agent crashed in `attempt` (the boot, the restored
/// template...) before the process started. The retry is a cold boot.
fn warn_retry(reason: &ExitReason, attempt: &str) {
    log::warn!(
        "the guest agent (PID 1) crashed in {attempt} before the container's process \
         started ({}); booting the VM once more{}",
        reason.failure().unwrap_or_default(),
        if crate::host::HostKind::detect().is_pvm() {
            " (a PVM host defect: docs/pvm-defect.md)"
        } else {
            ""
        }
    );
}

/// One boot (or template restore) of a container VM.
struct Boot<'a> {
    vm: &'a VmConfig,
    /// Restore this template snapshot instead of booting `vm`.
    restore: Option<crate::vmm::persist::RestoreSpec>,
    /// The restored template's key and directory (removed if its snapshot is refused).
    template_dir: Option<(String, PathBuf)>,
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
        let result = match &self.restore {
            Some(spec) => {
                let restored = vmm::restore_with(spec, env, vmm_hooks);
                if let (Err(VmmError::Snapshot(e)), Some((key, dir))) =
                    (&restored, &self.template_dir)
                {
                    // Checked a moment ago, refused now: the next run rebuilds it.
                    log::warn!("template {key} failed to load ({e}): removing it");
                    let _ = std::fs::remove_dir_all(dir);
                }
                restored.map(|(reason, _)| reason)
            }
            None => vmm::run_with(self.vm, env, vmm_hooks),
        };
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

/// How the container's root file system reaches the guest.
#[derive(Clone, Debug)]
pub enum ContainerRoot {
    /// An ext4 image, the VM's second disk (`/dev/vdb`).
    Image(PathBuf, RootMode),
    /// A host directory shared read-only through virtio-fs, under the guest's overlay.
    Virtiofs(PathBuf),
}

impl ContainerRoot {
    /// How the agent mounts it.
    pub fn mode(&self) -> RootMode {
        match self {
            ContainerRoot::Image(_, mode) => *mode,
            ContainerRoot::Virtiofs(_) => RootMode::Overlay,
        }
    }

    /// The image (empty for a virtio-fs root, which has none).
    pub fn image(&self) -> &Path {
        match self {
            ContainerRoot::Image(image, _) => image,
            ContainerRoot::Virtiofs(_) => Path::new(""),
        }
    }
}

/// The VM of a container run: `base` (the user's resources) with the agent disk and the
/// root (image disk or virtio-fs share) first, the volumes' shares, the agent's kernel
/// options and a vsock device.
pub fn container_vm(
    base: VmConfig,
    agent_image: &Path,
    root: &ContainerRoot,
    volumes: &[shares::Volume],
    console: bool,
) -> VmConfig {
    let mut vm = base;
    // The agent disk is the guest's root, but kernel_options() says so itself, with the
    // agent's own root options.
    let mut disks = vec![DiskConfig {
        path: agent_image.to_path_buf(),
        read_only: true,
        root: false,
        rate_limiter: None,
    }];
    let root_option = match root {
        ContainerRoot::Image(image, mode) => {
            disks.push(DiskConfig {
                path: image.clone(),
                read_only: *mode == RootMode::Overlay,
                root: false,
                rate_limiter: None,
            });
            agent::DEFAULT_ROOT_DEVICE.to_string()
        }
        ContainerRoot::Virtiofs(dir) => {
            let (share, option) = shares::root_share(dir.clone());
            vm.shares.push(share);
            option
        }
    };
    disks.append(&mut vm.disks);
    vm.disks = disks;
    let (volume_shares, volume_option) = shares::volume_shares(volumes);
    vm.shares.extend(volume_shares);
    let mut opts = kernel_options(&root_option, root.mode(), console);
    if let Some(v) = volume_option {
        opts = format!("{opts} {v}");
    }
    vm.cmdline = Some(match vm.cmdline.take() {
        Some(user) => format!("{opts} {user}"),
        None => opts,
    });
    vm.command = None;
    vm.vsock.get_or_insert(VsockConfig {
        cid: DEFAULT_GUEST_CID,
        uds: None,
    });
    vm
}

/// The template spec of the container VM `vm`, or why it has none.
pub fn template_spec(
    vm: &VmConfig,
    mode: RootMode,
) -> Result<template::TemplateSpec, &'static str> {
    if !vm.shares.is_empty() {
        return Err("virtio-fs shares (--volume, --rootfs-mode virtiofs)");
    }
    let [agent_disk, root] = vm.disks.as_slice() else {
        return Err("extra disks (--disk)");
    };
    let reason = if !vm.nets.is_empty() {
        Some("network interfaces (--net)")
    } else if vm.entropy.is_some() {
        Some("a virtio-rng device (--entropy)")
    } else if vm.guest_profile.is_some() {
        Some("the guest profiler")
    } else if vm.track_dirty_pages {
        Some("dirty page tracking")
    } else if agent_disk.rate_limiter.is_some() || root.rate_limiter.is_some() {
        Some("drive rate limits")
    } else {
        None
    };
    if let Some(r) = reason {
        return Err(r);
    }
    Ok(template::TemplateSpec {
        kernel: vm.kernel.clone(),
        agent_disk: agent_disk.path.clone(),
        cpus: vm.cpus,
        memory_mib: vm.memory_mib,
        cmdline: format!(
            "{} {}",
            vm.cmdline.as_deref().unwrap_or_default(),
            agent::CMDLINE_TEMPLATE
        ),
        cid: vm.vsock.as_ref().map_or(DEFAULT_GUEST_CID, |v| v.cid),
        root_read_only: mode == RootMode::Overlay,
    })
}

/// What a container run does about its template.
enum TemplateUse {
    /// Restore it.
    Restore(template::Template),
    /// Boot (no template for this run, or the cache cannot hold one: logged).
    Boot,
    /// The template's VM failed the way the container's would: report that.
    Failed(RunOutcome),
}

/// The template to restore for `vm`, built if needed.
fn use_template(vm: &VmConfig, mode: RootMode) -> TemplateUse {
    let spec = match template_spec(vm, mode) {
        Ok(spec) => spec,
        Err(why) => {
            log::info!("template: not used with {why}: booting");
            return TemplateUse::Boot;
        }
    };
    match template::ensure(&spec, true) {
        Ok((t, _)) => {
            log::info!("template {}: restoring it", t.info.key);
            TemplateUse::Restore(t)
        }
        // A guest that failed in the template's boot fails the same way in a cold boot:
        // report it at once rather than boot again.
        Err(template::TemplateError::GuestEnded { reason, console }) => {
            TemplateUse::Failed(RunOutcome {
                reason,
                console_tail: console,
            })
        }
        Err(e) => {
            log::warn!(
                "cannot use a template ({}): booting instead",
                crate::control::error_chain(&e)
            );
            TemplateUse::Boot
        }
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
