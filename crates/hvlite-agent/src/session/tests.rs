//! Whole sessions over a Unix socket pair: the test plays the host, `serve` runs in a thread
//! and starts real processes (no chroot, as the current user). They need root (setgroups);
//! without it they are skipped (failed under `HVLITE_REQUIRE_KVM=1`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::thread;

use hvlite_protocol::agent::protocol::{MAX_CHUNK, ProcessSpec, WindowSize};

use super::*;

/// Sessions run one at a time: the SIGCHLD self-pipe is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// Whether `test` can switch ids (root, for setgroups); when not, a skip notice, or a
/// failure under `HVLITE_REQUIRE_KVM=1`.
pub(super) fn root(test: &str) -> bool {
    let ok = process::ids().0 == 0;
    hvlite_protocol::test_env::check(test, ok, "needs root (setgroups)")
}

fn spec(args: &[&str]) -> ProcessSpec {
    let (_, uid, gid) = process::ids();
    let mut s = ProcessSpec::new(args.iter().copied());
    s.env = vec!["PATH=/usr/bin:/bin".into()];
    s.user.uid = uid;
    s.user.gid = gid;
    s
}

/// What the host saw.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub pid: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub last: Option<AgentMessage>,
    pub max_chunk: usize,
}

/// Reads messages until `Exited` or `Error` (or EOF).
fn read_until_end(conn: &mut UnixStream, seen: &mut Seen) {
    while let Some(m) = read_message::<_, AgentMessage>(conn).unwrap() {
        match m {
            AgentMessage::Started { pid } => seen.pid = Some(pid),
            AgentMessage::Stdout(d) => {
                seen.max_chunk = seen.max_chunk.max(d.len());
                seen.stdout.extend(d);
            }
            AgentMessage::Stderr(d) => seen.stderr.extend(d),
            end @ (AgentMessage::Exited(_) | AgentMessage::Error { .. }) => {
                seen.last = Some(end);
                return;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Runs a session: sends `first`, lets `host` talk, then reads to the end and closes.
fn session(
    first: HostMessage,
    host: impl FnOnce(&mut UnixStream, &mut Seen),
) -> (SessionOutcome, Seen) {
    session_in(None, first, host)
}

/// [`session`] with the process chrooted in `root`.
pub(super) fn session_in(
    root: Option<&str>,
    first: HostMessage,
    host: impl FnOnce(&mut UnixStream, &mut Seen),
) -> (SessionOutcome, Seen) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = root.map(str::to_string);
    let (agent_end, mut host_end) = UnixStream::pair().unwrap();
    let sigchld = process::sigchld_pipe().unwrap();
    let opts = Options {
        reap_all: false,
        sync: false,
        container_setup: false,
    };
    let agent = thread::spawn(move || serve(agent_end, root.as_deref(), Some(sigchld), opts));
    write_message(&mut host_end, &first).unwrap();
    let mut seen = Seen::default();
    host(&mut host_end, &mut seen);
    if seen.last.is_none() {
        read_until_end(&mut host_end, &mut seen);
    }
    drop(host_end);
    (agent.join().unwrap(), seen)
}

/// The session ended with `Error` 125 whose message contains `needle`.
fn assert_setup_error(outcome: &SessionOutcome, seen: &Seen, needle: &str) {
    assert!(
        matches!(&seen.last, Some(AgentMessage::Error { status: 125, message }) if message.contains(needle)),
        "{seen:?}"
    );
    assert_eq!(*outcome, SessionOutcome::Reported { status: 125 });
}

fn start(s: ProcessSpec) -> HostMessage {
    HostMessage::Start(s)
}

fn wait_started(conn: &mut UnixStream, seen: &mut Seen) -> libc::pid_t {
    match read_message::<_, AgentMessage>(conn).unwrap() {
        Some(AgentMessage::Started { pid }) => {
            seen.pid = Some(pid);
            pid as libc::pid_t
        }
        other => panic!("expected Started, got {other:?}"),
    }
}

fn is_gone(pid: libc::pid_t) -> bool {
    process::kill(pid, 0).is_err()
}

#[test]
fn output_and_exit_status() {
    if !root("output_and_exit_status") {
        return;
    }
    let (outcome, seen) = session(
        start(spec(&["sh", "-c", "echo out; echo err >&2; exit 3"])),
        |_, _| {},
    );
    assert!(seen.pid.is_some());
    assert_eq!(seen.stdout, b"out\n");
    assert_eq!(seen.stderr, b"err\n");
    assert_eq!(seen.last, Some(AgentMessage::Exited(ProcessEnd::Exited(3))));
    assert_eq!(outcome, SessionOutcome::Reported { status: 3 });
}

#[test]
fn large_output_in_chunks() {
    if !root("large_output_in_chunks") {
        return;
    }
    let total = 3_000_000;
    let script = format!("yes 0123456789abcdef | head -c {total}");
    let (outcome, seen) = session(start(spec(&["sh", "-c", &script])), |_, _| {});
    assert_eq!(seen.stdout.len(), total);
    assert!(seen.max_chunk <= MAX_CHUNK);
    assert!(seen.stdout.starts_with(b"0123456789abcdef\n0123"));
    assert_eq!(outcome, SessionOutcome::Reported { status: 0 });
}

#[test]
fn start_failures_are_errors() {
    if !root("start_failures_are_errors") {
        return;
    }
    let (outcome, seen) = session(start(spec(&["hvlite-no-such-command"])), |_, _| {});
    assert_eq!(seen.pid, None);
    assert_eq!(
        seen.last,
        Some(AgentMessage::Error {
            status: 127,
            message: "hvlite-no-such-command: command not found".into()
        })
    );
    assert_eq!(outcome, SessionOutcome::Reported { status: 127 });
}

/// Reads until the process's output contains `needle`.
fn read_until_output(conn: &mut UnixStream, seen: &mut Seen, needle: &str) {
    while !String::from_utf8_lossy(&seen.stdout).contains(needle) {
        match read_message::<_, AgentMessage>(conn).unwrap() {
            Some(AgentMessage::Stdout(d)) => seen.stdout.extend(d),
            other => panic!("waiting for {needle:?} in {seen:?}: {other:?}"),
        }
    }
}

#[test]
fn a_terminal_is_the_controlling_tty_and_resizes() {
    if !root("a_terminal_is_the_controlling_tty_and_resizes") {
        return;
    }
    let script = "echo ctl >/dev/tty; stty size; read line; stty size; echo got $line >&2";
    let mut s = spec(&["sh", "-c", script]);
    s.terminal = true;
    s.console_size = Some(WindowSize {
        height: 30,
        width: 100,
    });
    let (outcome, seen) = session(start(s), |conn, seen| {
        wait_started(conn, seen);
        read_until_output(conn, seen, "30 100\r\n");
        let size = WindowSize {
            height: 40,
            width: 120,
        };
        write_message(conn, &HostMessage::Resize(size)).unwrap();
        write_message(conn, &HostMessage::Stdin(b"hello\n".to_vec())).unwrap();
    });
    let out = String::from_utf8_lossy(&seen.stdout);
    // /dev/tty opens only for a process with a controlling terminal; output has CR LF.
    assert!(out.starts_with("ctl\r\n30 100\r\n"), "{out:?}");
    assert!(out.contains("40 120\r\n"), "{out:?}");
    assert!(
        out.contains("got hello"),
        "stderr is the terminal too: {out:?}"
    );
    assert!(seen.stderr.is_empty());
    assert_eq!(outcome, SessionOutcome::Reported { status: 0 });
}

#[test]
fn stdin_close_on_a_terminal_is_end_of_file() {
    if !root("stdin_close_on_a_terminal_is_end_of_file") {
        return;
    }
    let mut s = spec(&["sh", "-c", "cat; echo cat-done"]);
    s.terminal = true;
    let (outcome, seen) = session(start(s), |conn, seen| {
        wait_started(conn, seen);
        write_message(conn, &HostMessage::Stdin(b"abc\n".to_vec())).unwrap();
        write_message(conn, &HostMessage::StdinClose).unwrap();
    });
    let out = String::from_utf8_lossy(&seen.stdout);
    assert!(out.contains("cat-done"), "{out:?}");
    assert_eq!(outcome, SessionOutcome::Reported { status: 0 });
}

#[test]
fn first_message_must_be_start() {
    let (outcome, seen) = session(HostMessage::Signal(9), |_, _| {});
    assert_setup_error(&outcome, &seen, "expected Start");
}

#[test]
fn stdin_is_forwarded_with_backpressure() {
    if !root("stdin_is_forwarded_with_backpressure") {
        return;
    }
    let mut s = spec(&["sh", "-c", "sleep 0.3; cat"]);
    s.stdin = true;
    // More than the pipe and the backlog hold while `cat` is not reading yet.
    let data: Vec<u8> = (0..(3 << 20) as u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let (outcome, seen) = session(start(s), move |conn, seen| {
        wait_started(conn, seen);
        let mut writer = conn.try_clone().unwrap();
        let t = thread::spawn(move || {
            for m in HostMessage::stdin_chunks(&sent) {
                write_message(&mut writer, &m).unwrap();
            }
            write_message(&mut writer, &HostMessage::StdinClose).unwrap();
        });
        read_until_end(conn, seen);
        t.join().unwrap();
    });
    assert_eq!(seen.stdout.len(), data.len());
    assert!(seen.stdout == data);
    assert_eq!(outcome, SessionOutcome::Reported { status: 0 });
}

#[test]
fn stdin_is_dev_null_unless_asked() {
    if !root("stdin_is_dev_null_unless_asked") {
        return;
    }
    let (outcome, seen) = session(start(spec(&["cat"])), |conn, _| {
        // Dropped: the process's stdin is /dev/null.
        write_message(conn, &HostMessage::Stdin(b"ignored".to_vec())).unwrap();
    });
    assert_eq!(seen.stdout, b"");
    assert_eq!(outcome, SessionOutcome::Reported { status: 0 });
}

#[test]
fn signals_reach_the_process() {
    if !root("signals_reach_the_process") {
        return;
    }
    let (outcome, seen) = session(start(spec(&["sleep", "30"])), |conn, seen| {
        wait_started(conn, seen);
        write_message(conn, &HostMessage::Signal(libc::SIGTERM)).unwrap();
    });
    assert_eq!(
        seen.last,
        Some(AgentMessage::Exited(ProcessEnd::Signaled(15)))
    );
    assert_eq!(outcome, SessionOutcome::Reported { status: 143 });
}

#[test]
fn host_disconnect_kills_the_process() {
    if !root("host_disconnect_kills_the_process") {
        return;
    }
    let (outcome, seen) = session(start(spec(&["sleep", "30"])), |conn, seen| {
        wait_started(conn, seen);
        conn.shutdown(std::net::Shutdown::Both).unwrap();
    });
    assert!(
        matches!(&outcome, SessionOutcome::Aborted { reason } if reason.contains("closed")),
        "{outcome:?}"
    );
    assert!(is_gone(seen.pid.unwrap() as libc::pid_t));
}

#[test]
fn bad_frames_end_the_session() {
    if !root("bad_frames_end_the_session") {
        return;
    }
    let (outcome, seen) = session(start(spec(&["sleep", "30"])), |conn, seen| {
        let pid = wait_started(conn, seen);
        conn.write_all(&[1, 0, 0, 0, 0x7f]).unwrap();
        read_until_end(conn, seen);
        assert!(is_gone(pid));
    });
    assert_setup_error(&outcome, &seen, "0x7f");
}

#[test]
fn background_processes_do_not_hold_the_session() {
    if !root("background_processes_do_not_hold_the_session") {
        return;
    }
    let begin = Instant::now();
    let (outcome, seen) = session(
        start(spec(&["sh", "-c", "sleep 30 & echo hi; exit 4"])),
        |_, _| {},
    );
    assert!(begin.elapsed() < DRAIN_MAX, "{:?}", begin.elapsed());
    assert_eq!(seen.stdout, b"hi\n");
    assert_eq!(outcome, SessionOutcome::Reported { status: 4 });
}

#[test]
fn user_and_working_directory() {
    if !root("user_and_working_directory") {
        return;
    }
    // The process runs as nobody and must reach its working directory: mode 0755.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cwd = dir.path().join("a/b");
    let mut s = spec(&["sh", "-c", "pwd; id -u; id -g; id -G"]);
    s.cwd = cwd.to_str().unwrap().into();
    s.user.uid = 65534;
    s.user.gid = 65533;
    s.user.additional_gids = vec![65532, 65531];
    let (outcome, seen) = session(start(s), |_, _| {});
    let out = String::from_utf8(seen.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..3],
        [cwd.to_str().unwrap(), "65534", "65533"],
        "{out}"
    );
    let mut groups: Vec<&str> = lines[3].split(' ').collect();
    groups.sort_unstable();
    assert_eq!(groups, ["65531", "65532", "65533"]);
    assert_eq!(outcome, SessionOutcome::Reported { status: 0 });
}

#[test]
fn rlimits_apply_before_the_user_switch_and_no_new_privs() {
    if !root("rlimits_apply_before_the_user_switch_and_no_new_privs") {
        return;
    }
    let mut s = spec(&[
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; grep NoNewPrivs /proc/self/status",
    ]);
    s.user.uid = 65534;
    s.user.gid = 65534;
    s.rlimits = vec![hvlite_protocol::agent::protocol::Rlimit {
        typ: "RLIMIT_NOFILE".into(),
        hard: 333,
        soft: 222,
    }];
    s.no_new_privileges = true;
    let (outcome, seen) = session(start(s), |_, _| {});
    let out = String::from_utf8(seen.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["222", "333"], "{out}");
    assert_eq!(lines[2].split_whitespace().last(), Some("1"), "{out}");
    assert_eq!(outcome, SessionOutcome::Reported { status: 0 });
}

fn caps(names: &[&str], ambient: &[&str]) -> Box<hvlite_protocol::agent::protocol::Capabilities> {
    let v = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Box::new(hvlite_protocol::agent::protocol::Capabilities {
        bounding: v(names),
        effective: v(names),
        permitted: v(names),
        inheritable: v(ambient),
        ambient: v(ambient),
    })
}

#[test]
fn capabilities_are_applied() {
    if !root("capabilities_are_applied") {
        return;
    }
    let show = "grep -E '^Cap(Eff|Bnd|Amb)' /proc/self/status";
    // As root: everything in the bounding set.
    let mut s = spec(&["sh", "-c", show]);
    s.user.uid = 0;
    s.capabilities = Some(caps(&["CAP_CHOWN", "CAP_KILL"], &[]));
    let (outcome, seen) = session(start(s), |_, _| {});
    assert_eq!(outcome, SessionOutcome::Reported { status: 0 }, "{seen:?}");
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout),
        "CapEff:\t0000000000000021\nCapBnd:\t0000000000000021\nCapAmb:\t0000000000000000\n"
    );
    // Another user keeps only its ambient set across exec.
    let mut s = spec(&["sh", "-c", show]);
    s.user.uid = 1000;
    s.capabilities = Some(caps(&["CAP_CHOWN", "CAP_KILL"], &["CAP_KILL"]));
    let (outcome, seen) = session(start(s), |_, _| {});
    assert_eq!(outcome, SessionOutcome::Reported { status: 0 }, "{seen:?}");
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout),
        "CapEff:\t0000000000000020\nCapBnd:\t0000000000000021\nCapAmb:\t0000000000000020\n"
    );
}

#[test]
fn an_exec_session_cannot_change_the_container() {
    let mut s = spec(&["true"]);
    s.container = Some(Box::new(hvlite_protocol::agent::protocol::ContainerSetup {
        hostname: Some("x".into()),
        ..Default::default()
    }));
    let (outcome, seen) = session(start(s), |_, _| {});
    assert_setup_error(&outcome, &seen, "exec session");
}
