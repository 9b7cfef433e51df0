//! Agent mode (`hvlite.agent=1` on the kernel command line): runs one container process for
//! the host over vsock. The protocol is [`hvlite_protocol::agent::protocol`].
//!
//! 1. Connect to the host (CID 2, port [`AGENT_VSOCK_PORT`]), retrying for
//!    [`CONNECT_TIMEOUT`] while the vsock device is probed, and send `Hello`. In a template
//!    VM (`hvlite.template=1`), wait on that connection until a restore resets it, connect
//!    and say `Hello` again, and wait for the root device's capacity (`template.rs`).
//! 2. Build the container's root at [`container::NEWROOT`] (see `container.rs`; options in
//!    `cmdline.rs`).
//! 3. Start the exec server ([`start_exec_server`]): a process of its own that accepts
//!    exec sessions on guest port [`EXEC_VSOCK_PORT`], each served by another process.
//! 4. Serve the session (`session.rs`): `Start` → process → `Exited`.
//! 5. End the VM through the exit port with the process's status once the host has closed
//!    the connection (it normally stops the VM first), or after [`session::LINGER`].
//!
//! Failures before the connection exists are printed on the console and end the VM with
//! status 125; later ones are sent to the host as `Error` 125 first.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use hvlite_protocol::agent::CMDLINE_TEST_CRASH;
use hvlite_protocol::agent::protocol::{
    AGENT_VSOCK_PORT, AgentMessage, EXEC_VSOCK_PORT, PROTOCOL_VERSION, write_message,
};
use hvlite_protocol::initcmd::STATUS_INIT_ERROR;

use crate::session::{self, Options, SessionOutcome};
use crate::sys::{self, Forked, fds, process, say, vsock};
use crate::{cmdline, container, finish, template};

/// How long the agent keeps trying to connect to the host.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(250);

/// Whether a failed connect may succeed later: no vsock device or transport yet, or the host
/// not listening yet.
pub fn retryable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENODEV
                | libc::ENXIO
                | libc::EAFNOSUPPORT
                | libc::ECONNRESET
                | libc::ECONNREFUSED
                | libc::ETIMEDOUT
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EADDRNOTAVAIL
                | libc::EAGAIN
                | libc::EINTR
        )
    )
}

/// The next delay between attempts: doubling, within [`RETRY_MIN`]..=[`RETRY_MAX`].
pub fn next_delay(delay: Duration) -> Duration {
    (delay * 2).clamp(RETRY_MIN, RETRY_MAX)
}

fn connect_host() -> io::Result<OwnedFd> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut delay = RETRY_MIN;
    loop {
        match vsock::connect(libc::VMADDR_CID_HOST, AGENT_VSOCK_PORT) {
            Err(e) if retryable(&e) && Instant::now() + delay < deadline => {
                std::thread::sleep(delay);
                delay = next_delay(delay);
            }
            other => return other,
        }
    }
}

/// Prints `msg` and ends the VM with status 125: for failures before the host can be told.
fn fail_early(msg: &str) -> ! {
    say(&format!("hvlite-agent: {msg}"));
    finish(STATUS_INIT_ERROR)
}

/// Connects to the host and says Hello; failures end the VM.
fn connect_and_hello() -> File {
    let mut conn = match connect_host().and_then(fds::above_stdio) {
        Ok(fd) => File::from(fd),
        Err(e) => fail_early(&format!(
            "cannot connect to the host (vsock CID {}, port {AGENT_VSOCK_PORT}): {e}",
            libc::VMADDR_CID_HOST
        )),
    };
    if let Err(e) = hello(&mut conn) {
        fail_early(&format!("sending Hello: {e}"));
    }
    conn
}

/// Runs the agent; never returns.
pub fn run(cmdline: &str) -> ! {
    let options = cmdline::agent_options(cmdline);
    let in_template = cmdline::template_enabled(cmdline);
    // Installed before any child exists, so no exit can be missed.
    let sigchld = process::sigchld_pipe();
    let mut conn = connect_and_hello();
    say("hvlite-agent: connected to the host");
    if in_template {
        // The template is snapshotted while the agent waits here; a restored VM goes on
        // once the transport reset has broken this connection (template.rs).
        template::wait_for_reset(&mut conn);
        drop(conn);
        conn = connect_and_hello();
    }
    let options = options.and_then(|o| {
        if in_template {
            let file = template::size_file(&o.root);
            template::wait_for_capacity(|| template::read_size(&file), template::CAPACITY_TIMEOUT)?;
        }
        Ok(o)
    });
    let ready = options
        .and_then(|o| cmdline::volumes(cmdline).map(|v| (o, v)))
        .and_then(|(o, volumes)| {
            let mut steps = container::plan(&o, "");
            steps.extend(container::volume_steps(&volumes, ""));
            container::execute(&steps, |w| say(&format!("hvlite-agent: {w}")))
        })
        .and_then(|()| start_exec_server())
        .and_then(|()| sigchld.map_err(|e| format!("SIGCHLD pipe: {e}")));
    // The boot was `quiet` (console output is slow on emulated hosts); from here on the
    // kernel's reports of crashed processes reach the host, which logs them.
    if let Err(e) = sys::set_console_log_level(sys::CONSOLE_LEVEL_INFO) {
        say(&format!("hvlite-agent: console log level: {e}"));
    }
    if test_crash_before_start(cmdline) {
        say("hvlite-agent: test switch: crashing before the process starts");
        sys::fault_at_null();
    }
    let outcome = match ready {
        Ok(sigchld) => session::serve(
            conn,
            Some(container::NEWROOT),
            Some(sigchld),
            Options {
                reap_all: true,
                sync: true,
                container_setup: true,
            },
        ),
        Err(msg) => {
            say(&format!("hvlite-agent: {msg}"));
            session::report_error(conn, STATUS_INIT_ERROR, msg)
        }
    };
    match outcome {
        SessionOutcome::Reported { status } => finish(status),
        SessionOutcome::Aborted { reason } => fail_early(&reason),
    }
}

fn hello(conn: &mut File) -> io::Result<()> {
    let hello = AgentMessage::Hello {
        version: PROTOCOL_VERSION,
    };
    write_message(conn, &hello)
}

/// Listens on [`EXEC_VSOCK_PORT`] and forks the exec server, which accepts the host's exec
/// connections until the VM ends.
fn start_exec_server() -> Result<(), String> {
    let listener = vsock::listen(EXEC_VSOCK_PORT)
        .map_err(|e| format!("listening for exec sessions on vsock port {EXEC_VSOCK_PORT}: {e}"))?;
    match sys::fork() {
        Ok(Forked::Child) => exec_server(&listener),
        // The listener is the server's alone.
        Ok(Forked::Parent(_)) => Ok(()),
        Err(e) => Err(format!("starting the exec server: {e}")),
    }
}

/// The exec server: one process per accepted connection. Never returns.
fn exec_server(listener: &OwnedFd) -> ! {
    if let Err(e) = process::ignore_children() {
        say(&format!("hvlite-agent: exec server: SIGCHLD: {e}"));
    }
    loop {
        let conn = match vsock::accept(listener.as_fd()) {
            Ok((conn, _cid)) => conn,
            Err(e) => {
                say(&format!("hvlite-agent: exec server: accept: {e}"));
                std::thread::sleep(RETRY_MAX);
                continue;
            }
        };
        match sys::fork() {
            Ok(Forked::Child) => exec_session(conn),
            Ok(Forked::Parent(_)) => {}
            Err(e) => say(&format!("hvlite-agent: exec server: fork: {e}")),
        }
    }
}

/// Serves one exec session on `conn`, then exits. Never returns.
fn exec_session(conn: OwnedFd) -> ! {
    // Its own SIGCHLD pipe (this also undoes the server's SIG_IGN).
    let sigchld = process::sigchld_pipe().ok();
    let mut conn = File::from(conn);
    if hello(&mut conn).is_err() {
        sys::exit_child(STATUS_INIT_ERROR);
    }
    let outcome = session::serve(
        conn,
        Some(container::NEWROOT),
        sigchld,
        Options {
            reap_all: false,
            sync: false,
            container_setup: false,
        },
    );
    let status = match outcome {
        SessionOutcome::Reported { status } => status,
        SessionOutcome::Aborted { .. } => STATUS_INIT_ERROR,
    };
    sys::exit_child(status)
}

/// Whether the test-only option [`CMDLINE_TEST_CRASH`] is on the kernel command line.
fn test_crash_before_start(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == CMDLINE_TEST_CRASH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_crash_switch_only_when_named_exactly() {
        assert!(test_crash_before_start(
            "root=/dev/vda hvlite.agent=1 hvlite.test_crash=before-start quiet"
        ));
        assert!(!test_crash_before_start(
            "root=/dev/vda hvlite.agent=1 quiet"
        ));
        assert!(!test_crash_before_start("hvlite.test_crash=before-startx"));
    }

    #[test]
    fn retry_on_transient_errors_only() {
        for errno in [libc::ENODEV, libc::ECONNRESET, libc::ETIMEDOUT, libc::EINTR] {
            assert!(retryable(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        for errno in [libc::EACCES, libc::EINVAL, libc::EPERM] {
            assert!(!retryable(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        assert!(!retryable(&io::Error::other("x")));
    }

    #[test]
    fn backoff() {
        let mut d = RETRY_MIN;
        let mut total = Duration::ZERO;
        for _ in 0..100 {
            total += d;
            d = next_delay(d);
            assert!(d <= RETRY_MAX);
        }
        assert_eq!(d, RETRY_MAX);
        assert!(total > CONNECT_TIMEOUT, "100 attempts cover the timeout");
    }
}
