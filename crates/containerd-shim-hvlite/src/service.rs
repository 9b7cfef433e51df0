//! The shim v2 task service: containerd's task calls mapped onto hvlite's OCI runtime
//! library (`hvlite::oci`): Create checks the bundle and starts the container's monitor
//! (the VMM, a child of the shim) through `commands::create_with`, which boots the VM and
//! holds the process back; Start, Kill, Pause and Resume go to the monitor's control
//! socket; the monitor's exit is the task's exit.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api;
use containerd_shim::event::Event;
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, TtrpcContext, TtrpcResult};
use hvlite::oci::commands::{self, Globals};
use hvlite::oci::state::StateRoot;
use hvlite::oci::{OciError, control};

use crate::console::{self, ConsoleSocket};
use crate::error::ShimError;
use crate::tasks::{Phase, Task, Tasks};
use crate::{MONITOR_FLAG, options, rootfs, stats, stdio};

/// What Create started.
struct Booted {
    pid: i32,
    rootfs: Option<PathBuf>,
    console: Option<Arc<File>>,
}

/// The OCI runtime's state root inside a task's bundle.
pub const STATE_DIR: &str = ".hvlite";

/// The task service of one shim process.
#[derive(Clone)]
pub struct TaskService {
    pub namespace: String,
    pub exit: Arc<ExitSignal>,
    pub tasks: Arc<Tasks>,
    pub publisher: Arc<RemotePublisher>,
}

pub(crate) fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// The state root of the task whose bundle is `bundle`.
pub fn state_root(bundle: &Path) -> StateRoot {
    StateRoot::new(bundle.join(STATE_DIR))
}

/// The arguments that make this binary run a monitor (see `main`).
fn globals(root: &StateRoot, opts: &options::Options) -> Globals {
    let mut args = vec![MONITOR_FLAG.to_string(), root.dir.display().to_string()];
    if let Some(k) = &opts.kernel {
        args.extend(["--kernel".into(), k.display().to_string()]);
    }
    Globals {
        monitor_args: args,
        kernel: opts.kernel.clone(),
        agent: opts.agent.clone(),
    }
}

/// Removes what a task left in its bundle: the mounted rootfs and the state root.
pub fn clean_bundle(bundle: &Path, rootfs: Option<&Path>) {
    if let Some(r) = rootfs {
        rootfs::unmount(r);
    }
    let dir = bundle.join(STATE_DIR);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("cannot remove {}: {e}", dir.display());
    }
}

impl TaskService {
    /// Starts the thread that turns monitor exits (reaped by the shim crate's SIGCHLD
    /// handler) into task exits and TaskExit events.
    pub fn watch_exits(&self) -> Result<(), containerd_shim::Error> {
        let sub = containerd_shim::monitor::monitor_subscribe(Topic::Pid)?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("exits".into())
            .spawn(move || {
                for ev in sub.rx.iter() {
                    if let Subject::Pid(pid) = ev.subject
                        && let Some(t) = me.tasks.exited(pid, ev.exit_code, now())
                    {
                        me.publish_exit(&t);
                    }
                }
            })
            .map_err(|e| containerd_shim::Error::Other(format!("exit watcher: {e}")))?;
        Ok(())
    }

    pub(crate) fn publish(&self, topic: &str, event: Box<dyn Event>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
        {
            log::warn!("cannot publish {topic}: {e}");
        }
    }

    fn publish_exit(&self, t: &Task) {
        let Some(exit) = &t.exit else { return };
        log::info!("task {} exited with {}", t.id, exit.status);
        let ev = TaskExit {
            container_id: t.id.clone(),
            id: t.id.clone(),
            pid: t.pid as u32,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev));
    }

    fn do_create(&self, req: &api::CreateTaskRequest) -> Result<i32, ShimError> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "checkpoint/restore of a task".into(),
            ));
        }
        let opts = options::parse(req.options.as_ref())?;
        let bundle = PathBuf::from(&req.bundle);
        let root = state_root(&bundle);
        self.tasks.reserve(Task {
            id: req.id.clone(),
            bundle: bundle.clone(),
            root: root.clone(),
            rootfs: None,
            pid: 0,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            phase: Phase::Creating,
            exit: None,
            execs: Default::default(),
            console: None,
        })?;
        let result = self.boot(req, &bundle, &root, &opts);
        match result {
            Ok(Booted {
                pid,
                rootfs,
                console,
            }) => {
                self.tasks.update(&req.id, |t| {
                    t.rootfs = rootfs;
                    t.console = console;
                    Ok(())
                })?;
                if let Some(exit) = self.tasks.created(&req.id, pid, now())? {
                    log::warn!("task {} stopped at once ({})", req.id, exit.status);
                }
                Ok(pid)
            }
            Err(e) => {
                self.tasks.remove(&req.id);
                Err(e)
            }
        }
    }

    /// Mounts the rootfs, opens the stdio and starts the monitor; undoes all of it on error.
    fn boot(
        &self,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        root: &StateRoot,
        opts: &options::Options,
    ) -> Result<Booted, ShimError> {
        // The bundle is checked before anything is mounted (root.path may not exist yet
        // when containerd gives mounts, so that check comes after the mount).
        let config = bundle.join("config.json");
        if !config.is_file() {
            return Err(OciError::Bundle(hvlite::oci::bundle::BundleError::NoConfig(
                bundle.into(),
            ))
            .into());
        }
        let mounted = rootfs::mount(bundle, &req.rootfs)?;
        let started = self.start_monitor(req, bundle, root, opts);
        match started {
            Ok((pid, console)) => Ok(Booted {
                pid,
                rootfs: mounted,
                console,
            }),
            Err(e) => {
                clean_bundle(bundle, mounted.as_deref());
                Err(e)
            }
        }
    }

    /// Starts the monitor with the task's stdio (with a terminal: the pty master it hands
    /// over, relayed to the FIFOs). The monitor is reaped by the shim crate's SIGCHLD
    /// handler; its exit arrives through `watch_exits`.
    fn start_monitor(
        &self,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        root: &StateRoot,
        opts: &options::Options,
    ) -> Result<(i32, Option<Arc<File>>), ShimError> {
        let socket = req.terminal.then(ConsoleSocket::new).transpose()?;
        let io = if socket.is_some() {
            stdio::open("", "", &req.stderr)?
        } else {
            stdio::open(&req.stdin, &req.stdout, &req.stderr)?
        };
        let child = commands::create_with(
            root,
            &globals(root, opts),
            &req.id,
            bundle,
            None,
            socket.as_ref().map(|s| s.path.as_path()),
            Some(io),
        )?;
        let pid = child.id() as i32;
        let Some(socket) = socket else {
            return Ok((pid, None));
        };
        let relayed = socket.receive().and_then(|master| {
            let io = stdio::open_files(&req.stdin, &req.stdout, "")?;
            console::relay(&master, io.stdin, io.stdout)?;
            Ok(master)
        });
        match relayed {
            Ok(master) => Ok((pid, Some(Arc::new(master)))),
            Err(e) => {
                let _ = commands::delete(root, &req.id, true);
                Err(e)
            }
        }
    }

    fn do_kill(&self, req: &api::KillRequest) -> Result<(), ShimError> {
        let sig = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| ShimError::Invalid(format!("bad signal {}", req.signal)))?;
        if !req.exec_id.is_empty() {
            return self.kill_exec(req, sig);
        }
        let t = self.tasks.get(&req.id)?;
        match t.phase {
            Phase::Stopped => Err(ShimError::NoProcess {
                id: req.id.clone(),
                exec_id: String::new(),
                why: "the process has already exited",
            }),
            Phase::Creating => Err(ShimError::Precondition(format!(
                "task {} is still being created",
                req.id
            ))),
            // A paused VM cannot take a signal to its process; SIGKILL ends the VM.
            Phase::Paused if sig != libc::SIGKILL => Err(ShimError::Precondition(format!(
                "task {} is paused: resume it first (SIGKILL works while paused)",
                req.id
            ))),
            _ => Ok(commands::kill(&t.root, &t.id, sig, req.all)?),
        }
    }

    fn do_delete(&self, req: &api::DeleteRequest) -> Result<api::DeleteResponse, ShimError> {
        if !req.exec_id.is_empty() {
            return self.delete_exec(&req.id, &req.exec_id);
        }
        let t = self.tasks.get(&req.id)?;
        match t.phase {
            Phase::Running | Phase::Paused => {
                return Err(ShimError::Precondition(format!(
                    "task {} is {}: kill it first (ctr task rm -f)",
                    req.id,
                    if t.phase == Phase::Running {
                        "running"
                    } else {
                        "paused"
                    }
                )));
            }
            Phase::Creating => {
                return Err(ShimError::Precondition(format!(
                    "task {} is still being created",
                    req.id
                )));
            }
            Phase::Created | Phase::Stopped => {}
        }
        // A created task's monitor is killed (and waited for) by the forced delete.
        commands::delete(&t.root, &t.id, true)?;
        let exit = if t.phase == Phase::Created {
            self.tasks.wait(&req.id)?
        } else {
            t.exit.clone().unwrap_or(crate::tasks::Exit {
                status: 137,
                at: now(),
            })
        };
        clean_bundle(&t.bundle, t.rootfs.as_deref());
        self.tasks.remove(&req.id);
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: t.id.clone(),
                id: t.id.clone(),
                pid: t.pid as u32,
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at.clone()),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid: t.pid as u32,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn pause_or_resume(&self, id: &str, pause: bool) -> Result<(), ShimError> {
        let t = self.tasks.get(id)?;
        let (from, to, word) = if pause {
            (Phase::Running, Phase::Paused, "pause")
        } else {
            (Phase::Paused, Phase::Running, "resume")
        };
        if t.phase != from {
            return Err(ShimError::Precondition(format!(
                "task {id} is {:?}, not {from:?}: cannot {word} it",
                t.phase
            )));
        }
        control::request(&t.root.container_dir(id), word).map_err(OciError::from)?;
        self.tasks.update(id, |t| {
            if t.phase == from {
                t.phase = to;
            }
            Ok(())
        })?;
        if pause {
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: id.into(),
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: id.into(),
                    ..Default::default()
                }),
            );
        }
        Ok(())
    }

    fn live_pid(&self, id: &str) -> Result<i32, ShimError> {
        let t = self.tasks.get(id)?;
        if t.phase == Phase::Stopped || t.pid <= 0 {
            return Err(ShimError::NoProcess {
                id: id.into(),
                exec_id: String::new(),
                why: "the task is not running",
            });
        }
        Ok(t.pid)
    }
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        let pid = self.do_create(&req)?;
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if !req.exec_id.is_empty() {
            let pid = self.start_exec(&req.id, &req.exec_id)?;
            return Ok(api::StartResponse {
                pid,
                ..Default::default()
            });
        }
        let t = self.tasks.get(&req.id)?;
        if t.phase != Phase::Created {
            return Err(ShimError::Precondition(format!(
                "task {} is {:?}, not created: cannot start it",
                req.id, t.phase
            ))
            .into());
        }
        commands::start(&t.root, &t.id).map_err(ShimError::from)?;
        self.tasks.update(&req.id, |t| {
            if t.phase == Phase::Created {
                t.phase = Phase::Running;
            }
            Ok(())
        })?;
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid: t.pid as u32,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid: t.pid as u32,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        if !req.exec_id.is_empty() {
            return Ok(self.exec_state(&req.id, &req.exec_id)?);
        }
        let t = self.tasks.get(&req.id)?;
        let (exit_status, exited_at) = match &t.exit {
            Some(e) => (e.status, MessageField::some(e.at.clone())),
            None => (0, MessageField::none()),
        };
        Ok(api::StateResponse {
            id: t.id.clone(),
            bundle: t.bundle.display().to_string(),
            pid: t.pid as u32,
            status: t.phase.status().into(),
            stdin: t.stdin.clone(),
            stdout: t.stdout.clone(),
            stderr: t.stderr.clone(),
            terminal: false,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        log::info!("kill {} signal {}", req.id, req.signal);
        self.do_kill(&req)?;
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        log::info!("delete {}", req.id);
        Ok(self.do_delete(&req)?)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let exit = self.tasks.wait_process(&req.id, &req.exec_id)?;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        // The host sees one process per container: the VMM; the guest's processes have no
        // host pids.
        let pid = self.live_pid(&req.id)?;
        Ok(api::PidsResponse {
            processes: vec![containerd_shim::protos::types::task::ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.pause_or_resume(&req.id, true)?;
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.pause_or_resume(&req.id, false)?;
        Ok(api::Empty::default())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let pid = self.live_pid(&req.id)?;
        let any = stats::to_any(&stats::read(pid)?)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.tasks.get(&req.id).map(|t| t.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if req.now || self.tasks.is_empty() {
            log::info!("shutdown");
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        if !req.exec_id.is_empty() {
            if req.stdin {
                self.close_exec_stdin(&req.id, &req.exec_id)?;
            }
            return Ok(api::Empty::default());
        }
        self.tasks.get(&req.id)?;
        // The shim keeps no end of the task's stdin FIFO (the monitor has it): the process
        // sees end-of-file when containerd closes its writer; nothing more to close here.
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        if !req.exec_id.is_empty() {
            return Ok(self.resize_exec(&req).map(|()| api::Empty::default())?);
        }
        let t = self.tasks.get(&req.id)?;
        let master = t
            .console
            .ok_or_else(|| ShimError::Precondition(format!("task {} has no terminal", req.id)))?;
        console::resize(&master, req.height, req.width)?;
        Ok(api::Empty::default())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        log::info!("exec {} in {}", req.exec_id, req.id);
        self.do_exec(&req)?;
        Ok(api::Empty::default())
    }
}
