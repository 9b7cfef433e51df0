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
/// How long virtiofsd gets to exit by itself, and then after SIGTERM before SIGKILL.
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

    /// Stops virtiofsd. It exits by itself once its connection closes (and, sandboxed,
    /// its first process waits for the one serving the share), so it gets a while for
    /// that; then SIGTERM, then SIGKILL. Returns how it ended if it had ended before
    /// being asked to.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        if self.wait_exit(STOP_TIMEOUT) {
            return None;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: `pid` is our unreaped child, so it names that process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if !self.wait_exit(STOP_TIMEOUT) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        None
    }

    /// Removes the socket file (a virtiofsd that was killed cannot remove it itself).
    pub fn remove_socket(&self) {
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Waits up to `limit` for virtiofsd to exit; whether it did.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        self.remove_socket();
    }
}

#[cfg(test)]
mod tests {
    //! Against the real virtiofsd (no VM): start, the vhost-user handshake and activation
    //! of [`Fs`](super::super::Fs) on shared memory, a backend that dies, stop.

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::virtio::fs::{FrontendLink, Fs, NUM_QUEUES};
    use crate::devices::virtio::test_utils::EventLoop;
    use crate::devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};

    fn virtiofsd(test: &str) -> Option<PathBuf> {
        let found = find_virtiofsd();
        let why = "no virtiofsd (scripts/install-virtiofsd.sh)";
        hvlite_protocol::test_env::check(test, found.is_ok(), why).then(|| found.ok())?
    }

    /// Two ready queues in 1 MiB of shared guest memory, with fresh kick and call eventfds.
    fn activation() -> ActivateContext {
        let mem = crate::vmm::memory::shared_ranges(&[(GuestAddress(0), 0x100000)]).unwrap();
        ActivateContext {
            mem,
            queues: vec![queue(0x10000), queue(0x20000)],
            kicks: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ],
            interrupt: Arc::new(VirtioInterrupt::new(
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            )),
        }
    }

    fn queue(base: u64) -> Queue {
        let mut q = Queue::new(super::super::QUEUE_SIZE).unwrap();
        q.set_size(16);
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
        q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
        q.set_ready(true);
        q
    }

    #[test]
    fn a_real_virtiofsd_takes_the_queues_and_its_death_is_noticed() {
        let Some(bin) = virtiofsd("a_real_virtiofsd_takes_the_queues_and_its_death_is_noticed")
        else {
            return;
        };
        let shared = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::start(&bin, "t", shared.path(), true, run.path()).unwrap();
        assert!(daemon.socket().exists());
        let lp = EventLoop::start();
        let link = FrontendLink::connect(daemon.socket(), NUM_QUEUES as u64).unwrap();
        let mut fs = Fs::new("t", Box::new(link), lp.handle.clone()).unwrap();
        // virtiofsd offers VERSION_1 (checked by Fs::new) and the driver takes it.
        fs.set_acked_features(fs.avail_features());
        // Every message is acknowledged (REPLY_ACK): a refusal would mark the share gone.
        fs.activate(activation()).unwrap();
        let health = fs.health();
        assert!(!health.is_gone());
        fs.reset();
        assert!(!health.is_gone(), "GET_VRING_BASE answered");

        // Activate again, then kill virtiofsd: the event loop sees the hang-up.
        fs.activate(activation()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !health.is_gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(health.is_gone(), "the hang-up was noticed");
        assert!(daemon.stop().is_some(), "it had ended on its own");
        drop(fs);
        drop(daemon);
        assert!(
            !run.path()
                .join(format!("hvlite-{}-t.vfs.sock", std::process::id()))
                .exists()
        );
    }

    #[test]
    fn a_missing_binary_or_an_early_exit_is_an_error() {
        let run = tempfile::tempdir().unwrap();
        let e = Daemon::start(
            Path::new("/nonexistent/virtiofsd"),
            "t",
            run.path(),
            false,
            run.path(),
        );
        assert!(matches!(e, Err(DaemonError::Spawn(..))));
        // `false` exits at once without listening.
        let e = Daemon::start(Path::new("/bin/false"), "t", run.path(), false, run.path());
        assert!(matches!(e, Err(DaemonError::Exited { .. })), "{e:?}");
    }
}
