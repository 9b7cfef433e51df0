use std::io::Cursor;
use std::sync::mpsc;

use super::*;
use crate::agent::protocol::{Message, ProcessEnd, User};

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, d: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(d);
        Ok(d.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn spec() -> ProcessSpec {
    ProcessSpec {
        args: vec!["cat".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: User::default(),
        terminal: false,
        console_size: None,
        stdin: true,
        rlimits: Vec::new(),
        no_new_privileges: false,
        capabilities: None,
        container: None,
        guest_sync: None,
    }
}

struct Harness {
    agent: UnixStream,
    out: Sink,
    err: Sink,
    latch: Arc<ExitLatch>,
    shared: Arc<SessionShared>,
    thread: JoinHandle<()>,
}

fn start(stdin: Option<&'static [u8]>) -> Harness {
    let (host_end, agent) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    tx.send(host_end).unwrap();
    let (out, err) = (Sink::default(), Sink::default());
    let latch = Arc::new(ExitLatch::new());
    let outputs = Outputs {
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
        stdin: stdin.map(|s| Box::new(Cursor::new(s)) as Box<dyn Read + Send>),
    };
    let (shared, thread) = spawn(spec(), rx, Arc::clone(&latch), outputs).unwrap();
    Harness {
        agent,
        out,
        err,
        latch,
        shared,
        thread,
    }
}

fn send(h: &mut Harness, m: AgentMessage) {
    write_message(&mut h.agent, &m).unwrap();
}

fn recv(h: &mut Harness) -> HostMessage {
    read_message::<_, HostMessage>(&mut h.agent)
        .unwrap()
        .unwrap()
}

/// The agent's side of the start: Hello, then the Start the host answers with.
fn handshake(h: &mut Harness) {
    send(
        h,
        AgentMessage::Hello {
            version: PROTOCOL_VERSION,
        },
    );
    assert_start(recv(h));
}

/// The agent goes away without a word.
fn hang_up(h: &mut Harness) {
    drop(std::mem::replace(
        &mut h.agent,
        UnixStream::pair().unwrap().0,
    ));
}

fn finish(h: Harness) -> (ExitReason, String, String) {
    h.thread.join().unwrap();
    (h.latch.wait(), h.out.text(), h.err.text())
}

#[test]
fn full_session_copies_output_stdin_and_status() {
    let mut h = start(Some(b"input data"));
    send(
        &mut h,
        AgentMessage::Hello {
            version: PROTOCOL_VERSION,
        },
    );
    assert_start(recv(&mut h));
    assert!(!h.shared.forward_signal(15), "no process yet");
    send(&mut h, AgentMessage::Started { pid: 42 });
    assert_eq!(recv(&mut h), HostMessage::Stdin(b"input data".to_vec()));
    assert_eq!(recv(&mut h), HostMessage::StdinClose);
    assert!(h.shared.forward_signal(15));
    assert_eq!(recv(&mut h), HostMessage::Signal(15));
    send(&mut h, AgentMessage::Stdout(b"out1 ".to_vec()));
    send(&mut h, AgentMessage::Stderr(b"err1".to_vec()));
    send(&mut h, AgentMessage::Stdout(b"out2".to_vec()));
    send(&mut h, AgentMessage::Exited(ProcessEnd::Signaled(15)));
    let (reason, out, err) = finish(h);
    assert_eq!(reason, ExitReason::GuestStatus(143));
    assert_eq!(out, "out1 out2");
    assert_eq!(err, "err1");
}

#[test]
fn start_failure_is_reported_with_its_status() {
    let mut h = start(None);
    handshake(&mut h);
    send(
        &mut h,
        AgentMessage::Error {
            status: 127,
            message: "nope: command not found".into(),
        },
    );
    let (reason, _, err) = finish(h);
    assert_eq!(reason, ExitReason::GuestStatus(127));
    assert!(err.contains("nope: command not found"), "{err}");
}

#[test]
fn wrong_version_is_fatal() {
    let mut h = start(None);
    send(&mut h, AgentMessage::Hello { version: 999 });
    let (reason, _, _) = finish(h);
    assert!(
        matches!(&reason, ExitReason::Fatal(m) if m.contains("version 999")),
        "{reason:?}"
    );
}

#[test]
fn anything_before_hello_is_fatal() {
    let mut h = start(None);
    send(&mut h, AgentMessage::Stdout(b"x".to_vec()));
    let (reason, _, _) = finish(h);
    assert!(
        matches!(&reason, ExitReason::Fatal(m) if m.contains("before Hello")),
        "{reason:?}"
    );
}

#[test]
fn agent_disconnecting_mid_stream_is_fatal_not_a_hang() {
    let mut h = start(None);
    handshake(&mut h);
    send(&mut h, AgentMessage::Started { pid: 1 });
    send(&mut h, AgentMessage::Stdout(b"partial".to_vec()));
    // Half a frame, then gone.
    let frame = AgentMessage::Stdout(vec![1; 100]).encode();
    h.agent.write_all(&frame[..50]).unwrap();
    hang_up(&mut h);
    let (reason, out, _) = finish(h);
    assert_eq!(out, "partial");
    assert!(matches!(reason, ExitReason::Fatal(_)), "{reason:?}");
}

#[test]
fn agent_closing_cleanly_without_status_is_fatal() {
    let mut h = start(None);
    handshake(&mut h);
    hang_up(&mut h);
    let (reason, _, _) = finish(h);
    assert!(
        matches!(&reason, ExitReason::Fatal(m) if m.contains("before reporting")),
        "{reason:?}"
    );
}

#[test]
fn oversized_frame_is_fatal() {
    let mut h = start(None);
    handshake(&mut h);
    h.agent.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let (reason, _, _) = finish(h);
    assert!(matches!(reason, ExitReason::Fatal(_)), "{reason:?}");
}

#[test]
fn a_vm_that_ends_first_stops_the_wait() {
    let (_tx, rx) = mpsc::channel::<UnixStream>();
    let latch = Arc::new(ExitLatch::new());
    let outputs = Outputs {
        stdout: Box::new(Sink::default()),
        stderr: Box::new(Sink::default()),
        stdin: None,
    };
    let (_, thread) = spawn(spec(), rx, Arc::clone(&latch), outputs).unwrap();
    latch.request(ExitReason::Reset);
    thread.join().unwrap();
    assert_eq!(latch.wait(), ExitReason::Reset);
}

/// A session with a start gate (the OCI runtime's create/start split).
fn start_gated() -> (Harness, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (host_end, agent) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    tx.send(host_end).unwrap();
    let (out, err) = (Sink::default(), Sink::default());
    let latch = Arc::new(ExitLatch::new());
    let outputs = Outputs {
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
        stdin: None,
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let gate = StartGate {
        ready: ready_tx,
        go: go_rx,
    };
    let (shared, thread) =
        spawn_gated(spec(), rx, Arc::clone(&latch), outputs, Some(gate)).unwrap();
    let h = Harness {
        agent,
        out,
        err,
        latch,
        shared,
        thread,
    };
    (h, ready_rx, go_tx)
}

#[test]
fn a_gated_session_sends_start_only_after_the_go() {
    let (mut h, ready, go) = start_gated();
    send(
        &mut h,
        AgentMessage::Hello {
            version: PROTOCOL_VERSION,
        },
    );
    ready.recv().unwrap();
    // Nothing is sent before the go.
    h.agent.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let early = h.agent.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "{early:?}"
    );
    h.agent.set_nonblocking(false).unwrap();
    go.send(()).unwrap();
    assert_start(recv(&mut h));
    send(&mut h, AgentMessage::Started { pid: 7 });
    send(&mut h, AgentMessage::Exited(ProcessEnd::Exited(4)));
    let (reason, _, _) = finish(h);
    assert_eq!(reason, ExitReason::GuestStatus(4));
}

#[test]
fn a_gated_session_stopped_before_the_go_never_starts() {
    let (mut h, ready, go) = start_gated();
    send(
        &mut h,
        AgentMessage::Hello {
            version: PROTOCOL_VERSION,
        },
    );
    ready.recv().unwrap();
    h.latch.request(ExitReason::GuestStatus(143));
    let (reason, _, _) = finish(h);
    assert_eq!(reason, ExitReason::GuestStatus(143));
    drop(go);
}

#[test]
fn input_before_the_start_is_kept_and_resizes_wait_for_the_process() {
    let mut h = start(None);
    let size = WindowSize {
        height: 40,
        width: 100,
    };
    assert!(h.shared.send_stdin(b"early "), "kept, not refused");
    assert!(!h.shared.resize(size), "no process to resize yet");
    assert!(!h.shared.signal_all(15), "no process yet");
    handshake(&mut h);
    assert!(h.shared.send_stdin(b"still early"));
    send(&mut h, AgentMessage::Started { pid: 7 });
    assert_eq!(
        recv(&mut h),
        HostMessage::Stdin(b"early still early".to_vec())
    );
    assert!(h.shared.send_stdin(b"later"));
    assert_eq!(recv(&mut h), HostMessage::Stdin(b"later".to_vec()));
    assert!(h.shared.resize(size));
    assert_eq!(recv(&mut h), HostMessage::Resize(size));
    assert!(h.shared.signal_all(9));
    assert_eq!(recv(&mut h), HostMessage::SignalAll(9));
    h.shared.close_stdin();
    assert_eq!(recv(&mut h), HostMessage::StdinClose);
    send(&mut h, AgentMessage::Exited(ProcessEnd::Exited(0)));
    let (reason, _, _) = finish(h);
    assert_eq!(reason, ExitReason::GuestStatus(0));
}

/// Checks that `msg` is the Start of [`spec`], with the host's clock and entropy added.
fn assert_start(msg: HostMessage) {
    let HostMessage::Start(mut got) = msg else {
        panic!("expected Start, got {msg:?}");
    };
    let sync = got.guest_sync.take().expect("Start carries guestSync");
    assert_eq!(sync.entropy.len(), SYNC_ENTROPY);
    assert_ne!(sync.entropy, vec![0; SYNC_ENTROPY]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(now.abs_diff(sync.realtime_ns) < 60_000_000_000, "{sync:?}");
    assert_eq!(got, spec());
}
