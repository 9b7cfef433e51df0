//! The shim's tasks (containers) and their lifecycle: Created → Running ⇄ Paused →
//! Stopped, with the exit status the monitor process ends with (the process's status,
//! 128+N for signal N, 137 when the VM was killed).

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use hvlite::agent::protocol::ProcessSpec;
use hvlite::container::exec::ProcessControl;
use hvlite::oci::state::StateRoot;

use crate::error::ShimError;

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Create is booting its VM.
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Phase {
    /// containerd's status.
    pub fn status(self) -> Status {
        match self {
            Phase::Creating => Status::UNKNOWN,
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Paused => Status::PAUSED,
            Phase::Stopped => Status::STOPPED,
        }
    }
}

/// How a task's process ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

/// One task.
#[derive(Clone, Debug)]
pub struct Task {
    pub id: String,
    pub bundle: PathBuf,
    /// The OCI runtime's state root for this task (inside the bundle).
    pub root: StateRoot,
    /// Where containerd's rootfs mounts were mounted (unmounted on delete).
    pub rootfs: Option<PathBuf>,
    /// The monitor (VMM) process; 0 while creating.
    pub pid: i32,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub phase: Phase,
    pub exit: Option<Exit>,
    /// Further processes (Exec), by exec id.
    pub execs: HashMap<String, ExecProcess>,
    /// The master of the task's terminal (`terminal: true`).
    pub console: Option<Arc<File>>,
}

/// A further process in a task's VM (containerd's Exec): it runs through the guest
/// agent's exec port; `pid` is its pid in the guest.
#[derive(Clone, Debug)]
pub struct ExecProcess {
    pub spec: ProcessSpec,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub pid: u32,
    /// Created, Running or Stopped.
    pub phase: Phase,
    pub exit: Option<Exit>,
    /// Signals, stdin, window size (once started).
    pub control: Option<ProcessControl>,
}

/// Process exits seen before their task knew its pid are kept this long (at most).
const EARLY_EXITS: usize = 64;

/// The shim's tasks, shared by the request threads and the exit watcher.
#[derive(Default)]
pub struct Tasks {
    map: Mutex<HashMap<String, Task>>,
    changed: Condvar,
    early: Mutex<HashMap<i32, i32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tasks {
    /// Reserves `task.id` (its phase is Creating); refuses a second task with that id.
    pub fn reserve(&self, task: Task) -> Result<(), ShimError> {
        let mut map = lock(&self.map);
        if map.contains_key(&task.id) {
            return Err(ShimError::Exists(task.id));
        }
        map.insert(task.id.clone(), task);
        Ok(())
    }

    /// Forgets task `id` (a failed create, or a delete).
    pub fn remove(&self, id: &str) -> Option<Task> {
        let t = lock(&self.map).remove(id);
        self.changed.notify_all();
        t
    }

    /// A copy of task `id`.
    pub fn get(&self, id: &str) -> Result<Task, ShimError> {
        lock(&self.map)
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(id.into()))
    }

    /// Whether the shim has no tasks left.
    pub fn is_empty(&self) -> bool {
        lock(&self.map).is_empty()
    }

    /// Changes task `id` with `f`.
    pub fn update<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Task) -> Result<R, ShimError>,
    ) -> Result<R, ShimError> {
        let mut map = lock(&self.map);
        let t = map
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(id.into()))?;
        let r = f(t);
        self.changed.notify_all();
        r
    }

    /// The created task's monitor is `pid`: the task is Created, or already Stopped when
    /// the monitor's exit was seen first. Returns the exit in that case.
    pub fn created(&self, id: &str, pid: i32, at: Timestamp) -> Result<Option<Exit>, ShimError> {
        let early = lock(&self.early).remove(&pid);
        self.update(id, |t| {
            t.pid = pid;
            t.phase = Phase::Created;
            if let Some(code) = early {
                t.phase = Phase::Stopped;
                t.exit = Some(Exit {
                    status: code as u32,
                    at,
                });
            }
            Ok(t.exit.clone())
        })
    }

    /// Process `pid` ended with `code`: returns the task it was the monitor of, now
    /// Stopped (None: not a task's, or already recorded).
    pub fn exited(&self, pid: i32, code: i32, at: Timestamp) -> Option<Task> {
        let mut map = lock(&self.map);
        let Some(t) = map.values_mut().find(|t| t.pid == pid && t.exit.is_none()) else {
            drop(map);
            let mut early = lock(&self.early);
            if early.len() >= EARLY_EXITS {
                early.clear();
            }
            early.insert(pid, code);
            return None;
        };
        t.phase = Phase::Stopped;
        t.exit = Some(Exit {
            status: code as u32,
            at,
        });
        let t = t.clone();
        drop(map);
        self.changed.notify_all();
        Some(t)
    }

    /// Blocks until task `id` has exited; returns the exit.
    pub fn wait(&self, id: &str) -> Result<Exit, ShimError> {
        self.wait_process(id, "")
    }

    /// Blocks until process `exec_id` of task `id` (empty: the task's own) has exited.
    pub fn wait_process(&self, id: &str, exec_id: &str) -> Result<Exit, ShimError> {
        let mut map = lock(&self.map);
        loop {
            let t = map.get(id).ok_or_else(|| ShimError::NotFound(id.into()))?;
            let exit = if exec_id.is_empty() {
                &t.exit
            } else {
                &t.execs
                    .get(exec_id)
                    .ok_or_else(|| no_exec(id, exec_id))?
                    .exit
            };
            if let Some(e) = exit {
                return Ok(e.clone());
            }
            map = self.changed.wait(map).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Adds exec process `exec_id` to task `id`; refuses a known exec id.
    pub fn add_exec(&self, id: &str, exec_id: &str, p: ExecProcess) -> Result<(), ShimError> {
        self.update(id, |t| {
            if t.execs.contains_key(exec_id) {
                return Err(ShimError::Exists(format!("{id}/{exec_id}")));
            }
            t.execs.insert(exec_id.into(), p);
            Ok(())
        })
    }

    /// Changes exec process `exec_id` of task `id` with `f`.
    pub fn update_exec<R>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut ExecProcess) -> Result<R, ShimError>,
    ) -> Result<R, ShimError> {
        self.update(id, |t| {
            let p = t
                .execs
                .get_mut(exec_id)
                .ok_or_else(|| no_exec(id, exec_id))?;
            f(p)
        })
    }

    /// A copy of exec process `exec_id` of task `id`.
    pub fn get_exec(&self, id: &str, exec_id: &str) -> Result<ExecProcess, ShimError> {
        self.update_exec(id, exec_id, |p| Ok(p.clone()))
    }

    /// Forgets exec process `exec_id` of task `id`.
    pub fn remove_exec(&self, id: &str, exec_id: &str) -> Result<ExecProcess, ShimError> {
        self.update(id, |t| {
            t.execs.remove(exec_id).ok_or_else(|| no_exec(id, exec_id))
        })
    }
}

fn no_exec(id: &str, exec_id: &str) -> ShimError {
    ShimError::NoProcess {
        id: id.into(),
        exec_id: exec_id.into(),
        why: "no such exec process",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn task(id: &str) -> Task {
        Task {
            id: id.into(),
            bundle: "/b".into(),
            root: StateRoot::new("/b/.hvlite".into()),
            rootfs: None,
            pid: 0,
            stdin: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            phase: Phase::Creating,
            exit: None,
            execs: HashMap::new(),
            console: None,
        }
    }

    #[test]
    fn exec_processes_are_kept_per_task_and_waited_for() {
        let tasks = Arc::new(Tasks::default());
        tasks.reserve(task("a")).unwrap();
        let p = ExecProcess {
            spec: ProcessSpec::new(["true"]),
            stdin: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            pid: 0,
            phase: Phase::Created,
            exit: None,
            control: None,
        };
        tasks.add_exec("a", "e1", p.clone()).unwrap();
        assert!(matches!(
            tasks.add_exec("a", "e1", p),
            Err(ShimError::Exists(_))
        ));
        assert!(matches!(
            tasks.get_exec("a", "e2"),
            Err(ShimError::NoProcess { .. })
        ));
        let waiter = {
            let tasks = Arc::clone(&tasks);
            std::thread::spawn(move || tasks.wait_process("a", "e1").unwrap().status)
        };
        tasks
            .update_exec("a", "e1", |p| {
                p.phase = Phase::Stopped;
                p.exit = Some(Exit {
                    status: 7,
                    at: Timestamp::new(),
                });
                Ok(())
            })
            .unwrap();
        assert_eq!(waiter.join().unwrap(), 7);
        assert_eq!(tasks.remove_exec("a", "e1").unwrap().phase, Phase::Stopped);
        assert!(tasks.remove_exec("a", "e1").is_err());
    }

    #[test]
    fn a_second_task_with_the_same_id_is_refused() {
        let tasks = Tasks::default();
        tasks.reserve(task("a")).unwrap();
        assert!(matches!(
            tasks.reserve(task("a")),
            Err(ShimError::Exists(_))
        ));
        assert!(matches!(tasks.get("b"), Err(ShimError::NotFound(_))));
        tasks.remove("a");
        assert!(tasks.is_empty());
    }

    #[test]
    fn exits_wake_waiters_even_when_seen_before_the_pid() {
        let tasks = Arc::new(Tasks::default());
        tasks.reserve(task("a")).unwrap();
        tasks.reserve(task("b")).unwrap();
        // b's monitor (pid 11) ended before create recorded its pid.
        assert!(tasks.exited(11, 125, Timestamp::new()).is_none());
        let e = tasks.created("b", 11, Timestamp::new()).unwrap().unwrap();
        assert_eq!(e.status, 125);
        assert_eq!(tasks.get("b").unwrap().phase, Phase::Stopped);
        assert_eq!(tasks.created("a", 10, Timestamp::new()).unwrap(), None);
        let waiter = {
            let tasks = Arc::clone(&tasks);
            std::thread::spawn(move || tasks.wait("a").unwrap().status)
        };
        let t = tasks.exited(10, 137, Timestamp::new()).unwrap();
        assert_eq!((t.id.as_str(), t.phase), ("a", Phase::Stopped));
        assert_eq!(waiter.join().unwrap(), 137);
        // A second report of the same exit changes nothing.
        assert!(tasks.exited(10, 0, Timestamp::new()).is_none());
        assert_eq!(tasks.wait("a").unwrap().status, 137);
    }
}
