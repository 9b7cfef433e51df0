//! The runtime's state directory: one directory per container under `--root`, holding
//! `state.json` (written atomically), the monitor's control socket and the container's
//! private root image.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The runtime spec version the state JSON follows.
pub const OCI_VERSION: &str = "1.0.2";
/// The state file in a container's directory.
pub const STATE_FILE: &str = "state.json";

/// A container's status, as the runtime spec names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl Status {
    /// The spec's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// What `state.json` holds: the runtime spec's state plus runc's extra fields and the
/// monitor's identity (pid and start time, so a reused pid is not mistaken for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// The monitor (VMM) process; 0 before it exists.
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    /// The monitor's start time (field 22 of /proc/PID/stat).
    #[serde(default, rename = "monitorStartTime")]
    pub monitor_start_time: u64,
    /// `linux.cgroupsPath` the monitor joined (removed by `delete`).
    #[serde(
        default,
        rename = "cgroupsPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub cgroups_path: Option<String>,
    /// The network `create` connected (disconnected by `delete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<super::network::Network>,
}

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error(
        "invalid container id {0:?}: use letters, digits, '-', '_', '.' (not starting with '.')"
    )]
    BadId(String),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0}: corrupt state: {1}")]
    Corrupt(PathBuf, String),
}

/// Checks a container id (it names a directory).
pub fn check_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.into()))
    }
}

/// The state root (`--root`).
#[derive(Clone, Debug)]
pub struct StateRoot {
    pub dir: PathBuf,
}

impl StateRoot {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Creates the directory of a new container `id` (mode 0700).
    pub fn create(&self, id: &str) -> Result<PathBuf, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        check_id(id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.dir)
            .map_err(|e| StateError::Io(self.dir.clone(), e))?;
        let dir = self.container_dir(id);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.into()))
            }
            Err(e) => Err(StateError::Io(dir, e)),
        }
    }

    /// Reads the state of container `id`.
    pub fn load(&self, id: &str) -> Result<State, StateError> {
        check_id(id)?;
        let path = self.container_dir(id).join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.into()));
            }
            Err(e) => return Err(StateError::Io(path, e)),
        };
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt(path, e.to_string()))
    }

    /// Writes `state` atomically (temporary file, fsync, rename).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let dir = self.container_dir(&state.id);
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!(".{STATE_FILE}.{}", std::process::id()));
        let io = |e| StateError::Io(path.clone(), e);
        let mut text = serde_json::to_vec_pretty(state).map_err(|e| io(io::Error::other(e)))?;
        text.push(b'\n');
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)
    }

    /// The ids of every container, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::Io(self.dir.clone(), e)),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join(STATE_FILE).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes container `id`'s directory and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        check_id(id)?;
        let dir = self.container_dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::Io(dir, e)),
        }
    }
}

/// A process's start time (field 22 of /proc/PID/stat), or `None` when it is gone or a
/// zombie (a zombie monitor is a stopped container).
pub fn process_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 is fields[19].
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the monitor recorded in `state` is still alive (same pid, same start time).
pub fn monitor_alive(state: &State) -> bool {
    state.monitor_start_time != 0 && process_start_time(state.pid) == Some(state.monitor_start_time)
}

/// `state` with its status as it really is: stopped when its monitor is gone.
pub fn current(mut state: State) -> State {
    if state.status != Status::Stopped && state.pid != 0 && !monitor_alive(&state) {
        state.status = Status::Stopped;
    }
    state
}

/// The state as the runtime spec shows it (`state` command), with runc's extra fields.
pub fn to_spec_json(state: &State) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": state.oci_version,
        "id": state.id,
        "status": state.status.as_str(),
        "pid": if state.status == Status::Stopped { 0 } else { state.pid },
        "bundle": state.bundle,
        "rootfs": state.rootfs,
        "created": state.created,
        "owner": state.owner,
        "annotations": state.annotations,
    })
}

/// The path of `file` in `dir` usable as a Unix socket address even when `dir` is long:
/// sockaddr_un holds 108 bytes, so long paths go through /proc/self/fd of an open `dir`.
pub struct ShortPath {
    _dir: Option<fs::File>,
    pub path: PathBuf,
}

/// See [`ShortPath`].
pub fn short_socket_path(dir: &Path, file: &str) -> io::Result<ShortPath> {
    use std::os::fd::AsRawFd;
    let full = dir.join(file);
    if full.as_os_str().len() < 100 {
        return Ok(ShortPath {
            _dir: None,
            path: full,
        });
    }
    let d = fs::File::open(dir)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/{file}", d.as_raw_fd()));
    Ok(ShortPath {
        _dir: Some(d),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_start_time_is_field_22_even_with_odd_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some(987654));
        let zombie = "42 (x) Z 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(zombie), None);
        assert_eq!(parse_stat("garbage"), None);
        assert!(process_start_time(std::process::id() as i32).is_some());
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("abc-1_2.x").is_ok());
        for bad in ["", ".x", "a/b", "..", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_round_trips_and_a_dead_monitor_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let root = StateRoot::new(dir.path().join("r"));
        root.create("c1").unwrap();
        assert!(matches!(root.create("c1"), Err(StateError::Exists(_))));
        let state = State {
            oci_version: OCI_VERSION.into(),
            id: "c1".into(),
            status: Status::Running,
            pid: std::process::id() as i32,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: crate::logging::timestamp_now(),
            owner: String::new(),
            annotations: HashMap::new(),
            monitor_start_time: 1,
            cgroups_path: None,
            network: None,
        };
        root.save(&state).unwrap();
        assert_eq!(root.load("c1").unwrap(), state);
        assert_eq!(root.ids().unwrap(), vec!["c1".to_string()]);
        // Start time 1 is not this process's: the monitor counts as gone.
        assert_eq!(current(state.clone()).status, Status::Stopped);
        let json = to_spec_json(&current(state));
        assert_eq!(json["status"], "stopped");
        assert_eq!(json["pid"], 0);
        root.remove("c1").unwrap();
        assert!(matches!(root.load("c1"), Err(StateError::NotFound(_))));
    }

    #[test]
    fn long_socket_paths_go_through_proc() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("x".repeat(120));
        fs::create_dir(&long).unwrap();
        let p = short_socket_path(&long, "control.sock").unwrap();
        assert!(p.path.as_os_str().len() < 100);
        let l = std::os::unix::net::UnixListener::bind(&p.path).unwrap();
        assert!(long.join("control.sock").exists());
        drop(l);
    }
}
