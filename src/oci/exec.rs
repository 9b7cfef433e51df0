//! `exec`: a further process in a running container, through the guest agent's exec port
//! ([`crate::container::exec`]). The VM's vsock socket is [`VSOCK_SOCKET`] in the
//! container's state directory.
//!
//! Library entry points (a containerd shim uses them too): [`start`] gives an
//! [`ExecSession`] (pid, wait) and its [`ProcessControl`](crate::container::exec::ProcessControl)
//! (signal, resize, stdin, close stdin); [`run`] is the command line's whole `exec`.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::agent::protocol::ProcessSpec;
use crate::container::exec::{ExecError, ExecSession};

use super::state::{StateRoot, Status, short_socket_path};
use super::{OciError, bundle, commands, console};

/// The VM's vsock Unix socket in the container's state directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";

/// The PATH an inline `exec ID CMD` gets without `-e PATH=...`.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Starts `spec` in the running container `id`.
pub fn start(root: &StateRoot, id: &str, spec: &ProcessSpec) -> Result<ExecSession, OciError> {
    let st = commands::load(root, id)?;
    if st.status != Status::Running {
        return Err(OciError::Refused(format!(
            "container {id:?} is {}, not running: cannot exec in it",
            st.status.as_str()
        )));
    }
    let dir = root.container_dir(id);
    let p = short_socket_path(&dir, VSOCK_SOCKET).map_err(|e| OciError::Io(dir.clone(), e))?;
    Ok(ExecSession::start(&p.path, spec)?)
}

/// Reads an OCI `process` object (runc's `exec --process FILE`).
pub fn read_process(path: &Path) -> Result<ProcessSpec, OciError> {
    let text = std::fs::read_to_string(path).map_err(|e| OciError::Io(path.into(), e))?;
    let process: oci_spec::runtime::Process = serde_json::from_str(&text)
        .map_err(|e| OciError::Refused(format!("{}: not an OCI process: {e}", path.display())))?;
    Ok(bundle::process_spec(&process)?)
}

/// runc's inline form: `exec [-e K=V]... [-u UID[:GID]] [--cwd DIR] [-t] ID CMD...`.
pub fn inline_process(
    args: Vec<String>,
    env: Vec<String>,
    user: Option<&str>,
    cwd: Option<String>,
    tty: bool,
) -> Result<ProcessSpec, OciError> {
    let mut spec = ProcessSpec::new(args);
    spec.env = env;
    if !spec.env.iter().any(|e| e.starts_with("PATH=")) {
        spec.env.insert(0, DEFAULT_PATH.into());
    }
    if let Some(u) = user {
        let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
        let num = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| OciError::Refused(format!("--user {u:?}: use UID[:GID] (numbers)")))
        };
        spec.user.uid = num(uid)?;
        spec.user.gid = num(gid)?;
    }
    if let Some(c) = cwd {
        spec.cwd = c;
    }
    spec.terminal = tty;
    spec.stdin = true;
    spec.validate().map_err(ExecError::from)?;
    Ok(spec)
}

/// How `exec` runs.
#[derive(Debug, Default)]
pub struct ExecOptions {
    /// Return once the process runs; a child of this process relays its stdio and exits
    /// with its status (that child's pid goes to `pid_file`).
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// The command line's `exec`: returns the status to exit with (the process's, or 0 when
/// detached).
pub fn run(
    root: &StateRoot,
    id: &str,
    spec: &ProcessSpec,
    opts: &ExecOptions,
) -> Result<u8, OciError> {
    if spec.terminal && opts.detach && opts.console_socket.is_none() {
        return Err(console::ConsoleError::NoSocket.into());
    }
    if !opts.detach {
        let session = start(root, id, spec)?;
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, std::process::id())?;
        }
        return relay(session, spec, opts);
    }
    let (mut ready_r, ready_w) = std::io::pipe().map_err(|e| OciError::Io("pipe".into(), e))?;
    // SAFETY: the runtime is single-threaded here (no thread was started before `exec`),
    // so the child may go on running ordinary Rust code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(ready_r);
            let status = detached_child(root, id, spec, opts, ready_w);
            std::process::exit(i32::from(status));
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(ready_w);
            let mut answer = String::new();
            let _ = ready_r.read_to_string(&mut answer);
            match answer.trim_end() {
                "ok" => {
                    if let Some(p) = &opts.pid_file {
                        write_pid_file(p, child.as_raw() as u32)?;
                    }
                    Ok(0)
                }
                other => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    let msg = other.strip_prefix("error: ").unwrap_or(other);
                    Err(OciError::Refused(if msg.is_empty() {
                        "the exec relay died before the process started".into()
                    } else {
                        msg.to_string()
                    }))
                }
            }
        }
        Err(e) => Err(OciError::Io("fork".into(), e.into())),
    }
}

/// The detached relay: starts the process, says `ok` (or the error) on `ready`, relays
/// until the process ends; returns its status.
fn detached_child(
    root: &StateRoot,
    id: &str,
    spec: &ProcessSpec,
    opts: &ExecOptions,
    mut ready: io::PipeWriter,
) -> u8 {
    use std::io::Write;
    match start(root, id, spec) {
        Ok(session) => {
            let _ = ready.write_all(b"ok\n");
            drop(ready);
            match relay(session, spec, opts) {
                Ok(status) => status,
                Err(e) => {
                    log::error!("exec in {id}: {e}");
                    125
                }
            }
        }
        Err(e) => {
            let _ = ready.write_all(format!("error: {e}\n").as_bytes());
            match e {
                OciError::Exec(ExecError::Start { status, .. }) => status,
                _ => 125,
            }
        }
    }
}

/// Relays this process's stdio (or the console socket's pty) to the session until the
/// process ends; returns its status.
fn relay(session: ExecSession, spec: &ProcessSpec, opts: &ExecOptions) -> Result<u8, OciError> {
    let control = session.control();
    let end = match (&opts.console_socket, spec.terminal) {
        (Some(socket), true) => {
            let size = spec.console_size.unwrap_or_default();
            let slave = console::hand_over(socket, size)?;
            let (input, eof, resize) = (control.clone(), control.clone(), control);
            console::relay(
                &slave,
                size,
                move |d| input.write_stdin(d).is_ok(),
                move || {
                    let _ = eof.close_stdin();
                },
                move |s| resize.resize(s).is_ok(),
            )
            .map_err(|e| OciError::Io("console relay".into(), e))?;
            let mut out = slave
                .try_clone()
                .map_err(|e| OciError::Io("pty".into(), e))?;
            session.wait(&mut out, &mut io::sink())?
        }
        _ => {
            pump_stdin(control)?;
            session.wait(&mut io::stdout(), &mut io::stderr())?
        }
    };
    Ok(end.status())
}

/// Copies this process's stdin to the process, then closes it.
fn pump_stdin(control: crate::container::exec::ProcessControl) -> Result<(), OciError> {
    std::thread::Builder::new()
        .name("exec-stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; crate::agent::protocol::MAX_CHUNK];
            let mut stdin = io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if control.write_stdin(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = control.close_stdin();
        })
        .map(drop)
        .map_err(|e| OciError::Io("thread".into(), e))
}

fn write_pid_file(path: &Path, pid: u32) -> Result<(), OciError> {
    commands::write_pid_file(path, pid).map_err(|e| OciError::Io(path.into(), e))
}
