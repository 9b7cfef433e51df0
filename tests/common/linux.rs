//! Booting the project's Linux kernel in tests. Linux boots are slow on PVM hosts (guest
//! kernel mode is emulated), so each boot checks several things and boots run one at a
//! time. Guest artefacts come from `HVLITE_KERNEL`, `HVLITE_BZIMAGE`, `HVLITE_INITRD` and
//! `HVLITE_ROOTFS` (set by `scripts/test.sh`), or are built (and cached) by the scripts.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use super::hvlite;

/// One Linux boot at a time: the hosts have 2 cores.
static BOOT: Mutex<()> = Mutex::new(());
/// A boot that takes longer than this has hung.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn artefact(var: &str, script: &str, args: &[&str]) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(out.status.success(), "{script} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("script printed a path").trim())
}

/// The project's vmlinux.
pub fn kernel() -> PathBuf {
    artefact("HVLITE_KERNEL", "build-kernel.sh", &[])
}

/// The project's bzImage.
pub fn bzimage() -> PathBuf {
    std::env::var("HVLITE_BZIMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| kernel().with_file_name("bzImage"))
}

/// The project's initramfs.
pub fn initrd() -> PathBuf {
    artefact("HVLITE_INITRD", "build-initramfs.sh", &[])
}

/// The project's ext4 root image (shared and cached: copy it before writing to it).
pub fn rootfs() -> PathBuf {
    artefact("HVLITE_ROOTFS", "build-initramfs.sh", &["--ext4"])
}

/// The static guest agent (`hvlite run --rootfs` puts it into its VMs).
pub fn agent() -> PathBuf {
    artefact("HVLITE_AGENT", "build-initramfs.sh", &["--agent"])
}

/// The busybox container root directory (shared and cached: never write to it).
pub fn rootfs_dir() -> PathBuf {
    artefact("HVLITE_ROOTFS_DIR", "build-initramfs.sh", &["--dir"])
}

/// A finished boot.
pub struct Boot {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout as the bytes hvlite wrote.
    pub stdout_bytes: Vec<u8>,
}

impl Boot {
    /// Everything printed, for assertion messages.
    pub fn context(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// A running hvlite whose output is collected in the background.
pub struct Running {
    child: Child,
    out_rx: mpsc::Receiver<Vec<u8>>,
    stdout: Vec<u8>,
    err_reader: Option<std::thread::JoinHandle<Vec<u8>>>,
    start: Instant,
    _one_at_a_time: MutexGuard<'static, ()>,
}

/// Starts hvlite with `args` (stdin closed).
pub fn start(args: &[&str]) -> Running {
    start_with(&[], args)
}

/// Starts hvlite with `args` under a wrapper command (`prefix`, e.g. `ip netns exec NS`).
pub fn start_with(prefix: &[&str], args: &[&str]) -> Running {
    start_full(prefix, args, &[], None)
}

/// Starts hvlite with `args` under `prefix`, with extra environment variables `envs`, and
/// `stdin` written to its stdin (then closed) or a closed stdin.
pub fn start_full(
    prefix: &[&str],
    args: &[&str],
    envs: &[(&str, &std::ffi::OsStr)],
    stdin: Option<Vec<u8>>,
) -> Running {
    let guard = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    let hv = hvlite();
    let (program, rest): (&std::ffi::OsStr, Vec<&std::ffi::OsStr>) = match prefix.split_first() {
        Some((p, more)) => (
            p.as_ref(),
            more.iter()
                .map(|s| s.as_ref())
                .chain([hv.as_os_str()])
                .collect(),
        ),
        None => (hv.as_os_str(), Vec::new()),
    };
    let mut child = Command::new(program)
        .args(rest)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hvlite");
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&data);
        });
    }
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let (tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out_pipe.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    Running {
        child,
        out_rx,
        stdout: Vec::new(),
        err_reader: Some(err_reader),
        start: Instant::now(),
        _one_at_a_time: guard,
    }
}

impl Running {
    fn pump(&mut self, wait: Duration) {
        if let Ok(chunk) = self.out_rx.recv_timeout(wait) {
            self.stdout.extend(chunk);
        }
        while let Ok(chunk) = self.out_rx.try_recv() {
            self.stdout.extend(chunk);
        }
    }

    /// Waits until `text` appears on the guest console; panics on timeout or exit, showing
    /// everything hvlite printed.
    pub fn wait_for(&mut self, text: &str) {
        if let Err(e) = self.try_wait_for(text) {
            panic!("{e}; {}", self.printed());
        }
    }

    /// Waits until `text` appears on the guest console; an error (saying why) when hvlite
    /// exits first or [`BOOT_TIMEOUT`] passes (hvlite is killed then).
    pub fn try_wait_for(&mut self, text: &str) -> Result<(), String> {
        loop {
            if String::from_utf8_lossy(&self.stdout).contains(text) {
                return Ok(());
            }
            if self.start.elapsed() > BOOT_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("{text:?} not seen within {BOOT_TIMEOUT:?}"));
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                self.pump(Duration::from_millis(200));
                if String::from_utf8_lossy(&self.stdout).contains(text) {
                    return Ok(());
                }
                return Err(format!("hvlite exited ({st}) before {text:?}"));
            }
            self.pump(Duration::from_millis(100));
        }
    }

    /// stdout so far and (once hvlite has exited) its stderr, for failure messages.
    fn printed(&mut self) -> String {
        self.pump(Duration::from_millis(200));
        let stderr = match self.err_reader.take() {
            Some(h) => String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned(),
            None => String::new(),
        };
        format!(
            "stdout:\n{}\nstderr:\n{stderr}",
            String::from_utf8_lossy(&self.stdout)
        )
    }

    /// The guest console so far.
    pub fn console(&mut self) -> String {
        self.pump(Duration::from_millis(10));
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// hvlite's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether hvlite is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends signal `sig` to hvlite.
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Kills hvlite with SIGKILL and collects what it printed.
    pub fn kill(mut self) -> Boot {
        let _ = self.child.kill();
        self.finish()
    }

    /// Waits for hvlite to exit (killing it after [`BOOT_TIMEOUT`]).
    pub fn finish(mut self) -> Boot {
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait for hvlite") {
                break st;
            }
            if self.start.elapsed() > BOOT_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "hvlite did not finish within {BOOT_TIMEOUT:?}; {}",
                    self.printed()
                );
            }
            self.pump(Duration::from_millis(50));
        };
        // The reader thread ends at EOF; collect the rest.
        while let Ok(chunk) = self.out_rx.recv_timeout(Duration::from_secs(5)) {
            self.stdout.extend(chunk);
        }
        let stderr = self
            .err_reader
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        eprintln!("hvlite ran {:.1} s", self.start.elapsed().as_secs_f64());
        Boot {
            status: status.code(),
            stdout: String::from_utf8_lossy(&self.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            stdout_bytes: std::mem::take(&mut self.stdout),
        }
    }
}

impl Drop for Running {
    /// A test that fails half-way must not leave its VM running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs hvlite with `args` to the end.
pub fn boot(args: &[&str]) -> Boot {
    start(args).finish()
}
