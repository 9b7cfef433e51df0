//! Host-initiated connections: the CONNECT line, the guest's answer, timeouts, and a
//! host stream ending or hanging up.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::super::config::{FIRST_LOCAL_PORT, Timeouts};
use super::super::host::Backend;
use super::super::packet::{Op, SHUTDOWN_BOTH, SHUTDOWN_SEND};
use super::super::test_utils::*;

struct Host {
    _dir: TempDir,
    path: PathBuf,
    h: Harness,
}

fn host_side(timeouts: Timeouts) -> Host {
    let dir = tempfile::Builder::new()
        .prefix("hvlite-vsock")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let path = dir.path().join("v.sock");
    let mut h = Harness::with(
        Backend::bind(Some(path.clone())).expect("backend"),
        timeouts,
        |_| {},
    );
    h.post_rx(8, 4096);
    Host { _dir: dir, path, h }
}

fn short() -> Timeouts {
    Timeouts {
        connect_line: Duration::from_millis(60),
        guest_response: Duration::from_millis(60),
        close: Duration::from_millis(60),
    }
}

impl Host {
    fn dial(&mut self, line: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(&self.path).expect("connect");
        s.write_all(line).expect("write");
        self.h.run();
        s
    }

    /// Runs the loop until `cond` holds, for up to 2 s.
    fn run_until(&mut self, mut cond: impl FnMut(&mut Harness) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !cond(&mut self.h) {
            assert!(Instant::now() < deadline, "timed out");
            self.h.run_for(10);
        }
    }

    /// A host-initiated connection to guest port `port`, accepted by the guest.
    fn established(&mut self, port: u32) -> (UnixStream, u32) {
        let mut s = self.dial(format!("CONNECT {port}\n").as_bytes());
        let got = self.h.recv();
        assert_eq!(got.len(), 1, "{got:?}");
        let req = got[0].hdr;
        assert_eq!(got[0].op(), Some(Op::Request));
        assert_eq!(
            (req.dst_port, req.src_cid, req.dst_cid),
            (port, 2, GUEST_CID)
        );
        self.h
            .send(guest_hdr(Op::Response, port, req.src_port), &[]);
        let ok = format!("OK {}\n", req.src_port);
        assert_eq!(read_now(&mut s), Some(ok.into_bytes()));
        (s, req.src_port)
    }
}

#[test]
fn connect_line_request_response_ok_then_data() {
    let mut t = host_side(Timeouts::default());
    let (mut s, local) = t.established(5000);
    assert_eq!(local, FIRST_LOCAL_PORT);
    s.write_all(b"to guest").expect("write");
    t.h.run();
    let got = t.h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"to guest");
    t.h.send(guest_hdr(Op::Rw, 5000, local), b"to host");
    assert_eq!(read_now(&mut s), Some(b"to host".to_vec()));
    // The next connection gets the next port.
    let (_s2, local2) = t.established(5000);
    assert_eq!(local2, FIRST_LOCAL_PORT + 1);
    assert_eq!(t.h.counters.snapshot().connections_opened, 2);
    assert!(t.h.quiet());
}

#[test]
fn partial_lines_and_early_data() {
    let mut t = host_side(Timeouts::default());
    let mut s = t.dial(b"CONN");
    assert!(t.h.recv().is_empty());
    assert_eq!(t.h.handler().muxer().pending_host_count(), 1);
    s.write_all(b"ECT 7\nearly bytes").expect("write");
    t.h.run();
    let got = t.h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].op(), Some(Op::Request));
    // The early bytes wait until the guest accepts; nothing spins meanwhile.
    assert!(t.h.quiet());
    let local = got[0].hdr.src_port;
    t.h.send(guest_hdr(Op::Response, 7, local), &[]);
    assert_eq!(read_now(&mut s), Some(format!("OK {local}\n").into_bytes()));
    let got = t.h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"early bytes");
}

#[test]
fn bad_lines_close_the_host_stream() {
    let mut t = host_side(Timeouts::default());
    let mut garbage = t.dial(b"HELLO 7\n");
    let mut long = t.dial(&[b'9'; 40]);
    let mut huge_port = t.dial(b"CONNECT 99999999999\n");
    assert_eq!(read_now(&mut garbage), None);
    assert_eq!(read_now(&mut long), None);
    assert_eq!(read_now(&mut huge_port), None);
    assert!(t.h.recv().is_empty());
    let s = t.h.counters.snapshot();
    assert_eq!(s.host_rejected, 3);
    assert_eq!(t.h.handler().muxer().pending_host_count(), 0);
}

#[test]
fn guest_rst_closes_the_host_stream() {
    let mut t = host_side(Timeouts::default());
    let mut s = t.dial(b"CONNECT 99\n");
    let got = t.h.recv();
    assert_eq!(got[0].op(), Some(Op::Request));
    t.h.send(guest_hdr(Op::Rst, 99, got[0].hdr.src_port), &[]);
    assert_eq!(read_now(&mut s), None);
    assert_eq!(t.h.handler().muxer().connection_count(), 0);
}

#[test]
fn silent_host_peers_and_guests_time_out() {
    let mut t = host_side(short());
    let mut silent = t.dial(b"CONN");
    let mut unanswered = t.dial(b"CONNECT 6\n");
    let req = t.h.recv();
    assert_eq!(req[0].op(), Some(Op::Request));
    assert!(t.h.handler().muxer().timer_armed());
    t.run_until(|h| {
        let m = h.handler();
        m.muxer().pending_host_count() == 0 && m.muxer().connection_count() == 0
    });
    assert_eq!(read_now(&mut silent), None);
    assert_eq!(read_now(&mut unanswered), None);
    let got = t.h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].op(), Some(Op::Rst));
    assert_eq!(got[0].hdr.src_port, req[0].hdr.src_port);
    // Nothing left to time: the timer is disarmed and the loop is quiet.
    t.h.run();
    assert!(!t.h.handler().muxer().timer_armed());
    assert!(t.h.quiet());
    assert_eq!(t.h.counters.snapshot().host_rejected, 2);
}

#[test]
fn host_eof_then_hangup_then_guest_rst() {
    let mut t = host_side(Timeouts::default());
    let (mut s, local) = t.established(8);
    s.write_all(b"bye").expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    t.h.run();
    let got = t.h.recv();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].data, b"bye");
    assert_eq!(
        (got[1].op(), got[1].hdr.flags),
        (Some(Op::Shutdown), SHUTDOWN_SEND)
    );
    // Half closed: the guest can still send; nothing spins.
    t.h.send(guest_hdr(Op::Rw, 8, local), b"still here");
    assert_eq!(read_now(&mut s), Some(b"still here".to_vec()));
    assert!(t.h.quiet());
    drop(s);
    t.h.run();
    let got = t.h.recv();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].op(), got[0].hdr.flags),
        (Some(Op::Shutdown), SHUTDOWN_BOTH)
    );
    t.h.send(guest_hdr(Op::Rst, 8, local), &[]);
    assert_eq!(t.h.handler().muxer().connection_count(), 0);
}

#[test]
fn host_close_delivers_its_data_and_times_out_without_guest_rst() {
    let mut t = host_side(short());
    let (mut s, local) = t.established(8);
    s.write_all(&pattern(10_000, 4)).expect("write");
    drop(s);
    t.h.run();
    let got = t.h.recv();
    let data: Vec<u8> = got.iter().flat_map(|p| p.data.clone()).collect();
    assert_eq!(data, pattern(10_000, 4));
    let last = got.last().expect("packets");
    assert_eq!(
        (last.op(), last.hdr.flags),
        (Some(Op::Shutdown), SHUTDOWN_BOTH)
    );
    // The guest never sends its RST: the device resets after the close timeout.
    t.run_until(|h| h.handler().muxer().connection_count() == 0);
    let got = t.h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].op(), got[0].hdr.src_port), (Some(Op::Rst), local));
}

#[test]
fn responses_for_unknown_connections_get_rst() {
    let mut t = host_side(Timeouts::default());
    t.h.send(guest_hdr(Op::Response, 8, FIRST_LOCAL_PORT), &[]);
    let got = t.h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].op(), Some(Op::Rst));
}
