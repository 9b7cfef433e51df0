//! The CONNECT line and host-side connects.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use super::*;

fn pending() -> (PendingHost, UnixStream) {
    let (ours, theirs) = UnixStream::pair().expect("pair");
    ours.set_nonblocking(true).expect("non-blocking");
    (
        PendingHost::new(ours, Instant::now() + Duration::from_secs(5)),
        theirs,
    )
}

#[test]
fn connect_lines() {
    assert_eq!(parse_connect_line(b"CONNECT 52\n").ok(), Some(52));
    assert_eq!(parse_connect_line(b"CONNECT 52\r\n").ok(), Some(52));
    assert_eq!(
        parse_connect_line(b"CONNECT 4294967295\n").ok(),
        Some(u32::MAX)
    );
    for bad in [
        &b"CONNECT 4294967296\n"[..],
        b"CONNECT \n",
        b"CONNECT -1\n",
        b"CONNECT +1\n",
        b"CONNECT 1 2\n",
        b"connect 1\n",
        b"CONNECT 1",
        b"CONNECT\t1\n",
        b"\n",
    ] {
        assert!(
            matches!(parse_connect_line(bad), Err(LineError::Malformed)),
            "{bad:?}"
        );
    }
}

#[test]
fn a_line_in_pieces_stops_at_the_newline() {
    let (mut p, mut host) = pending();
    assert!(matches!(p.poll_line(), Ok(None)));
    host.write_all(b"CONN").expect("write");
    assert!(matches!(p.poll_line(), Ok(None)));
    host.write_all(b"ECT 1").expect("write");
    assert!(matches!(p.poll_line(), Ok(None)));
    host.write_all(b"234\ndata for the guest").expect("write");
    assert_eq!(p.poll_line().ok(), Some(Some(1234)));
    // What followed the line is still in the socket.
    let mut rest = [0u8; 64];
    let n = std::io::Read::read(&mut p.stream, &mut rest).expect("read");
    assert_eq!(&rest[..n], b"data for the guest");
}

#[test]
fn bad_lines_are_refused() {
    let (mut p, mut host) = pending();
    host.write_all(&[b'A'; MAX_CONNECT_LINE + 1])
        .expect("write");
    assert!(matches!(p.poll_line(), Err(LineError::TooLong)));

    let (mut p, mut host) = pending();
    host.write_all(b"CONNECT 12").expect("write");
    assert!(matches!(p.poll_line(), Ok(None)));
    host.write_all(b"3456789012345678901234\n").expect("write");
    assert!(matches!(p.poll_line(), Err(LineError::TooLong)));

    let (mut p, mut host) = pending();
    host.write_all(b"HELLO\n").expect("write");
    assert!(matches!(p.poll_line(), Err(LineError::Malformed)));

    let (mut p, mut host) = pending();
    host.write_all(b"CONNECT 5").expect("write");
    drop(host);
    assert!(matches!(p.poll_line(), Err(LineError::Closed)));
}

#[test]
fn in_process_ports_come_first_and_vanish_with_their_receiver() {
    let dir = tempfile::Builder::new()
        .prefix("hvlite-vsock")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let base = dir.path().join("v.sock");
    let backend = Backend::bind(Some(base.clone())).expect("bind");
    let (tx, rx) = std::sync::mpsc::channel();
    backend.register_port(7, tx);
    let _shadowed = UnixListener::bind(format!("{}_7", base.display())).expect("listener");
    let mut ours = backend.connect(7).expect("connect");
    let mut theirs = rx.try_recv().expect("the other end");
    ours.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    std::io::Read::read_exact(&mut theirs, &mut buf).expect("read");
    assert_eq!(&buf, b"ping");
    drop(rx);
    assert!(backend.connect(7).is_ok(), "falls back to <uds>_7");
    assert!(backend.connect(8).is_err());
}

#[test]
fn connect_nonblocking_reaches_a_listener_or_fails() {
    let dir = tempfile::Builder::new()
        .prefix("hvlite-vsock")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let path = dir.path().join("l.sock");
    let listener = UnixListener::bind(&path).expect("listener");
    let stream = connect_nonblocking(&path).expect("connect");
    assert!(listener.accept().is_ok());
    drop(stream);
    assert!(connect_nonblocking(&dir.path().join("missing")).is_err());
    let long = dir.path().join("x".repeat(200));
    assert_eq!(
        connect_nonblocking(&long).map(|_| ()).map_err(|e| e.kind()),
        Err(io::ErrorKind::InvalidInput)
    );
    let without_path = Backend::bind(None).expect("backend");
    assert!(without_path.listener().is_none());
    assert!(without_path.connect(1).is_err());
}
