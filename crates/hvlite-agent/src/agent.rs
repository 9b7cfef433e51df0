//! Agent mode (`hvlite.agent=1` on the kernel command line): runs one container process for
//! the host over vsock. The protocol is [`hvlite_protocol::agent::protocol`].
//!
//! 1. Connect to the host (CID 2, port [`AGENT_VSOCK_PORT`]), retrying for
//!    [`CONNECT_TIMEOUT`] while the vsock device is probed, and send `Hello`.
//! 2. Build the container's root at [`container::NEWROOT`] (see `container.rs`; options in
//!    `cmdline.rs`).
//! 3. Serve the session (`session.rs`): `Start` → process → `Exited`.
//! 4. End the VM through the exit port with the process's status once the host has closed
//!    the connection (it normally stops the VM first), or after [`session::LINGER`].
//!
//! Failures before the connection exists are printed on the console and end the VM with
//! status 125; later ones are sent to the host as `Error` 125 first.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use hvlite_protocol::agent::protocol::{
    AGENT_VSOCK_PORT, AgentMessage, PROTOCOL_VERSION, write_message,
};
use hvlite_protocol::initcmd::STATUS_INIT_ERROR;

use crate::session::{self, Options, SessionOutcome};
use crate::sys::{self, fds, process, say, vsock};
use crate::{cmdline, container, finish};

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

/// Runs the agent; never returns.
pub fn run(cmdline: &str) -> ! {
    let options = cmdline::agent_options(cmdline);
    // Installed before any child exists, so no exit can be missed.
    let sigchld = process::sigchld_pipe();
    let mut conn = match connect_host().and_then(fds::above_stdio) {
        Ok(fd) => File::from(fd),
        Err(e) => fail_early(&format!(
            "cannot connect to the host (vsock CID {}, port {AGENT_VSOCK_PORT}): {e}",
            libc::VMADDR_CID_HOST
        )),
    };
    let hello = AgentMessage::Hello {
        version: PROTOCOL_VERSION,
    };
    if let Err(e) = write_message(&mut conn, &hello) {
        fail_early(&format!("sending Hello: {e}"));
    }
    say("hvlite-agent: connected to the host");
    let ready = options
        .and_then(|o| {
            container::execute(&container::plan(&o, ""), |w| {
                say(&format!("hvlite-agent: {w}"))
            })
        })
        .and_then(|()| sigchld.map_err(|e| format!("SIGCHLD pipe: {e}")));
    // The boot was `quiet` (console output is slow on emulated hosts); from here on the
    // kernel's reports of crashed processes reach the host, which logs them.
    if let Err(e) = sys::set_console_log_level(sys::CONSOLE_LEVEL_INFO) {
        say(&format!("hvlite-agent: console log level: {e}"));
    }
    let outcome = match ready {
        Ok(sigchld) => session::serve(
            conn,
            Some(container::NEWROOT),
            Some(sigchld),
            Options {
                reap_all: true,
                sync: true,
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

#[cfg(test)]
mod tests {
    use super::*;

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
