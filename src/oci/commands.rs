//! The runtime's commands, as runc names them.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::state::{self, OCI_VERSION, State, StateRoot, Status};
use super::{OciError, bundle, control, network};
use crate::container::paths;

/// The fd number the monitor finds its readiness socket at.
pub const READY_FD: i32 = 3;

/// The global options a command needs to start a monitor.
#[derive(Clone, Debug, Default)]
pub struct Globals {
    /// Arguments to repeat before `monitor` (--root, --log, --log-format, --debug, --kernel).
    pub monitor_args: Vec<String>,
    /// `--kernel`.
    pub kernel: Option<PathBuf>,
    /// `--agent` (passed to the monitor as `HVLITE_AGENT`).
    pub agent: Option<PathBuf>,
}

/// The monitor's stdin, stdout and stderr when they are not this process's (the
/// containerd shim gives containerd's FIFOs).
pub struct MonitorIo {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

/// `create`: checks the bundle, starts the monitor and waits until the VM's agent is up.
/// Returns the monitor (a child of this process until it exits).
pub fn create(
    root: &StateRoot,
    globals: &Globals,
    id: &str,
    bundle_dir: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
) -> Result<Child, OciError> {
    create_with(
        root,
        globals,
        id,
        bundle_dir,
        pid_file,
        console_socket,
        None,
    )
}

/// [`create`], with the monitor's stdio given (else this process's).
pub fn create_with(
    root: &StateRoot,
    globals: &Globals,
    id: &str,
    bundle_dir: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
    io: Option<MonitorIo>,
) -> Result<Child, OciError> {
    state::check_id(id)?;
    let bundle = bundle::load(bundle_dir)?;
    let console_socket = match (bundle.terminal, console_socket) {
        (true, None) => return Err(super::console::ConsoleError::NoSocket.into()),
        (true, Some(s)) => Some(std::path::absolute(s).map_err(|e| OciError::Io(s.into(), e))?),
        (false, Some(_)) => {
            log::debug!("--console-socket ignored: the process has no terminal");
            None
        }
        (false, None) => None,
    };
    // Fail before creating anything when the kernel or the agent is missing.
    match &globals.kernel {
        Some(k) if !k.is_file() => {
            return Err(OciError::Refused(format!(
                "--kernel {}: no such file",
                k.display()
            )));
        }
        Some(_) => {}
        None => {
            paths::default_kernel().map_err(crate::container::ContainerError::from)?;
        }
    }
    match &globals.agent {
        Some(a) if !a.is_file() => {
            return Err(OciError::Refused(format!(
                "--agent {}: no such file",
                a.display()
            )));
        }
        Some(_) => {}
        None => {
            paths::agent_binary().map_err(crate::container::ContainerError::from)?;
        }
    }
    // The engine's network namespace is read before anything is created.
    let network = match &bundle.netns {
        Some(ns) => network::discover(ns)?,
        None => None,
    };
    let netns = match &network {
        Some(net) => Some(network::open_netns(&net.netns)?),
        None => None,
    };
    let dir = root.create(id)?;
    let cleanup = |e: OciError| {
        if let Some(Err(e)) = network.as_ref().map(network::disconnect) {
            log::warn!("{e}");
        }
        let _ = root.remove(id);
        e
    };
    let st = State {
        oci_version: OCI_VERSION.into(),
        id: id.into(),
        status: Status::Creating,
        pid: 0,
        bundle: bundle.dir.clone(),
        rootfs: bundle.root.clone(),
        created: crate::logging::timestamp_now(),
        owner: String::new(),
        annotations: bundle.annotations.clone(),
        monitor_start_time: 0,
        cgroups_path: bundle.cgroups_path.clone(),
        network: network.clone(),
    };
    root.save(&st).map_err(|e| cleanup(e.into()))?;
    if let Some(net) = &network {
        network::connect(net).map_err(|e| cleanup(e.into()))?;
        log::debug!(
            "{} joined to {} ({}/{}) in {}",
            net.tap,
            net.interface,
            net.address,
            net.prefix,
            net.netns.display()
        );
    }
    let monitor = MonitorStart {
        console_socket: console_socket.as_deref(),
        io,
        netns: netns.as_ref(),
    };
    let (mut child, ready) =
        spawn_monitor(globals, id, monitor).map_err(|e| cleanup(OciError::Io(dir.clone(), e)))?;
    if let Err(msg) = wait_ready(ready) {
        // The monitor is this process's child: kill and reap it (no zombie).
        let _ = child.kill();
        let _ = child.wait();
        return Err(cleanup(OciError::Refused(msg)));
    }
    if let Some(p) = pid_file {
        write_pid_file(p, child.id()).map_err(|e| cleanup(OciError::Io(p.into(), e)))?;
    }
    Ok(child)
}

/// Writes `pid` to `path` atomically.
pub fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("hvlite-tmp");
    std::fs::write(&tmp, pid.to_string())?;
    std::fs::rename(&tmp, path)
}

/// How the monitor starts, besides the globals.
struct MonitorStart<'a> {
    console_socket: Option<&'a Path>,
    /// Its stdio, if not this process's.
    io: Option<MonitorIo>,
    /// The network namespace it runs in (where its TAP is), if not this process's.
    netns: Option<&'a std::fs::File>,
}

/// Starts `hvlite-runtime ... monitor ID` detached (own session), with this process's
/// stdio (the engine's) and a readiness socket at fd [`READY_FD`].
fn spawn_monitor(
    globals: &Globals,
    id: &str,
    start: MonitorStart<'_>,
) -> std::io::Result<(Child, UnixStream)> {
    let MonitorStart {
        console_socket,
        io,
        netns,
    } = start;
    let (parent, child_end) = UnixStream::pair()?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(&globals.monitor_args).arg("monitor");
    if let Some(s) = console_socket {
        cmd.arg("--console-socket").arg(s);
    }
    cmd.arg(id);
    if let Some(io) = io {
        cmd.stdin(io.stdin).stdout(io.stdout).stderr(io.stderr);
    }
    if let Some(agent) = &globals.agent {
        cmd.env(paths::AGENT_ENV, agent);
    }
    // First: the fd of the namespace may be the number dup2 below replaces.
    if let Some(ns) = netns {
        network::enter_before_exec(&mut cmd, ns);
    }
    let fd = child_end.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls are made (setsid, dup2,
    // fcntl) on fds this process owns; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == READY_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(child_end);
    Ok((child, parent))
}

/// Reads the monitor's answer: `ok`, or why it failed.
fn wait_ready(mut ready: UnixStream) -> Result<(), String> {
    let mut text = String::new();
    if let Err(e) = ready.read_to_string(&mut text) {
        return Err(format!("cannot hear from the container's monitor: {e}"));
    }
    match text.trim_end() {
        "ok" => Ok(()),
        "" => Err("the container's monitor died before the container was created".into()),
        other => Err(other.strip_prefix("error: ").unwrap_or(other).to_string()),
    }
}

/// The monitor's readiness socket, when started by `create`.
pub fn ready_socket() -> Option<UnixStream> {
    // SAFETY: fd 3 is checked to be open and a socket before it is owned; `create` put it
    // there for this process alone.
    let open = unsafe { libc::fcntl(READY_FD, libc::F_GETFD) } >= 0;
    if !open {
        return None;
    }
    // SAFETY: as above: the fd is open and nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(READY_FD) };
    let _ = set_cloexec(&fd);
    Some(UnixStream::from(fd))
}

fn set_cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: F_SETFD on an fd this process owns.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Loads a container's state as it is now (stopped if its monitor is gone).
pub fn load(root: &StateRoot, id: &str) -> Result<State, OciError> {
    Ok(state::current(root.load(id)?))
}

/// `start`.
pub fn start(root: &StateRoot, id: &str) -> Result<(), OciError> {
    let st = load(root, id)?;
    if st.status != Status::Created {
        return Err(OciError::Refused(format!(
            "container {id:?} is {}, not created: cannot start it",
            st.status.as_str()
        )));
    }
    control::request(&root.container_dir(id), "start")?;
    Ok(())
}

/// Parses a signal: a number, or a name with or without `SIG`.
pub fn parse_signal(s: &str) -> Result<i32, OciError> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(OciError::Refused(format!(
            "bad signal {s:?}: numbers go from 1 to 64"
        )));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| OciError::Refused(format!("unknown signal {s:?}")))
}

/// `kill [--all] ID SIG`: SIGKILL ends the monitor (and the VM, so every process of the
/// container); other signals go to the process through the agent, or with `all` to every
/// process of the container.
pub fn kill(root: &StateRoot, id: &str, sig: i32, all: bool) -> Result<(), OciError> {
    let st = load(root, id)?;
    if matches!(st.status, Status::Stopped | Status::Creating) {
        return Err(OciError::Refused(format!(
            "container {id:?} is {}: nothing to signal",
            st.status.as_str()
        )));
    }
    if sig == libc::SIGKILL && st.pid > 0 {
        // SAFETY: kill(2) on the monitor's pid, just checked (with its start time) to be ours.
        if unsafe { libc::kill(st.pid, libc::SIGKILL) } < 0 {
            return Err(OciError::Io(
                format!("/proc/{}", st.pid).into(),
                std::io::Error::last_os_error(),
            ));
        }
        return Ok(());
    }
    let request = if all { "killall" } else { "kill" };
    control::request(&root.container_dir(id), &format!("{request} {sig}"))?;
    Ok(())
}

/// `delete [--force]`.
pub fn delete(root: &StateRoot, id: &str, force: bool) -> Result<(), OciError> {
    let st = match load(root, id) {
        Ok(st) => st,
        // A corrupt state directory can still be removed by force.
        Err(OciError::State(state::StateError::Corrupt(..))) if force => {
            return Ok(root.remove(id)?);
        }
        Err(e) => return Err(e),
    };
    if st.status != Status::Stopped {
        if !force {
            return Err(OciError::Refused(format!(
                "container {id:?} is {}: stop it first or use delete --force",
                st.status.as_str()
            )));
        }
        if st.pid > 0 && state::monitor_alive(&st) {
            // SAFETY: kill(2) on the monitor's pid (positive, never a group), checked to be
            // ours by its start time.
            unsafe { libc::kill(st.pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while state::monitor_alive(&st) {
            if Instant::now() > deadline {
                return Err(OciError::Refused(format!(
                    "the monitor (pid {}) of container {id:?} did not die",
                    st.pid
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if let Some(cg) = &st.cgroups_path {
        super::cgroup::remove(cg);
    }
    if let Some(Err(e)) = st.network.as_ref().map(network::disconnect) {
        log::warn!("cannot remove the container's TAP: {e}");
    }
    root.remove(id)?;
    Ok(())
}

/// `list`: a table, or only the ids with `quiet`, or JSON.
pub fn list(root: &StateRoot, quiet: bool, json: bool) -> Result<String, OciError> {
    let mut states = Vec::new();
    for id in root.ids()? {
        match load(root, &id) {
            Ok(st) => states.push(st),
            Err(e) => log::warn!("{e}"),
        }
    }
    if json {
        let all: Vec<_> = states.iter().map(state::to_spec_json).collect();
        return Ok(serde_json::Value::Array(all).to_string() + "\n");
    }
    if quiet {
        return Ok(states.iter().map(|s| format!("{}\n", s.id)).collect());
    }
    let mut out = format!(
        "{:<20} {:<8} {:<10} {:<40} {}\n",
        "ID", "PID", "STATUS", "BUNDLE", "CREATED"
    );
    for s in &states {
        let pid = if s.status == Status::Stopped {
            0
        } else {
            s.pid
        };
        out.push_str(&format!(
            "{:<20} {:<8} {:<10} {:<40} {}\n",
            s.id,
            pid,
            s.status.as_str(),
            s.bundle.display(),
            s.created
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGKILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("hup").unwrap(), libc::SIGHUP);
        assert_eq!(parse_signal("10").unwrap(), 10);
        for bad in ["0", "65", "-1", "SIGNOPE", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_half_created_container_is_deleted_by_force_without_signalling_anyone() {
        let dir = tempfile::tempdir().unwrap();
        let root = StateRoot::new(dir.path().join("r"));
        root.create("c").unwrap();
        let st = State {
            oci_version: OCI_VERSION.into(),
            id: "c".into(),
            status: Status::Creating,
            pid: 0,
            bundle: "/b".into(),
            rootfs: "/b/r".into(),
            created: String::new(),
            owner: String::new(),
            annotations: Default::default(),
            monitor_start_time: 0,
            cgroups_path: None,
            network: None,
        };
        root.save(&st).unwrap();
        assert!(delete(&root, "c", false).is_err());
        assert!(kill(&root, "c", libc::SIGKILL, false).is_err());
        delete(&root, "c", true).unwrap();
        assert!(root.ids().unwrap().is_empty());
        let list = list(&root, false, false).unwrap();
        assert_eq!(list.lines().count(), 1, "only the header: {list}");
    }
}
