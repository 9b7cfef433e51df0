//! Guest packets: connecting to host ports, refusals, SHUTDOWN and RST.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::sync::mpsc::channel;

use super::super::config::{CONN_BUF_ALLOC, MAX_ORPHAN_CONTROL};
use super::super::host::Backend;
use super::super::packet::{Header, Op, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::super::test_utils::*;

#[test]
fn guest_connects_to_an_in_process_port() {
    let (mut h, rx) = with_port(52);
    h.send(guest_hdr(Op::Request, 1000, 52), &[]);
    let mut host = rx.try_recv().expect("the host end");
    let got = h.recv();
    assert_eq!(got.len(), 1);
    let r = &got[0].hdr;
    assert_eq!(got[0].op(), Some(Op::Response));
    assert_eq!(
        (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
        (2, 3, 52, 1000)
    );
    assert_eq!((r.buf_alloc, r.fwd_cnt, r.len), (CONN_BUF_ALLOC, 0, 0));

    h.send(guest_hdr(Op::Rw, 1000, 52), b"hello");
    assert_eq!(read_now(&mut host), Some(b"hello".to_vec()));
    host.write_all(b"world").expect("write");
    h.run();
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].op(), Some(Op::Rw));
    assert_eq!(got[0].data, b"world");
    assert_eq!((got[0].hdr.fwd_cnt, got[0].hdr.dst_port), (5, 1000));
    let s = h.counters.snapshot();
    assert_eq!(
        (s.connections_opened, s.bytes_from_guest, s.bytes_to_guest),
        (1, 5, 5)
    );
    assert_eq!((s.packets_to_guest, s.packets_from_guest), (2, 2));
    assert!(s.interrupts >= 2);
    assert!(h.irq.eventfd().read().is_ok());
}

#[test]
fn guest_connects_to_uds_ports_or_gets_rst() {
    let dir = tempfile::Builder::new()
        .prefix("hvlite-vsock")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let base = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_52", base.display())).expect("listener");
    let mut h = Harness::new(Backend::bind(Some(base)).expect("backend"));
    h.post_rx(8, 4096);
    h.connect(1000, 52);
    let (mut host, _) = listener.accept().expect("accept");
    h.send(guest_hdr(Op::Rw, 1000, 52), b"over uds");
    assert_eq!(read_now(&mut host), Some(b"over uds".to_vec()));

    h.send(guest_hdr(Op::Request, 1001, 53), &[]);
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].op(), Some(Op::Rst));
    assert_eq!((got[0].hdr.src_port, got[0].hdr.dst_port), (53, 1001));
    assert_eq!(h.handler().muxer().connection_count(), 1);
    assert_eq!(h.counters.snapshot().resets_sent, 1);
}

#[test]
fn without_path_or_port_requests_get_rst() {
    let mut h = Harness::new(Backend::bind(None).expect("backend"));
    h.post_rx(2, 4096);
    h.send(guest_hdr(Op::Request, 1000, 52), &[]);
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].op(), Some(Op::Rst));
}

#[test]
fn wrong_addresses_types_and_ops_are_refused() {
    let (mut h, _rx) = with_port(52);
    let good = guest_hdr(Op::Request, 1000, 52);
    // Not from the guest's CID: dropped silently.
    h.send(Header { src_cid: 4, ..good }, &[]);
    assert!(h.recv().is_empty());
    // To another CID, of another type, an unknown op, data for no connection: RST.
    h.send(Header { dst_cid: 5, ..good }, &[]);
    h.send(
        Header {
            socket_type: 2,
            ..good
        },
        &[],
    );
    h.send(Header { op: 9, ..good }, &[]);
    h.send(guest_hdr(Op::Rw, 1000, 52), b"x");
    let got = h.recv();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|p| p.op() == Some(Op::Rst)));
    assert_eq!(got[0].hdr.src_cid, 5);
    assert_eq!(got[1].hdr.socket_type, 2);
    // An RST for no connection is not answered.
    h.send(guest_hdr(Op::Rst, 1000, 52), &[]);
    assert!(h.recv().is_empty());
    let s = h.counters.snapshot();
    assert_eq!((s.dropped, s.resets_sent, s.connections_opened), (5, 4, 0));
    assert_eq!(h.handler().muxer().connection_count(), 0);
}

#[test]
fn malformed_chains_are_consumed_counted_and_dropped() {
    let (mut h, _rx) = with_port(52);
    let base = h.next_tx_slot();
    let hdr = Header {
        len: 100,
        ..guest_hdr(Op::Rw, 1, 52)
    };
    crate::devices::virtio::test_utils::put_bytes(&h.mem, base, &hdr.to_bytes());
    // Header too short, len beyond the chain, a device-writable descriptor.
    h.send_chain(&[(base, 43, false)]);
    h.send_chain(&[(base, 44, false), (base + 44, 99, false)]);
    h.send_chain(&[(base, 44, false), (base + 44, 100, true)]);
    assert_eq!(h.tx.outstanding(), 0, "every chain was returned");
    assert!(h.recv().is_empty());
    assert_eq!(h.counters.snapshot().malformed, 3);
    // The device goes on.
    h.connect(1000, 52);
}

#[test]
fn shutdown_send_then_both_closes_cleanly() {
    let (mut h, rx) = with_port(52);
    h.connect(1000, 52);
    let mut host = rx.try_recv().expect("the host end");
    h.send(guest_hdr(Op::Rw, 1000, 52), b"last words");
    h.send(
        Header {
            flags: SHUTDOWN_SEND,
            ..guest_hdr(Op::Shutdown, 1000, 52)
        },
        &[],
    );
    // The host reads the data, then end of file; it can still write.
    assert_eq!(read_now(&mut host), Some(b"last words".to_vec()));
    assert_eq!(read_now(&mut host), None);
    host.write_all(b"reply").expect("write");
    h.run();
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"reply");
    // The guest is done receiving too: RST, the host stream is closed.
    h.send(
        Header {
            flags: SHUTDOWN_RCV,
            ..guest_hdr(Op::Shutdown, 1000, 52)
        },
        &[],
    );
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].op(), Some(Op::Rst));
    assert_eq!(h.handler().muxer().connection_count(), 0);
    assert!(host.write_all(b"x").is_err());
}

#[test]
fn guest_rst_closes_the_host_stream() {
    let (mut h, rx) = with_port(52);
    h.connect(1000, 52);
    let mut host = rx.try_recv().expect("the host end");
    h.send(guest_hdr(Op::Rst, 1000, 52), &[]);
    assert!(h.recv().is_empty(), "an RST is not answered");
    assert_eq!(read_now(&mut host), None);
    assert_eq!(h.handler().muxer().connection_count(), 0);
    assert_eq!(h.counters.snapshot().resets_received, 1);
}

#[test]
fn sending_beyond_the_credit_resets() {
    // One RX buffer, for the RESPONSE: the device cannot tell the guest about consumed
    // bytes, so the guest's credit is exactly the advertised buffer.
    let (mut h, rx) = with_port_rx(52, 1);
    h.connect(1000, 52);
    let mut host = rx.try_recv().expect("the host end");
    let chunk = pattern(64 * 1024, 3);
    let mut got = Vec::new();
    for _ in 0..(CONN_BUF_ALLOC as usize / chunk.len()) {
        h.send(guest_hdr(Op::Rw, 1000, 52), &chunk);
        got.extend(read_now(&mut host).expect("open"));
    }
    assert_eq!(got.len(), CONN_BUF_ALLOC as usize);
    assert_eq!(h.handler().muxer().connection_count(), 1);
    h.send(guest_hdr(Op::Rw, 1000, 52), b"!");
    assert_eq!(h.handler().muxer().connection_count(), 0);
    // The byte beyond the credit never reached the host: end of file.
    assert_eq!(read_now(&mut host), None);
    h.post_rx(2, 4096);
    let got = h.recv();
    assert!(got.iter().any(|p| p.op() == Some(Op::Rst)), "{got:?}");
    assert_eq!(h.counters.snapshot().dropped, 1);
}

#[test]
fn connection_limit_refuses_more() {
    let backend = Backend::bind(None).expect("backend");
    let (tx, rx) = channel();
    backend.register_port(52, tx);
    let mut h = Harness::with(backend, Default::default(), |m| m.max_connections = 3);
    h.post_rx(8, 4096);
    for port in 0..3 {
        h.connect(1000 + port, 52);
    }
    h.send(guest_hdr(Op::Request, 2000, 52), &[]);
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].op(), Some(Op::Rst));
    // (Kept open: a host end closing would shut its connection down.)
    let ends: Vec<_> = rx.try_iter().collect();
    assert_eq!(ends.len(), 3);
    // A duplicate REQUEST for a live connection is ignored.
    h.send(guest_hdr(Op::Request, 1000, 52), &[]);
    let got = h.recv();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(h.handler().muxer().connection_count(), 3);
}

#[test]
fn both_flags_at_once_with_unflushed_data_wait_for_the_host() {
    let (mut h, rx) = with_port(52);
    h.connect(1000, 52);
    let mut host = rx.try_recv().expect("the host end");
    let chunk = pattern(64 * 1024, 9);
    // Fill the host socket so some data waits in the device.
    for _ in 0..3 {
        h.send(guest_hdr(Op::Rw, 1000, 52), &chunk);
    }
    h.send(
        Header {
            flags: SHUTDOWN_BOTH,
            ..guest_hdr(Op::Shutdown, 1000, 52)
        },
        &[],
    );
    // Whatever still waits in the device is flushed as the host reads, then RST and
    // close.
    let mut got = Vec::new();
    for _ in 0..1000 {
        match read_now(&mut host) {
            Some(bytes) => got.extend(bytes),
            None => break,
        }
        h.run();
    }
    assert_eq!(got, [&chunk[..], &chunk[..], &chunk[..]].concat());
    assert_eq!(h.handler().muxer().connection_count(), 0);
    let rsts = h.recv().iter().filter(|p| p.op() == Some(Op::Rst)).count();
    assert_eq!(rsts, 1);
}

#[test]
fn a_request_flood_without_rx_buffers_stays_bounded() {
    let mut h = Harness::new(Backend::bind(None).expect("backend"));
    let extra = 50;
    let floods = MAX_ORPHAN_CONTROL + extra;
    for port in 0..floods {
        h.send(guest_hdr(Op::Request, port as u32, 52), &[]);
    }
    assert_eq!(h.handler().muxer().queued_control(), MAX_ORPHAN_CONTROL);
    assert_eq!(h.counters.snapshot().dropped, extra as u64);
    assert!(h.quiet());
    // Buffers arrive: the queued RSTs drain.
    for _ in 0..(MAX_ORPHAN_CONTROL / 32) {
        h.post_rx(32, 64);
        assert_eq!(h.recv().len(), 32);
    }
    assert_eq!(h.handler().muxer().queued_control(), 0);
}
