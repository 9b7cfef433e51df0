//! The monitor's control socket (`control.sock` in the container's state directory): one
//! request line per connection, one answer line (`ok` or `error: ...`).
//!
//! Requests: `start` (let the agent start the process), `kill N` (signal N to the process;
//! before `start` it stops the container with status 128+N), `killall N` (signal N to every
//! process of the container; before `start` the same as `kill N`), `pause` and `resume`
//! (the VM's vCPUs).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc::Sender;
use std::time::Duration;

use crate::container::SessionHandle;
use crate::exit::ExitReason;
use crate::vmm::control::VmControl;

use super::state::short_socket_path;

/// The socket's name in the container's directory.
pub const SOCKET: &str = "control.sock";
/// How long a client waits for the monitor.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Errors talking to a monitor.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the container's monitor: {0}")]
    Io(#[from] io::Error),
    #[error("the container's monitor refused: {0}")]
    Refused(String),
}

/// Binds the control socket in `dir`.
pub fn bind(dir: &Path) -> io::Result<UnixListener> {
    let p = short_socket_path(dir, SOCKET)?;
    UnixListener::bind(&p.path)
}

/// Sends `request` to the monitor of the container in `dir`.
pub fn request(dir: &Path, request: &str) -> Result<(), ControlError> {
    let p = short_socket_path(dir, SOCKET)?;
    let mut stream = UnixStream::connect(&p.path)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    match line.trim_end() {
        "ok" => Ok(()),
        "" => Err(ControlError::Refused("no answer".into())),
        other => Err(ControlError::Refused(
            other.strip_prefix("error: ").unwrap_or(other).to_string(),
        )),
    }
}

/// What the monitor does for requests.
pub struct Server {
    pub handle: SessionHandle,
    /// Sends the go to the session (taken by the first `start`).
    pub go: Mutex<Option<Sender<()>>>,
    /// Called after the go was given.
    pub on_start: Box<dyn Fn() + Send + Sync>,
    /// Pauses and resumes the VM.
    pub vm: std::sync::Arc<VmControl>,
}

impl Server {
    /// Answers one request line.
    pub fn answer(&self, line: &str) -> Result<(), String> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("start"), None, None) => {
                let go = self.go.lock().unwrap_or_else(|p| p.into_inner()).take();
                let go = go.ok_or("the container was already started")?;
                go.send(()).map_err(|_| "the container has stopped")?;
                (self.on_start)();
                Ok(())
            }
            (Some(kill @ ("kill" | "killall")), Some(n), None) => {
                let sig: i32 = n
                    .parse()
                    .ok()
                    .filter(|s| (1..=64).contains(s))
                    .ok_or_else(|| format!("bad signal {n:?}"))?;
                if self.handle.shared.is_started() {
                    let sent = if kill == "killall" {
                        self.handle.shared.signal_all(sig)
                    } else {
                        self.handle.shared.forward_signal(sig)
                    };
                    if sent {
                        Ok(())
                    } else {
                        Err("the container's process is gone".into())
                    }
                } else {
                    log::info!("signal {sig} before the process started: stopping the VM");
                    let status = crate::container::signals::status_for(sig);
                    self.handle.latch.request(ExitReason::GuestStatus(status));
                    Ok(())
                }
            }
            (Some("pause"), None, None) => self.vm.pause().map_err(|e| e.to_string()),
            (Some("resume"), None, None) => self.vm.resume().map_err(|e| e.to_string()),
            _ => Err(format!("unknown request {line:?}")),
        }
    }

    /// Serves `listener` until the process ends (the thread dies with it).
    pub fn serve(self, listener: UnixListener) -> io::Result<()> {
        std::thread::Builder::new()
            .name("oci-control".into())
            .spawn(move || {
                crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Monitor);
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(TIMEOUT));
                    let mut line = String::new();
                    let Ok(reader) = conn.try_clone() else {
                        continue;
                    };
                    if BufReader::new(reader).read_line(&mut line).is_err() {
                        continue;
                    }
                    let reply = match self.answer(line.trim()) {
                        Ok(()) => "ok\n".to_string(),
                        Err(e) => format!("error: {e}\n"),
                    };
                    let _ = conn.write_all(reply.as_bytes());
                }
            })
            .map(|_| ())
    }
}
