//! The monitor: the detached host process that `create` starts for a container. It is the
//! VMM (its pid is the container's pid for the engine), keeps the engine's stdio, boots the
//! VM, has the agent come up without starting the process, tells `create` when it is ready,
//! starts the process on `start` (control socket) and exits with the process's status.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::config::{VmConfig, VsockConfig};
use crate::container::rootfs::{self, PreparedRoot, RootMode};
use crate::container::session::Outputs;
use crate::container::session::StartGate;
use crate::container::spec::ProcessOptions;
use crate::container::{self, ContainerConfig, RunHooks, paths};
use crate::exit::ExitReason;
use crate::seccomp::{self, ThreadKind};
use crate::vmm::control::VmControl;

use super::exec::VSOCK_SOCKET;
use super::state::{self, StateRoot, Status, short_socket_path};
use super::{OciError, bundle, cgroup, console, control, files};

/// The private root image (only when files are bind-mounted).
pub const PRIVATE_IMAGE: &str = "root.ext4";

/// What the monitor is told by `create`.
pub struct MonitorOptions {
    pub root: StateRoot,
    pub id: String,
    /// `--kernel` (else `$HVLITE_KERNEL` or the installed one).
    pub kernel: Option<PathBuf>,
    /// Where to say `ok` or `error: ...` once ready (the `create` process).
    pub ready: Option<UnixStream>,
    /// `--console-socket` of `create`, for a process with a terminal.
    pub console_socket: Option<PathBuf>,
}

/// Runs the container; returns the exit status of the monitor process. The monitor's
/// threads run under seccomp filters as hvlite's do (docs/security.md): the VM's own
/// kinds, and [`ThreadKind::Monitor`] for the main thread and the monitor's threads.
pub fn run(opts: MonitorOptions) -> u8 {
    if let Err(e) = seccomp::configure(seccomp::SeccompLevel::Strict) {
        log::error!("{e}");
        return 125;
    }
    seccomp::set_main_kind(ThreadKind::Monitor);
    let ready = Arc::new(Mutex::new(opts.ready));
    let say = {
        let ready = Arc::clone(&ready);
        move |msg: &str| {
            if let Some(mut s) = ready.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = s.write_all(format!("{msg}\n").as_bytes());
            }
        }
    };
    let (root, id) = (opts.root.clone(), opts.id.clone());
    let status = match boot(
        opts.root,
        opts.id,
        opts.kernel,
        opts.console_socket,
        say.clone(),
    ) {
        Ok(ExitReason::GuestStatus(s)) => s,
        Ok(other) => {
            let msg = match other {
                ExitReason::Fatal(m) => m,
                _ => "the guest stopped before its agent reported the process's exit status".into(),
            };
            log::error!("{msg}");
            say(&format!("error: {msg}"));
            125
        }
        Err(e) => {
            log::error!("{e}");
            say(&format!("error: {e}"));
            125
        }
    };
    if let Ok(mut st) = root.load(&id) {
        st.status = Status::Stopped;
        let _ = root.save(&st);
    }
    status
}

fn boot(
    root: StateRoot,
    id: String,
    kernel: Option<PathBuf>,
    console_socket: Option<PathBuf>,
    say: impl Fn(&str) + Send + Sync + Clone + 'static,
) -> Result<ExitReason, OciError> {
    let mut st = root.load(&id)?;
    let bundle = bundle::load(&st.bundle)?;
    let dir = root.container_dir(&id);
    let prepared = rootfs::prepare(&bundle.root).map_err(container::ContainerError::from)?;
    let prepared = if bundle.files.is_empty() {
        prepared
    } else {
        let private = dir.join(PRIVATE_IMAGE);
        files::private_image(&prepared.image, &private, &bundle.files)?;
        PreparedRoot {
            image: private,
            mode: RootMode::Overlay,
            ..prepared
        }
    };
    let kernel = match kernel {
        Some(k) => k,
        None => paths::default_kernel().map_err(container::ContainerError::from)?,
    };
    let mut vm = VmConfig::new(kernel);
    let pvm = crate::host::HostKind::detect().is_pvm();
    // Two vCPUs on PVM hosts: see the README's note on the host defect.
    vm.cpus = bundle.vcpus.unwrap_or(if pvm { 2 } else { 1 });
    if let Some(m) = bundle.memory_mib {
        vm.memory_mib = m;
    }
    // The TAP `create` joined to the engine's interface (this process runs in its netns).
    if let Some(net) = &st.network {
        vm.nets.push(net.nic()?);
        vm.cmdline = Some(net.kernel_option());
    }
    // `exec` reaches the agent through the VM's vsock socket; the (possibly shortened) path
    // must stay valid until the VMM has bound it.
    let vsock = short_socket_path(&dir, VSOCK_SOCKET)
        .map_err(|e| OciError::Io(dir.join(VSOCK_SOCKET), e))?;
    vm.vsock = Some(VsockConfig {
        cid: container::DEFAULT_GUEST_CID,
        uds: Some(vsock.path.clone()),
    });
    // A terminal: the engine gets the host pty's master now, the relay starts with the
    // session.
    let terminal = match (&console_socket, bundle.process.terminal) {
        (Some(socket), true) => {
            let size = bundle.process.console_size.unwrap_or_default();
            Some((console::hand_over(socket, size)?, size))
        }
        (None, true) => return Err(console::ConsoleError::NoSocket.into()),
        _ => None,
    };
    let outputs = match &terminal {
        Some((slave, _)) => {
            let clone = || {
                slave
                    .try_clone()
                    .map_err(|e| OciError::Io("host pty".into(), e))
            };
            Some(Outputs {
                stdout: Box::new(clone()?),
                stderr: Box::new(std::io::sink()),
                stdin: None,
            })
        }
        None => None,
    };
    let listener = control::bind(&dir).map_err(|e| OciError::Io(dir.join(control::SOCKET), e))?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let vm_control = Arc::new(VmControl::new());
    let me = std::process::id() as i32;
    st.pid = me;
    st.monitor_start_time = state::process_start_time(me).unwrap_or(0);
    if let Some(cg) = &bundle.cgroups_path {
        let dirs = cgroup::join_host(cg, me as u32)?;
        log::debug!("the VMM joined the cgroups {dirs:?}");
    }
    root.save(&st)?;
    {
        let (root, mut st, say) = (root.clone(), st.clone(), say.clone());
        std::thread::Builder::new()
            .name("oci-ready".into())
            .spawn(move || {
                seccomp::install_or_exit(ThreadKind::Monitor);
                if ready_rx.recv().is_ok() {
                    st.status = Status::Created;
                    match root.save(&st) {
                        Ok(()) => say("ok"),
                        Err(e) => say(&format!("error: {e}")),
                    }
                }
            })
            .map_err(|e| OciError::Io("thread".into(), e))?;
    }
    let on_session = {
        let root = root.clone();
        let vm_control = Arc::clone(&vm_control);
        move |handle: container::SessionHandle| {
            if let Some((slave, size)) = terminal {
                let (input, eof, resize) = (
                    Arc::clone(&handle.shared),
                    Arc::clone(&handle.shared),
                    Arc::clone(&handle.shared),
                );
                let relay = console::relay(
                    &slave,
                    size,
                    move |d| input.send_stdin(d),
                    move || eof.close_stdin(),
                    move |s| resize.resize(s),
                );
                if let Err(e) = relay {
                    log::error!("cannot relay the terminal: {e}");
                }
            }
            let server = control::Server {
                handle,
                go: Mutex::new(Some(go_tx)),
                on_start: Box::new(move || {
                    let mut st = st.clone();
                    st.status = Status::Running;
                    if let Err(e) = root.save(&st) {
                        log::warn!("{e}");
                    }
                }),
                vm: vm_control,
            };
            if let Err(e) = server.serve(listener) {
                log::error!("cannot serve the control socket: {e}");
            }
        }
    };
    let cfg = ContainerConfig {
        vm,
        rootfs: bundle.root.clone(),
        process: ProcessOptions {
            args: bundle.process.args.clone(),
            env: Vec::new(),
            workdir: None,
            user: None,
            stdin: true,
        },
        console: false,
        volumes: bundle.volumes.clone(),
        rootfs_mode: Default::default(),
        template: true,
    };
    let outcome = container::run_with(
        cfg,
        RunHooks {
            spec: Some(bundle.process),
            root: Some(prepared),
            gate: Some(StartGate {
                ready: ready_tx,
                go: go_rx,
            }),
            on_session: Some(Box::new(on_session)),
            outputs,
            control: Some(vm_control),
        },
    )?;
    if !matches!(outcome.reason, ExitReason::GuestStatus(_)) && !outcome.console_tail.is_empty() {
        log::error!(
            "last guest console lines:\n{}",
            outcome.console_tail.trim_end()
        );
    }
    Ok(outcome.reason)
}
