//! hvlite-init: the guest's PID 1 for hvlite.
//!
//! It mounts devtmpfs, proc and sysfs, prints [`INIT_MARKER`], runs the command passed on the
//! kernel command line (or an interactive `/bin/sh` without one), prints
//! `hvlite-init: exit status N`, writes N to the exit port and reboots. Ctrl-Alt-Del (the
//! API's SendCtrlAltDel) ends the command with SIGTERM, then SIGKILL after a grace period.
//! The contract is documented in [`hvlite_protocol::initcmd`]. It never returns: PID 1 exiting
//! panics the kernel.
//!
//! Two other modes:
//! - the guest agent (`agent.rs`) when the kernel command line has `hvlite.agent=1`: it runs
//!   a container's process for the host over vsock;
//! - the vsock utility (`vsock.rs`) when run as `hvlite-init vsock ...` and not as PID 1.

mod agent;
mod cmdline;
mod container;
mod exec;
mod queue;
mod session;
mod spawn;
mod sys;
mod template;
mod vsock;

use std::ffi::{CStr, OsString};

use hvlite_protocol::initcmd::{self, EXIT_PORT, INIT_MARKER, STATUS_INIT_ERROR};

use exec::ExecFailures;
use sys::{Forked, Prepared, say};

/// How long to wait for the console to drain before stopping the VM.
const DRAIN_SECONDS: libc::c_uint = 3;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let Some(tool) = vsock::tool_args(&args, sys::process::getpid()) {
        std::process::exit(vsock::main(tool));
    }
    std::panic::set_hook(Box::new(|info| {
        say(&format!("hvlite-init: internal error: {info}"));
        finish(STATUS_INIT_ERROR)
    }));
    let status = run();
    finish(status)
}

/// Mounts `fstype` on `target`, creating the directory if it is missing.
fn mount_fs(fstype: &CStr, target: &CStr, flags: libc::c_ulong) -> Result<(), String> {
    let result = match sys::mount(fstype, target, fstype, flags, None) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            let dir = target.to_string_lossy().into_owned();
            std::fs::create_dir(&dir).and_then(|()| sys::mount(fstype, target, fstype, flags, None))
        }
        other => other,
    };
    result.map_err(|e| {
        format!(
            "hvlite-init: mounting {} on {}: {e}",
            fstype.to_string_lossy(),
            target.to_string_lossy()
        )
    })
}

fn run() -> u8 {
    let dev = mount_fs(c"devtmpfs", c"/dev", libc::MS_NOSUID);
    // fds 0-2 may need /dev/console from the devtmpfs just mounted.
    let console = sys::ensure_console_fds();
    for err in [
        dev.err(),
        console.err().map(|e| format!("hvlite-init: console: {e}")),
    ]
    .into_iter()
    .flatten()
    {
        say(&err);
    }
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (fstype, target) in [(c"proc", c"/proc"), (c"sysfs", c"/sys")] {
        if let Err(msg) = mount_fs(fstype, target, hardened) {
            say(&msg);
        }
    }
    say(INIT_MARKER);
    if let Ok(cmdline) = std::fs::read_to_string("/proc/cmdline")
        && cmdline::agent_enabled(&cmdline)
    {
        agent::run(&cmdline);
    }

    if let Err(e) = sys::catch_ctrl_alt_del() {
        say(&format!(
            "hvlite-init: Ctrl-Alt-Del will reboot at once: {e}"
        ));
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let argv = match exec::encoded_command(&args) {
        None => vec![exec::SHELL.to_string()],
        Some(encoded) => {
            let decoded = encoded
                .to_str()
                .ok_or_else(|| "not valid UTF-8".to_string())
                .and_then(|s| initcmd::decode(s).map_err(|e| e.to_string()));
            match decoded {
                Ok(argv) => argv,
                Err(e) => {
                    say(&format!(
                        "hvlite-init: cannot decode the command {encoded:?}: {e}"
                    ));
                    return STATUS_INIT_ERROR;
                }
            }
        }
    };
    // The command gets the console's real tty (e.g. /dev/ttyS0) rather than /dev/console,
    // which cannot be a controlling terminal (no job control, no Ctrl-C) and whose
    // inherited rootfs node makes ttyname(3) fail.
    let tty = std::fs::read_to_string("/sys/class/tty/console/active")
        .ok()
        .and_then(|active| exec::console_tty_path(&active));
    let candidates = exec::candidates(argv.first().map_or("", String::as_str), exec::PATH);
    match Prepared::new(argv, candidates, &exec::ENVIRONMENT, tty) {
        Ok(cmd) => spawn_and_wait(&cmd),
        Err(e) => {
            say(&format!("hvlite-init: bad command: {e}"));
            STATUS_INIT_ERROR
        }
    }
}

/// Forks and execs the command, then reaps children (orphans included) until it has ended.
fn spawn_and_wait(cmd: &Prepared) -> u8 {
    let child = match sys::fork() {
        Ok(Forked::Child) => run_child(cmd),
        Ok(Forked::Parent(pid)) => {
            sys::set_ctrl_alt_del_target(pid);
            pid
        }
        Err(e) => {
            say(&format!("hvlite-init: fork: {e}"));
            return STATUS_INIT_ERROR;
        }
    };
    loop {
        match sys::wait_any() {
            Ok((pid, status)) if pid == child => {
                if let Some(code) = initcmd::exit_status_from_wait(status) {
                    return code;
                }
            }
            Ok(_) => {} // a reparented orphan
            Err(e) => {
                say(&format!("hvlite-init: waitpid: {e}"));
                return STATUS_INIT_ERROR;
            }
        }
    }
}

fn run_child(cmd: &Prepared) -> ! {
    sys::child_session(cmd);
    let mut failures = ExecFailures::default();
    sys::exec_candidates(cmd, |errno| failures.record(errno));
    let (status, errno) = failures.outcome();
    let msg = match errno {
        None => format!("hvlite-init: {}: command not found", cmd.name),
        Some(errno) => format!(
            "hvlite-init: {}: {}",
            cmd.name,
            std::io::Error::from_raw_os_error(errno)
        ),
    };
    say(&msg);
    sys::exit_child(status)
}

/// Reports `status` and stops the VM. Never returns.
fn finish(status: u8) -> ! {
    say(&initcmd::status_line(status));
    sys::drain_console(DRAIN_SECONDS);
    sys::sync();
    if let Err(e) = sys::write_port_devport(EXIT_PORT, status) {
        // Nobody will read this if the fallback works; say it anyway, it is one line.
        let fallback = sys::write_port_ioperm(EXIT_PORT, status);
        if let Err(e2) = fallback {
            say(&format!(
                "hvlite-init: exit port: /dev/port: {e}; ioperm: {e2}; rebooting"
            ));
        }
    }
    let err = sys::reboot();
    say(&format!("hvlite-init: reboot: {err}"));
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
