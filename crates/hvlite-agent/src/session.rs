//! One agent session on an established connection, from `Start` to `Exited` (see
//! [`hvlite_protocol::agent::protocol`] for the sequence): starts the process, then runs a poll(2)
//! loop that forwards its stdout/stderr to the host, the host's stdin and signals to it, and
//! notices its end through SIGCHLD.
//!
//! Generic over the connection (any stream socket), so the unit tests run whole sessions over
//! a Unix socket pair.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use hvlite_protocol::agent::protocol::{
    AgentMessage, FrameDecoder, HostMessage, MAX_CHUNK, Message, ProcessEnd, ProcessSpec,
    ProtocolError, encode_frame, frame_type, read_message, write_message,
};
use hvlite_protocol::initcmd::STATUS_INIT_ERROR;

use crate::queue::ByteQueue;
use crate::spawn::{self, ChildSetup, Spawned};
use crate::sys::{self, fds, process};

/// Stdin data waiting for the process above which the agent stops reading the host.
pub const STDIN_BACKLOG: usize = 1 << 20;
/// Frames waiting for the host above which the agent stops reading the process's output.
pub const OUTPUT_BACKLOG: usize = 1 << 20;
/// Room reserved up front in each queue: the backlog plus one maximal frame, so the queues
/// never grow (no reallocation and copying while data flows). Together with the read
/// buffer ([`READ_BUF`]) they are above glibc's mmap threshold, so each is its own
/// anonymous mapping.
const QUEUE_CAPACITY: usize = OUTPUT_BACKLOG + hvlite_protocol::agent::protocol::MAX_FRAME_LEN;
/// After the process exited: how long its pipes may stay quiet before the agent stops
/// waiting for their EOF (other processes may hold them open).
pub const DRAIN_IDLE: Duration = Duration::from_millis(200);
/// After the process exited: the longest the agent keeps reading its pipes.
pub const DRAIN_MAX: Duration = Duration::from_secs(5);
/// After the last frame: how long the agent waits for the host to close the connection.
pub const LINGER: Duration = Duration::from_secs(10);
/// Poll timeout while the process runs: reaps even if a SIGCHLD wake-up was missed.
const REAP_INTERVAL_MS: libc::c_int = 1000;
/// Bytes read from the host at a time.
const READ_CHUNK: usize = 64 * 1024;
/// What `StdinClose` writes to a terminal: its end-of-file character (^D, VEOF).
const EOF_CHAR: u8 = 0x04;
/// Size of the read buffer (see [`QUEUE_CAPACITY`]).
const READ_BUF: usize = 256 * 1024;

/// How the session treats the rest of the system.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Reap every child (PID 1 inherits orphans), not only the process.
    pub reap_all: bool,
    /// sync(2) before `Exited`.
    pub sync: bool,
    /// Whether the spec may carry the container-wide setup (the main session); an exec
    /// session refuses it.
    pub container_setup: bool,
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionOutcome {
    /// `Exited` or `Error` was sent with this status (the host closed the connection, or did
    /// not within [`LINGER`]).
    Reported { status: u8 },
    /// The host went away before the process ended; the process was killed.
    Aborted { reason: String },
}

/// Why the loop stopped before the process ended.
enum Abort {
    /// The connection is gone: nothing more can be sent.
    HostGone(String),
    /// The host sent something wrong: reported with `Error` 125.
    Protocol(String),
}

impl From<ProtocolError> for Abort {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Io(e) => Self::HostGone(format!("connection to the host: {e}")),
            other => Self::Protocol(format!("bad message from the host: {other}")),
        }
    }
}

fn name(m: &HostMessage) -> &'static str {
    match m {
        HostMessage::Start(_) => "Start",
        HostMessage::Stdin(_) => "Stdin",
        HostMessage::StdinClose => "StdinClose",
        HostMessage::Signal(_) => "Signal",
        HostMessage::Resize(_) => "Resize",
        HostMessage::SignalAll(_) => "SignalAll",
    }
}

/// Serves a session on `conn` (blocking mode; Hello already sent): waits for `Start`, runs
/// the process chrooted in `root` (`None`: no chroot), reports its end and lingers until the
/// host closes the connection. `sigchld` is the SIGCHLD self-pipe
/// ([`process::sigchld_pipe`]).
pub fn serve<C: Read + Write + AsFd>(
    mut conn: C,
    root: Option<&str>,
    sigchld: Option<OwnedFd>,
    opts: Options,
) -> SessionOutcome {
    let spec = match read_message::<_, HostMessage>(&mut conn) {
        Ok(Some(HostMessage::Start(spec))) => spec,
        Ok(Some(other)) => {
            let msg = format!("expected Start, got {}", name(&other));
            return report_error(conn, STATUS_INIT_ERROR, msg);
        }
        Ok(None) => {
            return SessionOutcome::Aborted {
                reason: "the host closed the connection before Start".into(),
            };
        }
        Err(e) => {
            return match Abort::from(e) {
                Abort::HostGone(reason) => SessionOutcome::Aborted { reason },
                Abort::Protocol(msg) => report_error(conn, STATUS_INIT_ERROR, msg),
            };
        }
    };
    if let (Ok(()), Some(sync)) = (spec.validate(), &spec.guest_sync) {
        for problem in crate::template::apply_sync(sync) {
            crate::sys::say(&format!("hvlite-agent: {problem}"));
        }
    }
    let started = spec
        .validate()
        .map_err(|e| spawn::SpawnError {
            status: STATUS_INIT_ERROR,
            message: e.to_string(),
        })
        .and_then(|()| setup_container(&spec, root, opts))
        .and_then(|()| {
            ChildSetup::new(&spec, root).map_err(|e| spawn::SpawnError {
                status: STATUS_INIT_ERROR,
                message: format!("preparing the process: {e}"),
            })
        })
        .and_then(|setup| spawn::spawn(&setup));
    let child = match started {
        Ok(child) => child,
        Err(e) => return report_error(conn, e.status, e.message),
    };
    let pid = child.pid;
    let started = u32::try_from(pid).map_or(Ok(()), |pid| {
        write_message(&mut conn, &AgentMessage::Started { pid })
    });
    let session = started
        .and_then(|()| fds::set_nonblocking(conn.as_fd()))
        .and_then(|()| Session::new(conn, child, sigchld, opts));
    match session {
        Ok(session) => session.run(),
        Err(e) => {
            kill_group(pid, opts);
            SessionOutcome::Aborted {
                reason: format!("connection to the host: {e}"),
            }
        }
    }
}

/// Applies the spec's container-wide setup (hostname, mounts, read-only root) in `root`.
fn setup_container(
    spec: &ProcessSpec,
    root: Option<&str>,
    opts: Options,
) -> Result<(), spawn::SpawnError> {
    let Some(setup) = &spec.container else {
        return Ok(());
    };
    let fail = |message: String| spawn::SpawnError {
        status: STATUS_INIT_ERROR,
        message,
    };
    if !opts.container_setup {
        return Err(fail(
            "an exec session cannot change the container (hostname, mounts, read-only root)".into(),
        ));
    }
    crate::container::apply_setup(setup, root.unwrap_or(""), |w| {
        sys::say(&format!("hvlite-agent: {w}"))
    })
    .map_err(|e| fail(format!("setting up the container: {e}")))
}

/// Sends `Error` on `conn` (blocking mode) and lingers.
pub fn report_error<C: Read + Write + AsFd>(
    mut conn: C,
    status: u8,
    message: String,
) -> SessionOutcome {
    let sent = write_message(&mut conn, &AgentMessage::Error { status, message });
    if sent.is_ok() {
        linger_blocking(&mut conn);
    }
    SessionOutcome::Reported { status }
}

/// Waits (blocking mode) for the host to close the connection, at most [`LINGER`].
fn linger_blocking<C: Read + Write + AsFd>(conn: &mut C) {
    if fds::set_nonblocking(conn.as_fd()).is_ok() {
        linger(conn, &mut ByteQueue::new());
    }
}

/// Sends what `out` holds, then reads (and drops) until the host closes the connection, an
/// error, or [`LINGER`] without progress has passed. `conn` is non-blocking.
fn linger<C: Read + Write + AsFd>(conn: &mut C, out: &mut ByteQueue) {
    let mut deadline = Instant::now() + LINGER;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let events = libc::POLLIN | if out.is_empty() { 0 } else { libc::POLLOUT };
        let mut pfd = [fds::poll_entry(Some(conn.as_fd()), events)];
        if fds::poll(&mut pfd, millis(left)).is_err() {
            return;
        }
        let revents = pfd[0].revents;
        if revents & libc::POLLOUT != 0 {
            let before = out.len();
            if flush(conn, out).is_err() {
                return;
            }
            if out.len() < before {
                // The host is still reading: the wait starts once everything is sent.
                deadline = Instant::now() + LINGER;
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match conn.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(_) => return,
            }
        }
    }
}

fn millis(d: Duration) -> libc::c_int {
    // Rounded up, so a poll never returns just before its deadline and spins.
    libc::c_int::try_from(d.as_millis() + 1).unwrap_or(libc::c_int::MAX)
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Writes as much of `out` as the connection takes. An error means the host is gone.
fn flush<W: Write>(conn: &mut W, out: &mut ByteQueue) -> io::Result<()> {
    while !out.is_empty() {
        match conn.write(out.front()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => out.consume(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Kills what is left of the process's group (it is a session leader: its pid is the group
/// id; a group that is gone fails with ESRCH). Outside PID 1 mode also reaps the process if
/// it has not been reaped yet, so no zombie is left.
fn kill_group(pid: libc::pid_t, opts: Options) {
    let _ = process::kill(-pid, libc::SIGKILL);
    if !opts.reap_all {
        let _ = process::wait_for(pid);
    }
}

/// One of the process's output pipes.
struct Output {
    file: Option<File>,
    kind: u8,
}

/// The loop's state.
struct Session<C> {
    conn: C,
    decoder: FrameDecoder<HostMessage>,
    /// Frames for the host.
    out: ByteQueue,
    pid: libc::pid_t,
    stdin: Option<File>,
    stdin_queue: ByteQueue,
    /// StdinClose arrived: close stdin once the queue is written.
    stdin_close: bool,
    outputs: [Output; 2],
    /// The terminal's master, with a terminal.
    terminal: Option<OwnedFd>,
    sigchld: Option<File>,
    opts: Options,
    end: Option<ProcessEnd>,
    ended_at: Instant,
    last_output: Instant,
    buf: Vec<u8>,
}

impl<C: Read + Write + AsFd> Session<C> {
    fn new(conn: C, child: Spawned, sigchld: Option<OwnedFd>, opts: Options) -> io::Result<Self> {
        for fd in [
            Some(&child.stdout),
            child.stderr.as_ref(),
            child.stdin.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            fds::set_nonblocking(fd.as_fd())?;
        }
        let now = Instant::now();
        Ok(Self {
            conn,
            decoder: FrameDecoder::new(),
            out: ByteQueue::with_capacity(QUEUE_CAPACITY),
            pid: child.pid,
            stdin: child.stdin.map(File::from),
            stdin_queue: ByteQueue::with_capacity(QUEUE_CAPACITY),
            stdin_close: false,
            outputs: [
                Output {
                    file: Some(child.stdout.into()),
                    kind: frame_type::STDOUT,
                },
                Output {
                    file: child.stderr.map(File::from),
                    kind: frame_type::STDERR,
                },
            ],
            terminal: child.terminal,
            sigchld: sigchld.map(File::from),
            opts,
            end: None,
            ended_at: now,
            last_output: now,
            buf: vec![0u8; READ_BUF],
        })
    }

    fn run(mut self) -> SessionOutcome {
        let result = self.run_loop();
        // Whatever is left of the group must not write to the container's files after the
        // sync, nor outlive a session that failed.
        kill_group(self.pid, self.opts);
        let outcome = match result {
            Ok(end) => {
                if self.opts.sync {
                    sys::sync();
                }
                self.push(&AgentMessage::Exited(end));
                SessionOutcome::Reported {
                    status: end.status(),
                }
            }
            Err(Abort::HostGone(reason)) => return SessionOutcome::Aborted { reason },
            Err(Abort::Protocol(message)) => {
                self.push(&AgentMessage::Error {
                    status: STATUS_INIT_ERROR,
                    message,
                });
                SessionOutcome::Reported {
                    status: STATUS_INIT_ERROR,
                }
            }
        };
        linger(&mut self.conn, &mut self.out);
        outcome
    }

    fn push(&mut self, m: &AgentMessage) {
        self.out.push_with(|b| m.encode_into(b));
    }

    /// Runs until the process has ended and its output has been read.
    fn run_loop(&mut self) -> Result<ProcessEnd, Abort> {
        loop {
            self.reap();
            let now = Instant::now();
            if let Some(end) = self.end
                && self.output_done(now)
            {
                return Ok(end);
            }
            let reading_output = !self.out.is_full(OUTPUT_BACKLOG);
            if !reading_output {
                // Waiting for the host is not the pipes being quiet.
                self.last_output = now;
            }
            let conn_events = if self.stdin_queue.is_full(STDIN_BACKLOG) {
                0
            } else {
                libc::POLLIN
            } | if self.out.is_empty() {
                0
            } else {
                libc::POLLOUT
            };
            let output = |o: usize| {
                self.outputs[o]
                    .file
                    .as_ref()
                    .filter(|_| reading_output)
                    .map(AsFd::as_fd)
            };
            let stdin = self
                .stdin
                .as_ref()
                .filter(|_| !self.stdin_queue.is_empty())
                .map(AsFd::as_fd);
            let mut pfds = [
                fds::poll_entry(Some(self.conn.as_fd()), conn_events),
                fds::poll_entry(self.sigchld.as_ref().map(AsFd::as_fd), libc::POLLIN),
                fds::poll_entry(output(0), libc::POLLIN),
                fds::poll_entry(output(1), libc::POLLIN),
                fds::poll_entry(stdin, libc::POLLOUT),
            ];
            fds::poll(&mut pfds, self.poll_timeout(now))
                .map_err(|e| Abort::HostGone(format!("poll: {e}")))?;
            let [conn, sigchld, stdout, stderr, stdin] = pfds.map(|p| p.revents);
            if sigchld != 0 {
                self.drain_sigchld();
            }
            if conn & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
                flush(&mut self.conn, &mut self.out)
                    .map_err(|e| Abort::HostGone(format!("sending to the host: {e}")))?;
            }
            if conn & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                self.read_host()?;
            }
            for (i, revents) in [stdout, stderr].into_iter().enumerate() {
                if revents != 0 {
                    self.read_output(i);
                }
            }
            if stdin != 0 {
                self.write_stdin();
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> libc::c_int {
        if self.end.is_none() || self.out.is_full(OUTPUT_BACKLOG) {
            // Nothing to time out: a SIGCHLD or the host taking output wakes the loop.
            return REAP_INTERVAL_MS;
        }
        let idle = self.ended_at.max(self.last_output) + DRAIN_IDLE;
        let cap = self.ended_at + DRAIN_MAX;
        millis(idle.min(cap).saturating_duration_since(now))
    }

    /// After the end: both pipes at EOF, or quiet for [`DRAIN_IDLE`], or [`DRAIN_MAX`]
    /// passed (while not waiting for the host to take output).
    fn output_done(&self, now: Instant) -> bool {
        if self.outputs.iter().all(|o| o.file.is_none()) {
            return true;
        }
        if self.out.is_full(OUTPUT_BACKLOG) {
            return false;
        }
        now >= self.ended_at.max(self.last_output) + DRAIN_IDLE || now >= self.ended_at + DRAIN_MAX
    }

    fn reap(&mut self) {
        let target = if self.opts.reap_all { -1 } else { self.pid };
        while let Ok(Some((pid, status))) = process::wait_nohang(target) {
            if pid == self.pid
                && self.end.is_none()
                && let Some(end) = ProcessEnd::from_wait_status(status)
            {
                self.end = Some(end);
                self.ended_at = Instant::now();
            }
        }
    }

    fn drain_sigchld(&mut self) {
        let mut buf = [0u8; 64];
        if let Some(pipe) = &mut self.sigchld {
            while matches!(pipe.read(&mut buf), Ok(n) if n > 0) {}
        }
    }

    fn read_host(&mut self) -> Result<(), Abort> {
        match self.conn.read(&mut self.buf[..READ_CHUNK]) {
            Ok(0) => {
                return Err(Abort::HostGone(
                    "the host closed the connection before the process exited".into(),
                ));
            }
            Ok(n) => self.decoder.push(&self.buf[..n]),
            Err(e) if is_transient(&e) => return Ok(()),
            Err(e) => return Err(Abort::HostGone(format!("reading from the host: {e}"))),
        }
        while let Some(m) = self.decoder.next_message()? {
            self.handle(m)?;
        }
        Ok(())
    }

    fn handle(&mut self, m: HostMessage) -> Result<(), Abort> {
        match m {
            HostMessage::Start(_) => {
                return Err(Abort::Protocol("Start sent twice".into()));
            }
            HostMessage::Stdin(data) => {
                // Dropped when stdin is not forwarded, closed, or the process closed it.
                if self.stdin.is_some() && !self.stdin_close {
                    self.stdin_queue.push(&data);
                }
            }
            HostMessage::StdinClose if self.terminal.is_some() => {
                // A terminal stays open (it is also the output): its reader sees the
                // end-of-file character instead.
                if self.stdin.is_some() && !self.stdin_close {
                    self.stdin_queue.push(&[EOF_CHAR]);
                }
                self.stdin_close = true;
            }
            HostMessage::StdinClose => {
                self.stdin_close = true;
                if self.stdin_queue.is_empty() {
                    self.stdin = None;
                }
            }
            HostMessage::Signal(sig) => {
                if self.end.is_none() {
                    // A bad number fails with EINVAL: nothing to do about it.
                    let _ = process::kill(self.pid, sig);
                }
            }
            HostMessage::Resize(size) => {
                if let Some(t) = &self.terminal {
                    // A terminal whose other side is gone: nothing to resize.
                    let _ = sys::pty::set_size(t.as_fd(), size);
                }
            }
            HostMessage::SignalAll(sig) => sys::process::signal_container(sig),
        }
        Ok(())
    }

    fn read_output(&mut self, i: usize) {
        let Output { file, kind } = &mut self.outputs[i];
        let Some(f) = file else { return };
        match f.read(&mut self.buf[..MAX_CHUNK]) {
            Ok(0) => *file = None,
            Ok(n) => {
                let (kind, data) = (*kind, &self.buf[..n]);
                self.out.push_with(|b| encode_frame(kind, data, b));
                self.last_output = Instant::now();
            }
            Err(e) if is_transient(&e) => {}
            // Nothing more can come from it.
            Err(_) => *file = None,
        }
    }

    fn write_stdin(&mut self) {
        if let Some(f) = &mut self.stdin {
            // EPIPE (the process closed its stdin) or another error: nobody will read it.
            if flush(f, &mut self.stdin_queue).is_err() {
                self.stdin_queue.clear();
                self.stdin = None;
            }
        }
        if self.stdin_close && self.stdin_queue.is_empty() {
            self.stdin = None;
        }
    }
}

#[cfg(test)]
mod rootfs_tests;
#[cfg(test)]
mod tests;
