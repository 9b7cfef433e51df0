//! The API server: a Unix socket, an accept thread and one thread per connection (up to
//! [`Limits::max_connections`]). Each request is passed to the VMM over a channel with a
//! reply sender, and the connection waits for the answer; other connections go on
//! meanwhile. Clients are bounded in time (idle, request and write timeouts) and space
//! (one request's worth of buffer), so a slow or broken one stalls only itself.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::http::{self, HttpResponse, Parsed};
use super::{ApiRequest, ApiResponse, parse_request};

/// Where the server sends each request, with the sender for the VMM's answer.
pub type VmmSender = mpsc::Sender<(ApiRequest, mpsc::Sender<ApiResponse>)>;

/// How much time and how many connections clients get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// A kept-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// A request must arrive whole within this from its first byte, else 408 and close.
    pub request_timeout: Duration,
    /// A response the client does not read within this closes the connection.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 16,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("API socket {0} is in use by a running process")]
    InUse(PathBuf),
    #[error("API socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot check the existing API socket {0}")]
    Probe(PathBuf, #[source] io::Error),
    #[error("cannot remove the stale API socket {0}")]
    RemoveStale(PathBuf, #[source] io::Error),
    #[error("cannot bind the API socket {0}")]
    Bind(PathBuf, #[source] io::Error),
    #[error("cannot set up the API server's event loop")]
    Setup(#[source] io::Error),
    #[error("cannot start the API server thread")]
    Thread(#[source] io::Error),
}

/// How often a connection waiting for the VMM checks whether the server is stopping.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Bytes read from a client at a time.
const READ_CHUNK: usize = 4096;
/// epoll tokens of the accept thread.
const TOKEN_LISTENER: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// A running API server; dropping it (or [`ApiServer::shutdown`]) stops it, closes every
/// connection and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    /// Device and inode of the socket file we bound, so that drop removes only ours.
    file_id: (u64, u64),
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` and serves it with the default [`Limits`]; see [`Self::start_with`].
    pub fn start(path: &Path, vmm: VmmSender) -> Result<Self, ApiServerError> {
        Self::start_with(path, vmm, Limits::default())
    }

    /// Binds `path` and serves it. Returns once the socket listens, so clients may
    /// connect as soon as this returns. A stale socket at `path` (nobody listening) is
    /// replaced; a live one or any other file is an error.
    pub fn start_with(path: &Path, vmm: VmmSender, limits: Limits) -> Result<Self, ApiServerError> {
        let listener = bind(path)?;
        let server = Self::serve(path, listener, vmm, limits);
        match &server {
            Ok(_) => log::info!("API server listening on {}", path.display()),
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
        server
    }

    /// Starts the accept thread on a bound socket.
    fn serve(
        path: &Path,
        listener: UnixListener,
        vmm: VmmSender,
        limits: Limits,
    ) -> Result<Self, ApiServerError> {
        let meta =
            std::fs::symlink_metadata(path).map_err(|e| ApiServerError::Probe(path.into(), e))?;
        let acceptor = Acceptor::new(listener, vmm, limits)?;
        let stop = acceptor.stop.clone();
        let wake = acceptor.wake.try_clone().map_err(ApiServerError::Setup)?;
        let thread = thread::Builder::new()
            .name("hvlite-api".into())
            .spawn(move || {
                crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Api);
                acceptor.run()
            })
            .map_err(ApiServerError::Thread)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            file_id: (meta.dev(), meta.ino()),
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every connection (a request waiting for the VMM is
    /// answered 503), joins the threads and removes the socket file.
    pub fn shutdown(self) {}
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.wake.write(1) {
            log::error!("cannot wake the API server thread: {e}");
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the API server thread panicked");
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.file_id);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove the API socket {}: {e}", self.path.display());
        }
    }
}

/// Binds a listening socket at `path`, replacing a stale socket file.
fn bind(path: &Path) -> Result<UnixListener, ApiServerError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ApiServerError::NotASocket(path.into()));
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(ApiServerError::InUse(path.into())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("removing the stale API socket {}", path.display());
                std::fs::remove_file(path)
                    .map_err(|e| ApiServerError::RemoveStale(path.into(), e))?;
            }
            Err(e) => return Err(ApiServerError::Probe(path.into(), e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApiServerError::Probe(path.into(), e)),
    }
    super::socket::bind_private(path).map_err(|e| ApiServerError::Bind(path.into(), e))
}

/// A connection's thread, and its socket to shut down when the server stops.
struct Conn {
    stream: UnixStream,
    thread: JoinHandle<()>,
}

/// The accept thread's state.
struct Acceptor {
    listener: UnixListener,
    epoll: Epoll,
    wake: EventFd,
    stop: Arc<AtomicBool>,
    vmm: VmmSender,
    limits: Limits,
    conns: Vec<Conn>,
}

impl Acceptor {
    fn new(listener: UnixListener, vmm: VmmSender, limits: Limits) -> Result<Self, ApiServerError> {
        let setup = |listener: &UnixListener| -> io::Result<(Epoll, EventFd)> {
            listener.set_nonblocking(true)?;
            let wake = EventFd::new(libc::EFD_NONBLOCK)?;
            let epoll = Epoll::new()?;
            for (fd, token) in [
                (listener.as_raw_fd(), TOKEN_LISTENER),
                (wake.as_raw_fd(), TOKEN_STOP),
            ] {
                let event = EpollEvent::new(EventSet::IN, token);
                epoll.ctl(ControlOperation::Add, fd, event)?;
            }
            Ok((epoll, wake))
        };
        let (epoll, wake) = setup(&listener).map_err(ApiServerError::Setup)?;
        Ok(Self {
            listener,
            epoll,
            wake,
            stop: Arc::new(AtomicBool::new(false)),
            vmm,
            limits,
            conns: Vec::new(),
        })
    }

    fn run(mut self) {
        let mut events = [EpollEvent::default(); 2];
        while !self.stop.load(Ordering::SeqCst) {
            match self.epoll.wait(-1, &mut events) {
                Ok(_) => self.accept_all(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("API server: epoll_wait failed, stopping: {e}");
                    break;
                }
            }
        }
        // Ends every read; a request waiting for the VMM still gets its 503.
        for conn in &self.conns {
            let _ = conn.stream.shutdown(std::net::Shutdown::Read);
        }
        for conn in self.conns.drain(..) {
            if conn.thread.join().is_err() {
                log::error!("an API connection thread panicked");
            }
        }
    }

    /// Accepts every pending connection.
    fn accept_all(&mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors, say: back off rather than spin.
                    log::warn!("API server: accept failed: {e}");
                    thread::sleep(STOP_POLL);
                    return;
                }
            }
        }
    }

    /// Serves a new connection on its own thread, or turns it away when at the limit.
    fn admit(&mut self, stream: UnixStream) {
        let (done, running): (Vec<Conn>, Vec<Conn>) =
            self.conns.drain(..).partition(|c| c.thread.is_finished());
        self.conns = running;
        for conn in done {
            let _ = conn.thread.join();
        }
        if self.conns.len() >= self.limits.max_connections {
            let busy = ApiResponse::fault(503, "too many API connections; try again later");
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = stream.write_all(&to_http(busy, false).to_bytes());
            return;
        }
        let connection = match Connection::new(stream, self) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("API server: cannot set up a connection: {e}");
                return;
            }
        };
        let Ok(stream) = connection.stream.try_clone() else {
            log::warn!("API server: cannot clone a connection's socket");
            return;
        };
        match thread::Builder::new()
            .name("hvlite-api-conn".into())
            .spawn(move || {
                crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Api);
                connection.serve()
            }) {
            Ok(thread) => self.conns.push(Conn { stream, thread }),
            Err(e) => log::warn!("API server: cannot start a connection thread: {e}"),
        }
    }
}

/// Converts the VMM's answer for the wire.
fn to_http(resp: ApiResponse, keep_alive: bool) -> HttpResponse {
    HttpResponse {
        status: resp.status,
        body: resp.body.map(|b| b.to_string()),
        allow: resp.allow,
        keep_alive,
    }
}

/// Why reading more of a request stopped.
enum ReadEnd {
    /// The client closed the connection, or it broke.
    Closed,
    /// Nothing came within the timeout.
    TimedOut,
}

/// One client connection.
struct Connection {
    stream: UnixStream,
    vmm: VmmSender,
    stop: Arc<AtomicBool>,
    limits: Limits,
    /// Bytes received and not yet parsed: at most one request and one read chunk.
    buf: Vec<u8>,
    /// When the first byte of the request in `buf` arrived.
    started: Option<Instant>,
}

impl Connection {
    fn new(stream: UnixStream, acceptor: &Acceptor) -> io::Result<Self> {
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(acceptor.limits.write_timeout))?;
        Ok(Self {
            stream,
            vmm: acceptor.vmm.clone(),
            stop: acceptor.stop.clone(),
            limits: acceptor.limits,
            buf: Vec::with_capacity(READ_CHUNK),
            started: None,
        })
    }

    /// Serves requests until the client closes, errs or times out, or the server stops,
    /// then closes the connection (the accept thread holds a clone of the socket).
    fn serve(mut self) {
        self.serve_requests();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn serve_requests(&mut self) {
        loop {
            match http::parse(&self.buf) {
                Ok(Parsed::Complete(req, used)) => {
                    self.buf.drain(..used);
                    self.started = (!self.buf.is_empty()).then(Instant::now);
                    let resp = match parse_request(&req) {
                        Ok(api) => self.ask_vmm(api),
                        Err(e) => e.to_response(),
                    };
                    if !self.send(resp, req.keep_alive) || !req.keep_alive {
                        return;
                    }
                }
                Ok(Parsed::NeedMore) => match self.read_more() {
                    Ok(()) => {}
                    Err(ReadEnd::Closed) => return,
                    Err(ReadEnd::TimedOut) => {
                        if !self.buf.is_empty() {
                            let msg = "the request did not arrive in time";
                            self.send(ApiResponse::fault(408, msg), false);
                        }
                        return;
                    }
                },
                Err(e) => {
                    log::debug!("API: bad HTTP request: {e}");
                    self.send(ApiResponse::fault(e.status(), e.to_string()), false);
                    return;
                }
            }
        }
    }

    /// Reads what the client sent next, waiting no longer than the idle timeout (no
    /// request in progress) or what is left of the request timeout.
    fn read_more(&mut self) -> Result<(), ReadEnd> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let timeout = match self.started {
                None => self.limits.idle_timeout,
                Some(t) => self.limits.request_timeout.saturating_sub(t.elapsed()),
            };
            if timeout.is_zero() || self.stream.set_read_timeout(Some(timeout)).is_err() {
                return Err(ReadEnd::TimedOut);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.started.get_or_insert_with(Instant::now);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ReadEnd::TimedOut);
                }
                Err(_) => return Err(ReadEnd::Closed),
            }
        }
    }

    /// Hands `api` to the VMM and waits for its answer.
    fn ask_vmm(&self, api: ApiRequest) -> ApiResponse {
        log::debug!("API: {api:?}");
        let (tx, rx) = mpsc::channel();
        if self.vmm.send((api, tx)).is_err() {
            return ApiResponse::fault(503, "the VMM no longer takes API requests");
        }
        loop {
            match rx.recv_timeout(STOP_POLL) {
                Ok(resp) => return resp,
                Err(RecvTimeoutError::Timeout) if self.stop.load(Ordering::SeqCst) => {
                    return ApiResponse::fault(503, "the API server is shutting down");
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return ApiResponse::fault(503, "the VMM dropped the request unanswered");
                }
            }
        }
    }

    /// Writes a response; false if the client is gone or does not read.
    fn send(&mut self, resp: ApiResponse, keep_alive: bool) -> bool {
        let bytes = to_http(resp, keep_alive).to_bytes();
        self.stream.write_all(&bytes).is_ok()
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
