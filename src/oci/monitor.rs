//! The monitor: the detached host process that `create` starts for a container. It is the
//! VMM (its pid is the container's pid for the engine), keeps the engine's stdio, boots the
//! VM, has the agent come up without starting the process, tells `create` when it is ready,
//! starts the process on `start` (control socket) and exits with the process's status.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::config::VmConfig;
use crate::container::rootfs::{self, PreparedRoot, RootMode};
use crate::container::session::StartGate;
use crate::container::spec::ProcessOptions;
use crate::container::{self, ContainerConfig, RunHooks, paths};
use crate::exit::ExitReason;

use super::state::{self, StateRoot, Status};
use super::{OciError, bundle, control, files};

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
}

/// Runs the container; returns the exit status of the monitor process.
pub fn run(opts: MonitorOptions) -> u8 {
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
    let status = match boot(opts.root, opts.id, opts.kernel, say.clone()) {
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
    let listener = control::bind(&dir).map_err(|e| OciError::Io(dir.join(control::SOCKET), e))?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let me = std::process::id() as i32;
    st.pid = me;
    st.monitor_start_time = state::process_start_time(me).unwrap_or(0);
    root.save(&st)?;
    {
        let (root, mut st, say) = (root.clone(), st.clone(), say.clone());
        std::thread::Builder::new()
            .name("oci-ready".into())
            .spawn(move || {
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
        move |handle: container::SessionHandle| {
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
