//! Exec: further processes in a task's VM, through the guest agent's exec port
//! (`hvlite::oci::exec::start`, `hvlite::container::exec`). The shim relays each one's
//! stdio between containerd's FIFOs and the agent session, and turns its end into a
//! TaskExit event with its exec id.

use std::io::Read;

use containerd_shim::api;
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted, TaskExit};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use hvlite::agent::protocol::{MAX_CHUNK, ProcessSpec, WindowSize};
use hvlite::container::exec::{ExecSession, ProcessControl};
use hvlite::oci::{OciError, bundle};

use crate::error::ShimError;
use crate::service::{TaskService, now};
use crate::stdio;
use crate::tasks::{ExecProcess, Exit, Phase};

/// The status of an exec'd process whose VM went away under it (as if SIGKILLed).
const VM_GONE: u32 = 128 + libc::SIGKILL as u32;

/// The process of an ExecProcessRequest: its `spec` is an OCI `process` as JSON.
pub fn process_spec(req: &api::ExecProcessRequest) -> Result<ProcessSpec, ShimError> {
    let any = req
        .spec
        .as_ref()
        .ok_or_else(|| ShimError::Invalid("exec without a process spec".into()))?;
    let process: oci_spec::runtime::Process = serde_json::from_slice(&any.value).map_err(|e| {
        ShimError::Invalid(format!("exec {}: not an OCI process: {e}", req.exec_id))
    })?;
    let mut spec = bundle::process_spec(&process).map_err(OciError::from)?;
    spec.terminal = req.terminal;
    spec.stdin = !req.stdin.is_empty();
    spec.validate()
        .map_err(|e| ShimError::Invalid(format!("exec {}: {e}", req.exec_id)))?;
    Ok(spec)
}

impl TaskService {
    /// Exec: records the process (it starts with Start).
    pub(crate) fn do_exec(&self, req: &api::ExecProcessRequest) -> Result<(), ShimError> {
        let t = self.tasks.get(&req.id)?;
        if t.phase != Phase::Running {
            return Err(ShimError::Precondition(format!(
                "task {} is {:?}, not running: cannot exec in it",
                req.id, t.phase
            )));
        }
        let spec = process_spec(req)?;
        self.tasks.add_exec(
            &req.id,
            &req.exec_id,
            ExecProcess {
                spec,
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                pid: 0,
                phase: Phase::Created,
                exit: None,
                control: None,
            },
        )?;
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    /// Start of an exec'd process: the agent starts it; threads relay its stdio and
    /// record its end. Returns its pid in the guest.
    pub(crate) fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let t = self.tasks.get(id)?;
        let p = self.tasks.get_exec(id, exec_id)?;
        if p.phase != Phase::Created {
            return Err(ShimError::Precondition(format!(
                "exec {exec_id} of task {id} was already started"
            )));
        }
        let io = stdio::open_files(&p.stdin, &p.stdout, &p.stderr)?;
        let session = hvlite::oci::exec::start(&t.root, id, &p.spec)?;
        let (pid, control) = (session.pid(), session.control());
        self.tasks.update_exec(id, exec_id, |p| {
            p.pid = pid;
            p.phase = Phase::Running;
            p.control = Some(control.clone());
            Ok(())
        })?;
        if let Some(stdin) = io.stdin {
            spawn("exec-stdin", move || pump_stdin(stdin, control))?;
        }
        let (me, id, exec_id) = (self.clone(), id.to_string(), exec_id.to_string());
        spawn("exec-wait", move || {
            me.wait_exec_session(session, &id, &exec_id, io.stdout, io.stderr)
        })?;
        Ok(pid)
    }

    fn wait_exec_session(
        &self,
        session: ExecSession,
        id: &str,
        exec_id: &str,
        mut stdout: Box<dyn std::io::Write + Send>,
        mut stderr: Box<dyn std::io::Write + Send>,
    ) {
        let pid = session.pid();
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id.into(),
                exec_id: exec_id.into(),
                pid,
                ..Default::default()
            }),
        );
        let status = match session.wait(&mut stdout, &mut stderr) {
            Ok(end) => u32::from(end.status()),
            Err(e) => {
                log::warn!("exec {exec_id} of task {id}: {e}");
                VM_GONE
            }
        };
        drop((stdout, stderr));
        let at = now();
        let recorded = self.tasks.update_exec(id, exec_id, |p| {
            p.phase = Phase::Stopped;
            p.exit = Some(Exit {
                status,
                at: at.clone(),
            });
            Ok(())
        });
        if recorded.is_ok() {
            self.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id.into(),
                    id: exec_id.into(),
                    pid,
                    exit_status: status,
                    exited_at: MessageField::some(at),
                    ..Default::default()
                }),
            );
        }
    }

    /// The running exec process's control.
    pub(crate) fn exec_control(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<ProcessControl, ShimError> {
        let p = self.tasks.get_exec(id, exec_id)?;
        match (p.phase, p.control) {
            (Phase::Running, Some(c)) => Ok(c),
            _ => Err(ShimError::NoProcess {
                id: id.into(),
                exec_id: exec_id.into(),
                why: "the process is not running",
            }),
        }
    }

    /// Kill of an exec'd process (`all`: every process of the container).
    pub(crate) fn kill_exec(&self, req: &api::KillRequest, sig: i32) -> Result<(), ShimError> {
        let c = self.exec_control(&req.id, &req.exec_id)?;
        let sent = if req.all {
            c.signal_all(sig)
        } else {
            c.signal(sig)
        };
        sent.map_err(|e| ShimError::Precondition(format!("exec {}: {e}", req.exec_id)))
    }

    /// ResizePty of an exec'd process.
    pub(crate) fn resize_exec(&self, req: &api::ResizePtyRequest) -> Result<(), ShimError> {
        let c = self.exec_control(&req.id, &req.exec_id)?;
        let size = WindowSize {
            height: u16::try_from(req.height).unwrap_or(u16::MAX),
            width: u16::try_from(req.width).unwrap_or(u16::MAX),
        };
        c.resize(size)
            .map_err(|e| ShimError::Precondition(format!("exec {}: {e}", req.exec_id)))
    }

    /// CloseIO of an exec'd process: its stdin ends.
    pub(crate) fn close_exec_stdin(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        // The stdin relay closes it too at the FIFO's end; a second close is ignored.
        let c = self.exec_control(id, exec_id)?;
        c.close_stdin()
            .map_err(|e| ShimError::Precondition(format!("exec {exec_id}: {e}")))
    }

    /// Delete of an exec'd process: refused while it runs.
    pub(crate) fn delete_exec(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<api::DeleteResponse, ShimError> {
        let p = self.tasks.get_exec(id, exec_id)?;
        if p.phase == Phase::Running {
            return Err(ShimError::Precondition(format!(
                "exec {exec_id} of task {id} is running: kill it first"
            )));
        }
        self.tasks.remove_exec(id, exec_id)?;
        let exit = p.exit.unwrap_or(Exit {
            status: 0,
            at: now(),
        });
        Ok(api::DeleteResponse {
            pid: p.pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    /// State of an exec'd process.
    pub(crate) fn exec_state(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<api::StateResponse, ShimError> {
        let t = self.tasks.get(id)?;
        let p = self.tasks.get_exec(id, exec_id)?;
        let (exit_status, exited_at) = match &p.exit {
            Some(e) => (e.status, MessageField::some(e.at.clone())),
            None => (0, MessageField::none()),
        };
        Ok(api::StateResponse {
            id: id.into(),
            exec_id: exec_id.into(),
            bundle: t.bundle.display().to_string(),
            pid: p.pid,
            status: p.phase.status().into(),
            stdin: p.stdin,
            stdout: p.stdout,
            stderr: p.stderr,
            terminal: p.spec.terminal,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), ShimError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| ShimError::Io(name.into(), e))
}

/// Copies the stdin FIFO to the process until the FIFO's end, then closes its stdin.
fn pump_stdin(path: String, control: ProcessControl) {
    let mut fifo = match stdio::open_stdin_blocking(&path) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("exec stdin {path}: {e}");
            let _ = control.close_stdin();
            return;
        }
    };
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match fifo.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if control.write_stdin(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = control.close_stdin();
}
