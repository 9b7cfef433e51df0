//! Processes: sessions, credentials, root and working directory, signals, reaping.
//!
//! The functions marked "child" run between fork and exec: they allocate nothing, so they are
//! safe even when the parent had other threads (the unit tests do).

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::check;

/// Child: setsid(2). Fails only for a process group leader, which a fresh child is not.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Child: chroot(2).
pub fn chroot(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string.
    check(unsafe { libc::chroot(path.as_ptr()) }).map(drop)
}

/// Child: chdir(2).
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// Child: mkdir(2).
pub fn mkdir(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string.
    check(unsafe { libc::mkdir(path.as_ptr(), mode) }).map(drop)
}

/// Child: setrlimit(2) of `resource` (a RLIMIT_* number).
pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit; the resource number was checked by the spec.
    check(unsafe { libc::setrlimit(resource as _, &lim) }).map(drop)
}

/// Child: prctl(PR_SET_NO_NEW_PRIVS, 1).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

/// Child: setgroups(2).
pub fn setgroups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: `groups` is a valid array of `groups.len()` gids.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) }).map(drop)
}

/// Child: setgid(2).
pub fn setgid(gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: setgid takes a plain value.
    check(unsafe { libc::setgid(gid) }).map(drop)
}

/// Child: setuid(2).
pub fn setuid(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: setuid takes a plain value.
    check(unsafe { libc::setuid(uid) }).map(drop)
}

/// Child: unblocks every signal and sets every disposition back to the default (exec keeps
/// ignored signals ignored, and the Rust runtime ignores SIGPIPE).
pub fn reset_signals() {
    // SAFETY: sigemptyset initializes the set it is given; a null old-set pointer is allowed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    for sig in 1..=libc::SIGRTMAX() {
        // SAFETY: SIG_DFL is always a valid disposition; signals that cannot be changed
        // (SIGKILL, SIGSTOP, those reserved by libc) just fail with EINVAL.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// kill(2).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain values; the callers choose which processes it targets.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// waitpid(pid, WNOHANG): `Ok(None)` when no matching child has changed state. Retries on
/// EINTR.
pub fn wait_nohang(pid: libc::pid_t) -> io::Result<Option<(libc::pid_t, libc::c_int)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid place for the kernel to write an int.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        match rc {
            0 => return Ok(None),
            p if p > 0 => return Ok(Some((p, status))),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// waitpid(pid, 0): waits for that child to end; returns its raw status. Retries on EINTR.
pub fn wait_for(pid: libc::pid_t) -> io::Result<libc::c_int> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid place for the kernel to write an int.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc > 0 {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The write end of the SIGCHLD self-pipe (-1: none yet).
static SIGCHLD_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = SIGCHLD_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; `fd` is the non-blocking write end of the
        // self-pipe, which is never closed. A full pipe (EAGAIN) already holds a wake-up.
        unsafe { libc::write(fd, [0u8].as_ptr().cast(), 1) };
    }
}

/// Installs a SIGCHLD handler that writes a byte to a self-pipe, and returns the pipe's
/// non-blocking read end: readable when a child may have changed state. The write end stays
/// open for the life of the process. Calling it again returns a new pipe and the old one
/// stops receiving wake-ups (so the callers also poll with a timeout).
pub fn sigchld_pipe() -> io::Result<OwnedFd> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 succeeded; the read end is fresh and owned by nothing else.
    let read_end = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // An older write end is left open (leaked): the handler may still be writing to it, and
    // closing it could let the number be reused. The init calls this once.
    SIGCHLD_PIPE.store(fds[1], Ordering::Relaxed);
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigchld as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
    // SAFETY: `action` is initialized, the handler only does an async-signal-safe write, and
    // a null old-action pointer is allowed.
    check(unsafe { libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut()) })?;
    Ok(read_end)
}

/// getpid(2).
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid takes no arguments and cannot fail.
    unsafe { libc::getpid() }
}

/// The effective uid and the real uid and gid, for tests.
#[cfg(test)]
pub fn ids() -> (libc::uid_t, libc::uid_t, libc::gid_t) {
    // SAFETY: these calls take no arguments and cannot fail.
    unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) }
}

/// Whether a process whose `/proc/PID/root` link reads `root` belongs to the container: its
/// processes run chrooted (the agent's own processes and kernel threads have `/`).
pub fn in_container(root: &std::path::Path) -> bool {
    root != std::path::Path::new("/")
}

/// Sends `sig` to every process of the container (see [`in_container`]); errors (a process
/// that is gone, a bad signal) are ignored.
pub fn signal_container(sig: libc::c_int) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if let Ok(root) = std::fs::read_link(entry.path().join("root"))
            && in_container(&root)
        {
            let _ = kill(pid, sig);
        }
    }
}

/// Sets SIGCHLD to SIG_IGN: children are reaped by the kernel, none is left a zombie.
pub fn ignore_children() -> io::Result<()> {
    // SAFETY: SIG_IGN is always a valid disposition for SIGCHLD.
    let old = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    if old == libc::SIG_ERR {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Child: drops from the bounding set every capability not in `keep` (a bit mask);
/// numbers the kernel does not have are skipped.
pub fn limit_bounding_set(keep: u64) -> io::Result<()> {
    for cap in 0..64u32 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                // Past the kernel's last capability.
                break;
            }
            return Err(err);
        }
    }
    Ok(())
}

/// Child: keep the permitted capabilities across the switch to a non-zero uid.
pub fn keep_caps() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) }).map(drop)
}

/// Child: capset(2) of this process's effective, permitted and inheritable sets, then
/// raises each capability of `ambient` (bit masks).
pub fn set_capabilities(
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: u64,
) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let half = |m: u64, i: u32| (m >> (32 * i)) as u32;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [0, 1].map(|i| Data {
        effective: half(effective, i),
        permitted: half(permitted, i),
        inheritable: half(inheritable, i),
    });
    // SAFETY: capset reads a version-3 header and two data structs, both valid for the call.
    check(unsafe {
        libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) as libc::c_int
    })?;
    for cap in 0..64u32 {
        if ambient & (1 << cap) != 0 {
            // SAFETY: prctl with integer arguments.
            check(unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    libc::c_ulong::from(cap),
                    0,
                    0,
                )
            })?;
        }
    }
    Ok(())
}
