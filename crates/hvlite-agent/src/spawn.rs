//! Starting the container's process: fork, then in the child: new session, stdio on pipes,
//! chroot, working directory (created if missing), groups and ids, default signals, and an
//! `execvp`-like search of `args[0]` in the `PATH` of the spec's environment.
//!
//! A failure in the child reaches the parent through a close-on-exec "report" pipe: the child
//! writes a [`ChildFailure`] (8 bytes) and exits; EOF without a report means exec succeeded.
//! The child allocates nothing between fork and exec: everything is prepared in
//! [`ChildSetup`] first.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use hvlite_protocol::agent::protocol::{ProcessSpec, WindowSize};
use hvlite_protocol::initcmd::STATUS_INIT_ERROR;

use crate::exec::{self, ExecFailures};
use crate::sys::{self, Forked, Prepared, fds, process};

/// The `PATH` the program is searched in: the first `PATH=` entry of `env`, or the init's
/// standard path.
pub fn search_path(env: &[String]) -> &str {
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(exec::PATH)
}

/// The directories to create, outermost first, so that absolute `dir` exists:
/// `/a/b` → `/a`, `/a/b`.
pub fn dir_prefixes(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut path = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty() && *p != ".") {
        path.push('/');
        path.push_str(part);
        out.push(path.clone());
    }
    out
}

/// Where the child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Stdio = 1,
    Root = 2,
    Cwd = 3,
    Groups = 4,
    Gid = 5,
    Uid = 6,
    Exec = 7,
    Rlimit = 8,
    NoNewPrivs = 9,
    Terminal = 10,
    Capabilities = 11,
}

impl Stage {
    fn from_u8(b: u8) -> Option<Self> {
        [
            Self::Stdio,
            Self::Root,
            Self::Cwd,
            Self::Groups,
            Self::Gid,
            Self::Uid,
            Self::Exec,
            Self::Rlimit,
            Self::NoNewPrivs,
            Self::Terminal,
            Self::Capabilities,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }
}

/// What the child writes to the report pipe when it cannot exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildFailure {
    pub stage: Stage,
    /// The status to report (125, 126, 127).
    pub status: u8,
    /// The errno, 0 for "not found" after a search.
    pub errno: i32,
}

/// Bytes of an encoded [`ChildFailure`]; below PIPE_BUF, so the write is atomic.
pub const REPORT_LEN: usize = 8;

impl ChildFailure {
    pub fn to_bytes(self) -> [u8; REPORT_LEN] {
        let e = self.errno.to_le_bytes();
        [self.stage as u8, self.status, 0, 0, e[0], e[1], e[2], e[3]]
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; REPORT_LEN] = b.try_into().ok()?;
        Some(Self {
            stage: Stage::from_u8(b[0])?,
            status: b[1],
            errno: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// The container's process, prepared before the fork.
pub struct ChildSetup {
    cmd: Prepared,
    root: Option<CString>,
    cwd: CString,
    cwd_prefixes: Vec<CString>,
    groups: Vec<libc::gid_t>,
    gid: libc::gid_t,
    uid: libc::uid_t,
    stdin: bool,
    /// (resource, soft, hard, name) for setrlimit.
    rlimits: Vec<(u32, u64, u64, String)>,
    no_new_privs: bool,
    /// Capability sets (bounding, effective, permitted, inheritable, ambient), if given.
    caps: Option<[u64; 5]>,
    /// With a terminal: the `ptmx` node to allocate it from, and its first size.
    terminal: Option<(CString, WindowSize)>,
    /// For messages.
    cwd_text: String,
    root_text: String,
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

impl ChildSetup {
    /// Prepares `spec` (already validated) to run chrooted in `root` (`None`: no chroot).
    pub fn new(spec: &ProcessSpec, root: Option<&str>) -> io::Result<Self> {
        let name = spec.args.first().map_or("", String::as_str);
        let candidates = exec::candidates(name, search_path(&spec.env));
        let env: Vec<&str> = spec.env.iter().map(String::as_str).collect();
        Ok(Self {
            cmd: Prepared::new(spec.args.clone(), candidates, &env, None)?,
            root: root.map(cstring).transpose()?,
            cwd: cstring(&spec.cwd)?,
            cwd_prefixes: dir_prefixes(&spec.cwd)
                .iter()
                .map(|p| cstring(p))
                .collect::<io::Result<_>>()?,
            groups: spec.user.additional_gids.clone(),
            gid: spec.user.gid,
            uid: spec.user.uid,
            stdin: spec.stdin,
            rlimits: spec
                .rlimits
                .iter()
                .filter_map(|r| Some((r.resource()?, r.soft, r.hard, r.typ.clone())))
                .collect(),
            no_new_privs: spec.no_new_privileges,
            caps: spec
                .capabilities
                .as_ref()
                .map(|c| c.masks())
                .transpose()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            terminal: if spec.terminal {
                let ptmx = root.map_or("/dev/ptmx".to_string(), |r| format!("{r}/dev/pts/ptmx"));
                Some((cstring(&ptmx)?, spec.console_size.unwrap_or_default()))
            } else {
                None
            },
            cwd_text: spec.cwd.clone(),
            root_text: root.unwrap_or("/").to_string(),
        })
    }

    /// The message for the host when the child reported `f`.
    pub fn describe(&self, f: ChildFailure) -> String {
        let err = io::Error::from_raw_os_error(f.errno);
        let name = &self.cmd.name;
        match f.stage {
            Stage::Exec if f.errno == 0 => format!("{name}: command not found"),
            Stage::Exec => format!("{name}: {err}"),
            Stage::Stdio => format!("setting up stdin/stdout/stderr: {err}"),
            Stage::Root => format!("entering the container root {}: {err}", self.root_text),
            Stage::Cwd => format!("working directory {}: {err}", self.cwd_text),
            Stage::Groups => format!("setgroups({:?}): {err}", self.groups),
            Stage::Gid => format!("setgid({}): {err}", self.gid),
            Stage::Uid => format!("setuid({}): {err}", self.uid),
            Stage::Rlimit => {
                let names: Vec<&str> = self.rlimits.iter().map(|r| r.3.as_str()).collect();
                format!("setrlimit ({}): {err}", names.join(", "))
            }
            Stage::NoNewPrivs => format!("PR_SET_NO_NEW_PRIVS: {err}"),
            Stage::Terminal => format!("making the terminal the controlling one: {err}"),
            Stage::Capabilities => format!("setting the capabilities: {err}"),
        }
    }
}

/// The running process and the parent's ends of its stdio pipes (or of its terminal).
pub struct Spawned {
    pub pid: libc::pid_t,
    /// Write end of its stdin, when the spec asked for stdin (the terminal's master with a
    /// terminal).
    pub stdin: Option<OwnedFd>,
    /// Its stdout (the terminal's master with a terminal: all its output).
    pub stdout: OwnedFd,
    /// Its stderr (none with a terminal).
    pub stderr: Option<OwnedFd>,
    /// The terminal's master, for window sizes.
    pub terminal: Option<OwnedFd>,
}

/// The parent's and the child's ends of the process's stdio.
struct Stdio {
    /// The child's fds 0, 1, 2.
    child: [OwnedFd; 3],
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    terminal: Option<OwnedFd>,
}

fn pipes_stdio(forward_stdin: bool) -> io::Result<Stdio> {
    let (out_r, out_w) = fds::pipe()?;
    let (err_r, err_w) = fds::pipe()?;
    let (in_child, in_parent) = stdin_fds(forward_stdin)?;
    Ok(Stdio {
        child: [in_child, out_w, err_w],
        stdin: in_parent,
        stdout: out_r,
        stderr: Some(err_r),
        terminal: None,
    })
}

fn terminal_stdio(ptmx: &std::ffi::CStr, size: WindowSize) -> io::Result<Stdio> {
    let (master, slave) = sys::pty::open(ptmx)?;
    sys::pty::set_size(master.as_fd(), size)?;
    let above = |fd: &OwnedFd| fd.try_clone().and_then(fds::above_stdio);
    Ok(Stdio {
        child: [above(&slave)?, above(&slave)?, fds::above_stdio(slave)?],
        stdin: Some(above(&master)?),
        terminal: Some(above(&master)?),
        stdout: fds::above_stdio(master)?,
        stderr: None,
    })
}

/// The process could not be started: what to send as `Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnError {
    pub status: u8,
    pub message: String,
}

impl SpawnError {
    fn setup(what: &str, e: &io::Error) -> Self {
        Self {
            status: STATUS_INIT_ERROR,
            message: format!("{what}: {e}"),
        }
    }
}

/// The child's stdin: a pipe (host data) or /dev/null. Without /dev/null, a pipe whose write
/// end is closed at once reads as EOF all the same.
fn stdin_fds(forward: bool) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    if forward {
        return fds::pipe().map(|(r, w)| (r, Some(w)));
    }
    match File::options().read(true).write(true).open("/dev/null") {
        Ok(f) => Ok((fds::above_stdio(f.into())?, None)),
        Err(_) => fds::pipe().map(|(r, _closed)| (r, None)),
    }
}

/// Forks and starts the process; returns once it has exec'd (or failed to).
pub fn spawn(setup: &ChildSetup) -> Result<Spawned, SpawnError> {
    let (report_r, report_w) = fds::pipe().map_err(|e| SpawnError::setup("creating pipes", &e))?;
    let io = match &setup.terminal {
        Some((ptmx, size)) => terminal_stdio(ptmx, *size)
            .map_err(|e| SpawnError::setup(&format!("a terminal from {ptmx:?}"), &e))?,
        None => pipes_stdio(setup.stdin).map_err(|e| SpawnError::setup("creating pipes", &e))?,
    };
    let stdio = io.child.each_ref().map(AsRawFd::as_raw_fd);
    let pid = match sys::fork() {
        Ok(Forked::Child) => run_child(setup, stdio, report_w.as_raw_fd()),
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => return Err(SpawnError::setup("fork", &e)),
    };
    // The child's ends: closed here so that EOF comes when the child has exec'd or exited.
    drop((report_w, io.child));
    let mut report = Vec::with_capacity(REPORT_LEN);
    let read = File::from(report_r)
        .take(REPORT_LEN as u64 + 1)
        .read_to_end(&mut report);
    if read.is_ok() && report.is_empty() {
        return Ok(Spawned {
            pid,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            terminal: io.terminal,
        });
    }
    // The child has exited (or is about to): reap it so it is not reported as the process.
    let _ = process::wait_for(pid);
    Err(match (read, ChildFailure::from_bytes(&report)) {
        (Ok(_), Some(f)) => SpawnError {
            status: f.status,
            message: setup.describe(f),
        },
        (Err(e), _) => SpawnError::setup("reading the child's report", &e),
        (Ok(_), None) => SpawnError {
            status: STATUS_INIT_ERROR,
            message: format!("the child sent a bad report ({} bytes)", report.len()),
        },
    })
}

/// In the child: reports `failure` to the parent and exits with its status.
fn fail(report: RawFd, stage: Stage, status: u8, err: &io::Error) -> ! {
    let f = ChildFailure {
        stage,
        status,
        errno: err.raw_os_error().unwrap_or(0),
    };
    let _ = fds::write_raw(report, &f.to_bytes());
    sys::exit_child(status)
}

fn mkdirs(prefixes: &[CString]) {
    for p in prefixes {
        // Errors (EEXIST, or a real one) show up in the chdir that follows.
        let _ = process::mkdir(p, 0o755);
    }
}

/// In the child, after fork: never returns; allocates nothing.
fn run_child(s: &ChildSetup, stdio: [RawFd; 3], report: RawFd) -> ! {
    process::reset_signals();
    // A fresh child is never a process group leader: setsid cannot fail.
    let _ = process::setsid();
    let init_error = |stage, e: &io::Error| fail(report, stage, STATUS_INIT_ERROR, e);
    for (target, &src) in (0..).zip(&stdio) {
        if let Err(e) = fds::install_fd(src, target) {
            init_error(Stage::Stdio, &e);
        }
    }
    if s.terminal.is_some()
        && let Err(e) = sys::pty::make_controlling(0)
    {
        init_error(Stage::Terminal, &e);
    }
    if let Some(root) = &s.root
        && let Err(e) = process::chroot(root).and_then(|()| process::chdir(c"/"))
    {
        init_error(Stage::Root, &e);
    }
    // Created as root if missing (like `docker run -w`); entered again once the ids are
    // switched, so that the user's access is checked.
    if let Err(e) = process::chdir(&s.cwd)
        && e.raw_os_error() == Some(libc::ENOENT)
    {
        mkdirs(&s.cwd_prefixes);
    }
    // Limits before the ids switch: raising a hard limit needs root.
    for &(resource, soft, hard, _) in &s.rlimits {
        if let Err(e) = process::setrlimit(resource, soft, hard) {
            init_error(Stage::Rlimit, &e);
        }
    }
    // The bounding set while this process still may change it; the permitted set kept
    // across the uid switch.
    if let Some([bounding, ..]) = s.caps
        && let Err(e) = process::limit_bounding_set(bounding).and_then(|()| process::keep_caps())
    {
        init_error(Stage::Capabilities, &e);
    }
    let ids: [(Stage, &dyn Fn() -> io::Result<()>); 3] = [
        (Stage::Groups, &|| process::setgroups(&s.groups)),
        (Stage::Gid, &|| process::setgid(s.gid)),
        (Stage::Uid, &|| process::setuid(s.uid)),
    ];
    for (stage, switch) in ids {
        if let Err(e) = switch() {
            init_error(stage, &e);
        }
    }
    if let Some([_, effective, permitted, inheritable, ambient]) = s.caps
        && let Err(e) = process::set_capabilities(effective, permitted, inheritable, ambient)
    {
        init_error(Stage::Capabilities, &e);
    }
    if let Err(e) = process::chdir(&s.cwd) {
        init_error(Stage::Cwd, &e);
    }
    if s.no_new_privs
        && let Err(e) = process::set_no_new_privs()
    {
        init_error(Stage::NoNewPrivs, &e);
    }
    let mut failures = ExecFailures::default();
    sys::exec_candidates(&s.cmd, |errno| failures.record(errno));
    let (status, errno) = failures.outcome();
    // No errno: nothing was found (status 127).
    let err = io::Error::from_raw_os_error(errno.unwrap_or(0));
    fail(report, Stage::Exec, status, &err)
}

#[cfg(test)]
mod tests;
