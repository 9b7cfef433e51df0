//! The host side of a session with the guest agent (protocol: [`crate::agent::protocol`]).
//!
//! The vsock device hands over the agent's connection; this side checks the agent's Hello,
//! sends the process spec, copies the process's stdout and stderr to hvlite's own, feeds
//! it hvlite's stdin when asked, forwards signals, and ends the VM with the process's exit
//! status. Anything unexpected from the agent ends the VM with a fatal error rather than
//! leaving hvlite waiting.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::agent::protocol::{
    AgentMessage, GuestSync, HostMessage, MAX_CHUNK, PROTOCOL_VERSION, ProcessSpec, WindowSize,
    read_message, write_message,
};
use crate::exit::{ExitLatch, ExitReason};

/// How often the session looks at the exit latch while waiting for the agent.
const POLL: Duration = Duration::from_millis(100);

/// Where the process's output goes.
pub struct Outputs {
    /// The process's stdout.
    pub stdout: Box<dyn Write + Send>,
    /// The process's stderr.
    pub stderr: Box<dyn Write + Send>,
    /// Feeds the process's stdin (`-i`); `None` gives it /dev/null.
    pub stdin: Option<Box<dyn Read + Send>>,
}

/// Holds the process back after the agent's Hello until the host says go (an OCI
/// runtime's `create` / `start` split): the agent is up, the process not yet started.
#[derive(Debug)]
pub struct StartGate {
    /// Told once the agent has connected and said Hello.
    pub ready: Sender<()>,
    /// The session sends Start when this receives (or is dropped: then it stops).
    pub go: Receiver<()>,
}

/// What the other threads (the signal forwarder) see of a session.
#[derive(Debug, Default)]
pub struct SessionShared {
    writer: Mutex<Option<UnixStream>>,
    started: AtomicBool,
    /// Input from [`send_stdin`](Self::send_stdin) before the process started: sent once
    /// it has (`None` after that). Taken with `started` set under its lock.
    early_input: Mutex<Option<Vec<u8>>>,
    gate: Mutex<Option<StartGate>>,
}

impl SessionShared {
    /// Sends `msg` to the agent, if connected. Frames from different threads never mix.
    fn send(&self, msg: &HostMessage) -> io::Result<bool> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match w.as_mut() {
            Some(stream) => write_message(stream, msg).map(|()| true),
            None => Ok(false),
        }
    }

    /// Forwards signal `sig` to the process. Returns false when there is no process yet
    /// (the agent has not started it) or the agent is gone.
    pub fn forward_signal(&self, sig: i32) -> bool {
        self.started.load(Ordering::SeqCst) && self.send_signal(sig)
    }

    /// Sends signal `sig` to every process of the container (`kill --all`). False when the
    /// process has not started or the agent is gone.
    pub fn signal_all(&self, sig: i32) -> bool {
        self.started.load(Ordering::SeqCst)
            && matches!(self.send(&HostMessage::SignalAll(sig)), Ok(true))
    }

    /// Sets the window size of the process's terminal. False when it was not sent (the
    /// process has not started, or the agent is gone).
    pub fn resize(&self, size: WindowSize) -> bool {
        self.started.load(Ordering::SeqCst)
            && matches!(self.send(&HostMessage::Resize(size)), Ok(true))
    }

    /// Writes `data` to the process's stdin (for a front end that feeds it itself, as the
    /// OCI runtime's terminal relay does). Data before the process started is kept and
    /// sent when it has. False when the agent is gone.
    pub fn send_stdin(&self, data: &[u8]) -> bool {
        {
            let mut early = self.early_input.lock().unwrap_or_else(|p| p.into_inner());
            if !self.started.load(Ordering::SeqCst) {
                early.get_or_insert_with(Vec::new).extend_from_slice(data);
                return true;
            }
        }
        HostMessage::stdin_chunks(data).all(|m| matches!(self.send(&m), Ok(true)))
    }

    /// Marks the process started and sends the input kept until then.
    fn set_started(&self) {
        let mut early = self.early_input.lock().unwrap_or_else(|p| p.into_inner());
        self.started.store(true, Ordering::SeqCst);
        if let Some(data) = early.take() {
            for m in HostMessage::stdin_chunks(&data) {
                if !matches!(self.send(&m), Ok(true)) {
                    break;
                }
            }
        }
    }

    /// Closes the process's stdin (a terminal gets its end-of-file character).
    pub fn close_stdin(&self) {
        if self.started.load(Ordering::SeqCst) {
            let _ = self.send(&HostMessage::StdinClose);
        }
    }

    /// Whether the agent has started the process.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    fn send_signal(&self, sig: i32) -> bool {
        match self.send(&HostMessage::Signal(sig)) {
            Ok(sent) => sent,
            Err(e) => {
                log::warn!("cannot forward signal {sig} to the guest agent: {e}");
                false
            }
        }
    }
}

/// Starts the session thread: it waits for the agent's connection on `agent`, runs
/// `spec`, and requests the VM's end through `latch` when the process ended or the session
/// failed.
pub fn spawn(
    spec: ProcessSpec,
    agent: Receiver<UnixStream>,
    latch: Arc<ExitLatch>,
    outputs: Outputs,
) -> io::Result<(Arc<SessionShared>, JoinHandle<()>)> {
    spawn_gated(spec, agent, latch, outputs, None)
}

/// [`spawn`], with the process held back by `gate` until the host says go.
pub fn spawn_gated(
    spec: ProcessSpec,
    agent: Receiver<UnixStream>,
    latch: Arc<ExitLatch>,
    outputs: Outputs,
    gate: Option<StartGate>,
) -> io::Result<(Arc<SessionShared>, JoinHandle<()>)> {
    let shared = Arc::new(SessionShared {
        gate: Mutex::new(gate),
        ..SessionShared::default()
    });
    let s = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("agent-session".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Host);
            let Some(stream) = wait_for_agent(&agent, &latch) else {
                return;
            };
            let end = run(stream, &spec, &s, outputs, &latch);
            let reason = match end {
                Ok(status) => ExitReason::GuestStatus(status),
                Err(e) => ExitReason::Fatal(e.to_string()),
            };
            // A VM that already ended (reset, shutdown) keeps its own reason.
            latch.request(reason);
            *s.writer.lock().unwrap_or_else(|p| p.into_inner()) = None;
        })?;
    Ok((shared, thread))
}

fn wait_for_agent(agent: &Receiver<UnixStream>, latch: &ExitLatch) -> Option<UnixStream> {
    loop {
        match agent.recv_timeout(POLL) {
            Ok(stream) => return Some(stream),
            Err(RecvTimeoutError::Timeout) if !latch.is_set() => {}
            Err(_) => return None,
        }
    }
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("guest agent: {0}")]
    Protocol(#[from] crate::agent::protocol::ProtocolError),
    #[error("cannot talk to the guest agent")]
    Io(#[source] io::Error),
    #[error("the guest agent speaks protocol version {0}, hvlite speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("the guest agent sent {0} before {1}")]
    Unexpected(&'static str, &'static str),
    #[error("the guest agent closed the connection before reporting the command's exit status")]
    Closed,
    #[error("the container was stopped before its process was started")]
    NotStarted,
}

/// The name of an agent message, for errors.
pub(crate) fn kind(msg: &AgentMessage) -> &'static str {
    match msg {
        AgentMessage::Hello { .. } => "Hello",
        AgentMessage::Started { .. } => "Started",
        AgentMessage::Stdout(_) => "Stdout",
        AgentMessage::Stderr(_) => "Stderr",
        AgentMessage::Exited(_) => "Exited",
        AgentMessage::Error { .. } => "Error",
    }
}

/// Runs one session over `stream`; returns the status hvlite exits with.
pub fn run(
    stream: UnixStream,
    spec: &ProcessSpec,
    shared: &Arc<SessionShared>,
    mut outputs: Outputs,
    latch: &Arc<ExitLatch>,
) -> Result<u8, SessionError> {
    stream.set_nonblocking(false).map_err(SessionError::Io)?;
    let mut reader = stream;
    let writer = reader.try_clone().map_err(SessionError::Io)?;
    read_hello(&mut reader)?;
    log::info!(
        "guest agent connected {:.1} ms after process start",
        since_start_ms()
    );
    *shared.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
    let gate = shared.gate.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(gate) = gate {
        wait_for_go(&gate, latch)?;
    }
    let mut spec = spec.clone();
    spec.guest_sync.get_or_insert_with(guest_sync);
    shared
        .send(&HostMessage::Start(spec))
        .map_err(SessionError::Io)?;
    let mut stdin = outputs.stdin.take();
    loop {
        let Some(msg) = read_message::<_, AgentMessage>(&mut reader)? else {
            return Err(SessionError::Closed);
        };
        match msg {
            AgentMessage::Started { pid } => {
                log::debug!("container process started (guest pid {pid})");
                shared.set_started();
                if let Some(input) = stdin.take() {
                    spawn_stdin_pump(input, Arc::clone(shared), Arc::clone(latch))
                        .map_err(SessionError::Io)?;
                }
            }
            AgentMessage::Stdout(data) => copy_out(&mut outputs.stdout, &data, "stdout"),
            AgentMessage::Stderr(data) => copy_out(&mut outputs.stderr, &data, "stderr"),
            AgentMessage::Exited(end) => {
                log::info!(
                    "container process ended ({end:?}) {:.1} ms after process start",
                    since_start_ms()
                );
                return Ok(end.status());
            }
            AgentMessage::Error { status, message } => {
                let _ = writeln!(outputs.stderr, "hvlite: {message}");
                let _ = outputs.stderr.flush();
                return Ok(status);
            }
            AgentMessage::Hello { .. } => {
                return Err(SessionError::Unexpected("a second Hello", "Exited"));
            }
        }
    }
}

/// Reads the agent's first frame: `Hello` with this side's protocol version.
pub fn read_hello<R: Read>(reader: &mut R) -> Result<(), SessionError> {
    match read_message::<_, AgentMessage>(reader)? {
        Some(AgentMessage::Hello { version }) if version == PROTOCOL_VERSION => Ok(()),
        Some(AgentMessage::Hello { version }) => Err(SessionError::Version(version)),
        Some(other) => Err(SessionError::Unexpected(kind(&other), "Hello")),
        None => Err(SessionError::Closed),
    }
}

/// Bytes of host entropy sent with every `Start`.
pub const SYNC_ENTROPY: usize = 32;

/// The host's wall clock now and fresh random bytes: what a guest restored from a template
/// must not take from the template (docs/snapshots.md, "Templates").
pub fn guest_sync() -> GuestSync {
    let realtime_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut entropy = vec![0u8; SYNC_ENTROPY];
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::getrandom(entropy.as_mut_ptr().cast(), entropy.len(), 0) };
    if usize::try_from(n).ok() != Some(entropy.len()) {
        log::warn!(
            "getrandom: {}: the guest gets no entropy from the host",
            io::Error::last_os_error()
        );
        entropy.clear();
    }
    GuestSync {
        realtime_ns,
        entropy,
    }
}

/// Reports the agent ready and waits for the go (or the VM's end).
fn wait_for_go(gate: &StartGate, latch: &ExitLatch) -> Result<(), SessionError> {
    // Nobody listening for the readiness is not an error: the go still decides.
    let _ = gate.ready.send(());
    loop {
        match gate.go.recv_timeout(POLL) {
            Ok(()) => return Ok(()),
            Err(RecvTimeoutError::Timeout) if !latch.is_set() => {}
            Err(_) => return Err(SessionError::NotStarted),
        }
    }
}

/// Milliseconds since hvlite started (for the timing log lines the benchmarks read).
fn since_start_ms() -> f64 {
    crate::process_stats::PROCESS_START
        .get()
        .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0)
}

/// Writes process output; a closed hvlite stdout (EPIPE) is not the container's problem.
fn copy_out(out: &mut Box<dyn Write + Send>, data: &[u8], what: &str) {
    if let Err(e) = out.write_all(data).and_then(|()| out.flush()) {
        log::debug!("cannot write the container's {what}: {e}");
    }
}

/// Copies `input` to the process's stdin in chunks, then closes it.
fn spawn_stdin_pump(
    mut input: Box<dyn Read + Send>,
    shared: Arc<SessionShared>,
    latch: Arc<ExitLatch>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Host);
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("cannot read stdin: {e}");
                        0
                    }
                };
                let msg = if n == 0 {
                    HostMessage::StdinClose
                } else {
                    HostMessage::Stdin(buf[..n].to_vec())
                };
                match shared.send(&msg) {
                    Ok(true) if n > 0 && !latch.is_set() => {}
                    // Closed, disconnected or the VM is ending: stop.
                    _ => return,
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
