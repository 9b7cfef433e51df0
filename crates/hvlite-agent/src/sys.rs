//! Thin wrappers around the system calls the init needs. All `unsafe` code of the init lives
//! here and in the submodules.

pub mod fds;
pub mod process;
pub mod pty;
pub mod vsock;

use std::ffi::{CStr, CString, c_char};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::ptr;

/// Writes one line to the console (fd 1), ignoring errors: there is nowhere else to report.
pub fn say(line: &str) {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let mut out = io::stdout().lock();
    let _ = out.write_all(&buf);
    let _ = out.flush();
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// mount(2) with optional `data` (file system options); EBUSY (already mounted) counts as
/// success.
pub fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let data = data.map_or(ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: the three pointers are NUL-terminated strings that live across the call; `data`
    // is null or a NUL-terminated string that lives across the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data,
        )
    };
    match check(rc) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other.map(drop),
    }
}

fn fd_is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; any fd number is acceptable.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

fn dup2(old: libc::c_int, new: libc::c_int) -> io::Result<()> {
    // SAFETY: dup2 takes plain fd numbers; replacing fds 0-2 is what the callers intend and no
    // Rust object owns them.
    check(unsafe { libc::dup2(old, new) }).map(drop)
}

fn close(fd: libc::c_int) {
    // SAFETY: the callers pass an fd they opened themselves and own nothing else with it.
    unsafe { libc::close(fd) };
}

/// Makes sure fds 0, 1 and 2 are open, pointing any closed one at `/dev/console`.
pub fn ensure_console_fds() -> io::Result<()> {
    let missing: Vec<libc::c_int> = (0..3).filter(|&fd| !fd_is_open(fd)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let fd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")?
        .into_raw_fd();
    for &target in missing.iter().filter(|&&t| t != fd) {
        dup2(fd, target)?;
    }
    if fd > 2 {
        close(fd);
    }
    Ok(())
}

fn ignore_alarm(_: libc::c_int) {}

/// Waits until the console has sent what was written to it (tcdrain on fd 1), for at most
/// `seconds`, so the last lines are not lost when the VMM stops the VM at the exit port.
pub fn drain_console(seconds: libc::c_uint) {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = ignore_alarm as fn(libc::c_int) as libc::sighandler_t;
    // No SA_RESTART: the alarm must interrupt tcdrain.
    action.sa_flags = 0;
    // SAFETY: `action` is initialized, the handler is async-signal-safe (it does nothing) and
    // a null old-action pointer is allowed.
    if unsafe { libc::sigaction(libc::SIGALRM, &action, ptr::null_mut()) } != 0 {
        return;
    }
    // SAFETY: alarm and tcdrain take plain values; tcdrain fails harmlessly on a non-tty.
    unsafe {
        libc::alarm(seconds);
        libc::tcdrain(1);
        libc::alarm(0);
    }
}

/// sync(2).
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// The console log level at which the kernel prints `KERN_INFO` messages, among them its
/// reports of user processes killed by a fault ("segfault at ...").
pub const CONSOLE_LEVEL_INFO: libc::c_int = 7;

/// Sets the kernel's console log level (syslog(2) `SYSLOG_ACTION_CONSOLE_LEVEL`): messages
/// more urgent than `level` reach the console. Undoes a `quiet` boot's level.
pub fn set_console_log_level(level: libc::c_int) -> io::Result<()> {
    const SYSLOG_ACTION_CONSOLE_LEVEL: libc::c_int = 8;
    // SAFETY: this action reads no buffer (null, length 0 is allowed) and only takes `level`.
    let rc = unsafe { libc::klogctl(SYSLOG_ACTION_CONSOLE_LEVEL, std::ptr::null_mut(), level) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Loads from address 0: a real page fault, so the kernel kills this process with SIGSEGV
/// and reports `segfault at 0`, the way the PVM host defect kills processes. Only the
/// test-only switch `hvlite.test_crash=before-start` calls it.
pub fn fault_at_null() -> ! {
    loop {
        // SAFETY: the load faults (nothing is mapped at 0, mmap_min_addr forbids it) and the
        // kernel kills the process; no Rust-visible memory is read or written.
        unsafe {
            std::arch::asm!("mov {v}, qword ptr [{p}]", p = in(reg) 0usize, v = out(reg) _);
        }
    }
}

/// Writes `status` to I/O port `port` through `/dev/port` (the kernel does the `out`).
pub fn write_port_devport(port: u16, status: u8) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open("/dev/port")?;
    let n = f.write_at(&[status], u64::from(port))?;
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::WriteZero, "short write"))
    }
}

/// Writes `status` to I/O port `port` from user mode after ioperm(2).
#[cfg(target_arch = "x86_64")]
pub fn write_port_ioperm(port: u16, status: u8) -> io::Result<()> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    check(unsafe { libc::ioperm(libc::c_ulong::from(port), 1, 1) })?;
    // SAFETY: ioperm granted access to this one port; writing it has no effect on this
    // process's memory (the VMM or the machine handles the exit port).
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") status, options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

/// Not available off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn write_port_ioperm(_port: u16, _status: u8) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// reboot(RB_AUTOBOOT); only returns on failure.
pub fn reboot() -> io::Error {
    // SAFETY: reboot takes a plain command value; the caller has synced and is done.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    io::Error::last_os_error()
}

/// A command prepared for fork/exec: everything is allocated before the fork.
pub struct Prepared {
    /// The program as given (argv[0]), for messages.
    pub name: String,
    candidates: Vec<CString>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
    tty: Option<CString>,
}

fn to_cstrings<I: IntoIterator<Item = S>, S: Into<Vec<u8>>>(items: I) -> io::Result<Vec<CString>> {
    items
        .into_iter()
        .map(|s| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)))
        .collect()
}

fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

impl Prepared {
    /// Prepares `argv`, to be run from the first of `candidates` that execs, with environment
    /// `env`. With `tty`, the child makes that device its stdin/stdout/stderr.
    pub fn new(
        argv: Vec<String>,
        candidates: Vec<String>,
        env: &[&str],
        tty: Option<String>,
    ) -> io::Result<Self> {
        let name = argv.first().cloned().unwrap_or_default();
        let argv = to_cstrings(argv)?;
        let envp = to_cstrings(env.iter().copied())?;
        // The heap buffers of the CStrings do not move when the Vecs are moved into `Self`.
        let argv_ptrs = pointers(&argv);
        let envp_ptrs = pointers(&envp);
        Ok(Self {
            name,
            candidates: to_cstrings(candidates)?,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            tty: tty
                .map(|t| to_cstrings([t]))
                .transpose()?
                .and_then(|mut v| v.pop()),
        })
    }
}

/// What fork(2) returned.
pub enum Forked {
    Parent(libc::pid_t),
    Child,
}

/// fork(2).
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the init is single-threaded, so the child may keep running Rust code.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid)
    })
}

/// In the child: becomes a session leader, moves fds 0-2 to the prepared tty (if any) and
/// makes fd 0 its controlling terminal (best effort).
pub fn child_session(cmd: &Prepared) {
    // SAFETY: setsid takes no arguments; the child is not a process group leader, so it works.
    unsafe { libc::setsid() };
    if let Some(tty) = &cmd.tty {
        // SAFETY: `tty` is a NUL-terminated path.
        let fd = unsafe { libc::open(tty.as_ptr(), libc::O_RDWR) };
        if fd >= 0 {
            for target in 0..3 {
                let _ = dup2(fd, target);
            }
            if fd > 2 {
                close(fd);
            }
        }
    }
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); failure (fd 0 not a tty)
    // is harmless.
    unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
}

/// In the child: tries each candidate path with execve, handing the errno of each failure to
/// `keep_going`, and stops early when it returns false. Only returns if nothing could be run.
pub fn exec_candidates(cmd: &Prepared, mut keep_going: impl FnMut(i32) -> bool) {
    for path in &cmd.candidates {
        // SAFETY: `path` is NUL-terminated; argv_ptrs and envp_ptrs are null-terminated
        // arrays of pointers into CStrings owned by `cmd`, which outlives the call.
        unsafe {
            libc::execve(
                path.as_ptr(),
                cmd.argv_ptrs.as_ptr(),
                cmd.envp_ptrs.as_ptr(),
            )
        };
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOENT);
        if !keep_going(errno) {
            return;
        }
    }
}

/// _exit(2): ends the child without running anything of the parent's.
pub fn exit_child(status: u8) -> ! {
    // SAFETY: _exit ends the process immediately; nothing needs to run before that.
    unsafe { libc::_exit(libc::c_int::from(status)) }
}

/// waitpid(-1): reaps any child; returns its pid and raw status. Retries on EINTR.
pub fn wait_any() -> io::Result<(libc::pid_t, libc::c_int)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid place for the kernel to write an int.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid >= 0 {
            return Ok((pid, status));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Ctrl-Alt-Del: the pid of the command to stop (its process group too), 0 before it runs.
static CAD_TARGET: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// Whether Ctrl-Alt-Del was pressed.
static CAD_PRESSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Seconds between SIGTERM and SIGKILL after Ctrl-Alt-Del.
pub const CAD_GRACE_SECONDS: libc::c_uint = 2;

/// Writes `msg` to the console with write(2) alone (async-signal-safe).
fn raw_say(msg: &[u8]) {
    // SAFETY: `msg` is valid for `msg.len()` bytes; fd 1 is the console.
    unsafe { libc::write(1, msg.as_ptr().cast(), msg.len()) };
}

/// Sends `sig` to the command's process group and to the command.
fn signal_cad_target(sig: libc::c_int) {
    let pid = CAD_TARGET.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill takes plain values; `pid` is our child (a session leader).
        unsafe {
            libc::kill(-pid, sig);
            libc::kill(pid, sig);
        }
    }
}

extern "C" fn on_ctrl_alt_del(_: libc::c_int) {
    if CAD_PRESSED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    raw_say(b"hvlite-init: Ctrl-Alt-Del: stopping the command\n");
    signal_cad_target(libc::SIGTERM);
    // SAFETY: alarm is async-signal-safe and takes a plain value.
    unsafe { libc::alarm(CAD_GRACE_SECONDS) };
}

extern "C" fn on_cad_grace_over(_: libc::c_int) {
    raw_say(b"hvlite-init: Ctrl-Alt-Del: the command is still running, killing it\n");
    signal_cad_target(libc::SIGKILL);
}

fn set_handler(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid start; the handler only uses
    // async-signal-safe calls (atomics, write, kill, alarm). SA_RESTART keeps waitpid going.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        check(libc::sigaction(sig, &sa, ptr::null_mut())).map(drop)
    }
}

/// Makes Ctrl-Alt-Del stop the command cleanly: the kernel then sends init SIGINT instead
/// of rebooting at once (reboot(RB_DISABLE_CAD)); init sends the command (and its process
/// group) SIGTERM, and SIGKILL after [`CAD_GRACE_SECONDS`]. The command's end then stops
/// the VM as usual.
pub fn catch_ctrl_alt_del() -> io::Result<()> {
    set_handler(libc::SIGALRM, on_cad_grace_over)?;
    set_handler(libc::SIGINT, on_ctrl_alt_del)?;
    // SAFETY: reboot with RB_DISABLE_CAD only changes what Ctrl-Alt-Del does.
    check(unsafe { libc::reboot(libc::RB_DISABLE_CAD) }).map(drop)
}

/// Names the command Ctrl-Alt-Del stops; if it was pressed already, stops it now.
pub fn set_ctrl_alt_del_target(pid: libc::pid_t) {
    CAD_TARGET.store(pid, std::sync::atomic::Ordering::SeqCst);
    if CAD_PRESSED.load(std::sync::atomic::Ordering::SeqCst) {
        signal_cad_target(libc::SIGTERM);
        // SAFETY: alarm takes a plain value.
        unsafe { libc::alarm(CAD_GRACE_SECONDS) };
    }
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}
