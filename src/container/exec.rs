//! Further processes in a running container VM ("exec"), as a library: the OCI runtime's
//! `exec` and a containerd shim use the same calls.
//!
//! The guest agent accepts exec sessions on guest vsock port
//! [`EXEC_VSOCK_PORT`](crate::agent::protocol::EXEC_VSOCK_PORT). The host reaches it through
//! the VM's vsock Unix socket (`VsockConfig::uds`): connect, send `CONNECT 1025`, read `OK`.
//! From there the session is the one of the container's own process (Hello, Start,
//! Started, output, Exited; see [`crate::agent::protocol`]), but its end does not end the VM.
//!
//! ```no_run
//! # use hvlite::container::exec::ExecSession;
//! # use hvlite::agent::protocol::ProcessSpec;
//! # fn main() -> Result<(), hvlite::container::exec::ExecError> {
//! let spec = ProcessSpec::new(["ls", "/"]);
//! let session = ExecSession::start("/run/vm/vsock.sock".as_ref(), &spec)?;
//! let control = session.control(); // signal, resize, stdin: from any thread
//! let end = session.wait(&mut std::io::stdout(), &mut std::io::stderr())?;
//! # let _ = (control, end); Ok(()) }
//! ```

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::protocol::{
    AgentMessage, EXEC_VSOCK_PORT, HostMessage, ProcessEnd, ProcessSpec, ProtocolError, WindowSize,
    read_message, write_message,
};

use super::session::{self, SessionError};

/// How long connecting and the start of the process may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest answer to a `CONNECT` line (`OK <port>\n`).
const MAX_CONNECT_ANSWER: usize = 64;

/// Why an exec session failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot connect to the VM's vsock socket {0}")]
    Connect(PathBuf, #[source] io::Error),
    #[error("the VM did not accept a connection to the agent's exec port {port}: {answer:?}")]
    Refused { port: u32, answer: String },
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The agent could not start the process (127 not found, 126 not executable, 125 other).
    #[error("{message}")]
    Start { status: u8, message: String },
}

impl From<ProtocolError> for ExecError {
    fn from(e: ProtocolError) -> Self {
        Self::Session(SessionError::Protocol(e))
    }
}

fn io_err(e: io::Error) -> ExecError {
    ExecError::Session(SessionError::Io(e))
}

/// Connects to guest vsock `port` through the VM's vsock Unix socket `uds`.
pub fn connect_guest_port(uds: &Path, port: u32) -> Result<UnixStream, ExecError> {
    let mut stream = UnixStream::connect(uds).map_err(|e| ExecError::Connect(uds.into(), e))?;
    stream
        .set_read_timeout(Some(START_TIMEOUT))
        .map_err(io_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err)?;
    // Byte by byte: what follows the line is the agent's.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.len() < MAX_CONNECT_ANSWER {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => answer.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if !answer.starts_with("OK ") {
        return Err(ExecError::Refused { port, answer });
    }
    Ok(stream)
}

/// The sending half of an exec session: cheap to clone, usable from any thread while
/// another one waits in [`ExecSession::wait`]. Calls after the session ended fail with
/// an I/O error (the agent closed the connection) or are ignored by the agent.
#[derive(Clone, Debug)]
pub struct ProcessControl {
    writer: Arc<Mutex<UnixStream>>,
}

impl ProcessControl {
    fn send(&self, msg: &HostMessage) -> Result<(), ExecError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_message(&mut *w, msg).map_err(io_err)
    }

    /// Sends signal `sig` to the process (a containerd `Kill` of an exec'd process).
    pub fn signal(&self, sig: i32) -> Result<(), ExecError> {
        self.send(&HostMessage::Signal(sig))
    }

    /// Sends signal `sig` to every process of the container (`kill --all`).
    pub fn signal_all(&self, sig: i32) -> Result<(), ExecError> {
        self.send(&HostMessage::SignalAll(sig))
    }

    /// Sets the window size of the process's terminal (ignored without one).
    pub fn resize(&self, size: WindowSize) -> Result<(), ExecError> {
        self.send(&HostMessage::Resize(size))
    }

    /// Writes `data` to the process's stdin (the spec must have `stdin` or `terminal`).
    pub fn write_stdin(&self, data: &[u8]) -> Result<(), ExecError> {
        for m in HostMessage::stdin_chunks(data) {
            self.send(&m)?;
        }
        Ok(())
    }

    /// Closes the process's stdin once the data sent before is written (containerd's
    /// `CloseIO`); with a terminal, writes its end-of-file character.
    pub fn close_stdin(&self) -> Result<(), ExecError> {
        self.send(&HostMessage::StdinClose)
    }
}

/// A process started in a running container.
#[derive(Debug)]
pub struct ExecSession {
    reader: UnixStream,
    control: ProcessControl,
    pid: u32,
}

impl ExecSession {
    /// Starts `spec` in the VM whose vsock Unix socket is `uds`; returns once the process
    /// runs. A process the agent could not start is [`ExecError::Start`].
    pub fn start(uds: &Path, spec: &ProcessSpec) -> Result<Self, ExecError> {
        spec.validate()?;
        // An engine may exec as soon as the container is reported running, which can be
        // before the agent's exec server listens (it starts once the container's root is
        // mounted): the guest then refuses the connection with an empty answer. Try again
        // until it listens or START_TIMEOUT passes.
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pause = Duration::from_millis(20);
        let stream = loop {
            match connect_guest_port(uds, EXEC_VSOCK_PORT) {
                Err(ExecError::Refused { answer, .. })
                    if answer.is_empty() && Instant::now() + pause < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => break other?,
            }
        };
        Self::start_on(stream, spec)
    }

    /// [`start`](Self::start) on a stream already connected to the agent's exec port.
    pub fn start_on(stream: UnixStream, spec: &ProcessSpec) -> Result<Self, ExecError> {
        let mut reader = stream;
        session::read_hello(&mut reader)?;
        let mut writer = reader.try_clone().map_err(io_err)?;
        write_message(&mut writer, &HostMessage::Start(spec.clone())).map_err(io_err)?;
        let pid = match read_message::<_, AgentMessage>(&mut reader)? {
            Some(AgentMessage::Started { pid }) => pid,
            Some(AgentMessage::Error { status, message }) => {
                return Err(ExecError::Start { status, message });
            }
            Some(other) => {
                return Err(SessionError::Unexpected(session::kind(&other), "Started").into());
            }
            None => return Err(SessionError::Closed.into()),
        };
        // The process may run for as long as it likes.
        reader.set_read_timeout(None).map_err(io_err)?;
        Ok(Self {
            reader,
            control: ProcessControl {
                writer: Arc::new(Mutex::new(writer)),
            },
            pid,
        })
    }

    /// The process's pid in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The sending half: signals, window sizes, stdin.
    pub fn control(&self) -> ProcessControl {
        self.control.clone()
    }

    /// Copies the process's output (`stdout`; `stderr`, which a terminal does not have)
    /// until it has ended; returns how. Write errors on the outputs are ignored (a closed
    /// reader is not the process's problem).
    pub fn wait(
        mut self,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ProcessEnd, ExecError> {
        loop {
            match read_message::<_, AgentMessage>(&mut self.reader)? {
                Some(AgentMessage::Stdout(d)) => {
                    let _ = stdout.write_all(&d).and_then(|()| stdout.flush());
                }
                Some(AgentMessage::Stderr(d)) => {
                    let _ = stderr.write_all(&d).and_then(|()| stderr.flush());
                }
                Some(AgentMessage::Exited(end)) => return Ok(end),
                Some(AgentMessage::Error { status, message }) => {
                    return Err(ExecError::Start { status, message });
                }
                Some(other) => {
                    return Err(SessionError::Unexpected(session::kind(&other), "Exited").into());
                }
                None => return Err(SessionError::Closed.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::PROTOCOL_VERSION;
    use std::os::unix::net::UnixListener;

    /// A fake VM socket: answers the CONNECT line with `answer`, then plays the agent with
    /// `agent` on the connection.
    fn vm(
        answer: &'static str,
        agent: impl FnOnce(&mut UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            agent(&mut s);
            String::from_utf8(line).unwrap()
        });
        (dir, path, t)
    }

    fn hello(s: &mut UnixStream) {
        let hello = AgentMessage::Hello {
            version: PROTOCOL_VERSION,
        };
        write_message(s, &hello).unwrap();
    }

    #[test]
    fn a_whole_session_with_signals_resize_and_stdin() {
        let (_d, path, t) = vm("OK 1025\n", |s| {
            hello(s);
            let start = read_message::<_, HostMessage>(s).unwrap().unwrap();
            assert!(matches!(start, HostMessage::Start(ref spec) if spec.args == ["sh"]));
            write_message(s, &AgentMessage::Started { pid: 42 }).unwrap();
            for expected in [
                HostMessage::Signal(15),
                HostMessage::Resize(WindowSize {
                    height: 9,
                    width: 33,
                }),
                HostMessage::Stdin(b"in".to_vec()),
                HostMessage::StdinClose,
                HostMessage::SignalAll(9),
            ] {
                assert_eq!(read_message::<_, HostMessage>(s).unwrap(), Some(expected));
            }
            write_message(s, &AgentMessage::Stdout(b"out".to_vec())).unwrap();
            write_message(s, &AgentMessage::Stderr(b"err".to_vec())).unwrap();
            write_message(s, &AgentMessage::Exited(ProcessEnd::Signaled(15))).unwrap();
        });
        let session = ExecSession::start(&path, &ProcessSpec::new(["sh"])).unwrap();
        assert_eq!(session.pid(), 42);
        let c = session.control();
        c.signal(15).unwrap();
        c.resize(WindowSize {
            height: 9,
            width: 33,
        })
        .unwrap();
        c.write_stdin(b"in").unwrap();
        c.close_stdin().unwrap();
        c.signal_all(9).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let end = session.wait(&mut out, &mut err).unwrap();
        assert_eq!(end, ProcessEnd::Signaled(15));
        assert_eq!((&out[..], &err[..]), (&b"out"[..], &b"err"[..]));
        assert_eq!(t.join().unwrap(), "CONNECT 1025");
    }

    #[test]
    fn failures_are_typed() {
        let (_d, path, t) = vm("nope\n", |_| {});
        let e = ExecSession::start(&path, &ProcessSpec::new(["sh"])).unwrap_err();
        assert!(matches!(e, ExecError::Refused { port: 1025, ref answer } if answer == "nope"));
        t.join().unwrap();

        let (_d, path, t) = vm("OK 1025\n", |s| {
            hello(s);
            let _ = read_message::<_, HostMessage>(s).unwrap();
            let error = AgentMessage::Error {
                status: 127,
                message: "x: command not found".into(),
            };
            write_message(s, &error).unwrap();
        });
        let e = ExecSession::start(&path, &ProcessSpec::new(["x"])).unwrap_err();
        assert!(matches!(e, ExecError::Start { status: 127, .. }), "{e:?}");
        t.join().unwrap();

        let (_d, path, t) = vm("OK 1025\n", |s| {
            write_message(s, &AgentMessage::Hello { version: 99 }).unwrap();
        });
        let e = ExecSession::start(&path, &ProcessSpec::new(["x"])).unwrap_err();
        assert!(
            matches!(e, ExecError::Session(SessionError::Version(99))),
            "{e:?}"
        );
        t.join().unwrap();

        // The agent goes away mid-session.
        let (_d, path, t) = vm("OK 1025\n", |s| {
            hello(s);
            let _ = read_message::<_, HostMessage>(s).unwrap();
            write_message(s, &AgentMessage::Started { pid: 1 }).unwrap();
        });
        let session = ExecSession::start(&path, &ProcessSpec::new(["x"])).unwrap();
        t.join().unwrap();
        let e = session.wait(&mut io::sink(), &mut io::sink()).unwrap_err();
        assert!(
            matches!(e, ExecError::Session(SessionError::Closed)),
            "{e:?}"
        );

        let missing = Path::new("/nonexistent/hvlite/v.sock");
        let e = ExecSession::start(missing, &ProcessSpec::new(["x"])).unwrap_err();
        assert!(matches!(e, ExecError::Connect(..)), "{e:?}");
        let e = ExecSession::start(missing, &ProcessSpec::new(Vec::<String>::new())).unwrap_err();
        assert!(
            matches!(e, ExecError::Session(SessionError::Protocol(_))),
            "{e:?}"
        );
    }
}
