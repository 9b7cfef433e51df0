//! virtiofsd, the vhost-user backend of a share: found ([`find_virtiofsd`]), started
//! sandboxed with its socket in a private place, waited for until it listens, and stopped
//! (SIGTERM, then SIGKILL) when the VM ends.
//!
//! Where it is looked for: `$HVLITE_VIRTIOFSD`, then `virtiofsd` on PATH, then the copy
//! `scripts/setup.sh` installs under `~/.cache/hvlite/virtiofsd-<version>/bin`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the virtiofsd binary.
pub const VIRTIOFSD_ENV: &str = "HVLITE_VIRTIOFSD";
/// How long virtiofsd gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long virtiofsd gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors finding or starting virtiofsd.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "virtiofsd not found (looked at ${VIRTIOFSD_ENV}, PATH and ~/.cache/hvlite/virtiofsd-*/bin); \
         install it with scripts/setup.sh or `cargo install virtiofsd`"
    )]
    NotFound,
    #[error("cannot start {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("virtiofsd for share {tag:?} exited before it listened ({status})")]
    Exited {
        tag: String,
        status: std::process::ExitStatus,
    },
    #[error("virtiofsd for share {tag:?} did not listen on {socket} within {secs} s")]
    Timeout {
        tag: String,
        socket: PathBuf,
        secs: u64,
    },
}

/// Finds the virtiofsd binary.
pub fn find_virtiofsd() -> Result<PathBuf, DaemonError> {
    if let Some(p) = std::env::var_os(VIRTIOFSD_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("virtiofsd"))
        .find(|p| is_executable(p));
    if let Some(p) = on_path {
        return Ok(p);
    }
    // Where scripts/install-virtiofsd.sh puts it (the same cache as the kernel's).
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = (env("HVLITE_CACHE"))
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("hvlite")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/hvlite")));
    let mut cached: Vec<PathBuf> = cache
        .and_then(|c| std::fs::read_dir(c).ok())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("virtiofsd-"))
        .map(|e| e.path().join("bin/virtiofsd"))
        .filter(|p| is_executable(p))
        .collect();
    cached.sort();
    cached.pop().ok_or(DaemonError::NotFound)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How virtiofsd isolates itself: a mount, PID and network namespace with the shared
/// directory as its root when hvlite runs as root; none otherwise (it cannot create
/// them unprivileged here), with its seccomp filter in both cases.
fn sandbox() -> &'static str {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        "namespace"
    } else {
        "none"
    }
}

/// A running virtiofsd serving one share.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    tag: String,
}

impl Daemon {
    /// Starts `binary` serving `dir` (read-only if `read_only`) for share `tag`, and
    /// waits until it listens on its socket (in `runtime_dir`).
    pub fn start(
        binary: &Path,
        tag: &str,
        dir: &Path,
        read_only: bool,
        runtime_dir: &Path,
    ) -> Result<Self, DaemonError> {
        let socket = runtime_dir.join(format!("hvlite-{}-{tag}.vfs.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(binary);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(dir)
            .args(["--sandbox", sandbox(), "--seccomp", "kill"])
            .args(["--cache", "auto", "--log-level", "error"])
            // Keep the inherited open-file limit: raising the hard limit may be refused.
            .args(["--rlimit-nofile", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if read_only {
            cmd.arg("--readonly");
        }
        let child = cmd
            .spawn()
            .map_err(|e| DaemonError::Spawn(binary.to_path_buf(), e))?;
        let mut daemon = Self {
            child,
            socket,
            tag: tag.to_string(),
        };
        daemon.wait_listening()?;
        log::info!(
            "virtio-fs {tag}: virtiofsd (pid {}) serves {}{}",
            daemon.child.id(),
            dir.display(),
            if read_only { " read-only" } else { "" }
        );
        Ok(daemon)
    }

    /// Waits until the socket exists. virtiofsd serves exactly one connection (and exits
    /// when it closes), so the socket is not probed by connecting; between its bind and
    /// listen the frontend's connect is refused and retried.
    fn wait_listening(&mut self) -> Result<(), DaemonError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(DaemonError::Exited {
                    tag: self.tag.clone(),
                    status,
                });
            }
            if self.socket.exists() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DaemonError::Timeout {
                    tag: self.tag.clone(),
                    socket: self.socket.clone(),
                    secs: START_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// The socket the frontend connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// virtiofsd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops virtiofsd: SIGTERM, then SIGKILL if it is still there after a while; returns
    /// how it ended if it had ended on its own before.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: `pid` is our unreaped child, so it names that process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}
