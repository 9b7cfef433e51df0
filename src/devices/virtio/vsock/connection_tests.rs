//! Credit accounting and buffering toward a slow host peer.

use std::io::Read;
use std::os::unix::net::UnixStream;

use vm_memory::GuestMemoryBackend;

use super::*;
use crate::devices::virtio::test_utils::{BUF, guest_memory, put_bytes};

fn conn() -> (Connection, UnixStream) {
    let (ours, theirs) = UnixStream::pair().expect("pair");
    ours.set_nonblocking(true).expect("non-blocking");
    let key = ConnKey {
        local_port: 1,
        peer_port: 2,
    };
    (
        Connection::new(1, key, ours, ConnState::Established),
        theirs,
    )
}

fn peer(buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        buf_alloc,
        fwd_cnt,
        ..Header::default()
    }
}

#[test]
fn peer_credit_follows_the_guest_headers() {
    let (mut c, _h) = conn();
    assert_eq!(c.peer_credit(), 0);
    c.update_peer_credit(&peer(1000, 0));
    assert_eq!(c.peer_credit(), 1000);
    let h = c.header(3, Op::Rw, 0, 600);
    assert_eq!((h.len, h.op, h.src_cid, h.dst_cid), (600, 5, 2, 3));
    assert_eq!(c.peer_credit(), 400);
    c.update_peer_credit(&peer(1000, 600));
    assert_eq!(c.peer_credit(), 1000);
    // Wrapping counters.
    c.tx_cnt = Wrapping(u32::MAX - 10);
    c.update_peer_credit(&peer(1000, u32::MAX - 10));
    c.header(3, Op::Rw, 0, 100);
    assert_eq!(c.peer_credit(), 900);
    // A guest claiming more consumed than sent, or a bogus buffer: no credit.
    c.update_peer_credit(&peer(1000, 5000));
    assert_eq!(c.peer_credit(), 0);
    c.update_peer_credit(&peer(0, (u32::MAX - 10).wrapping_add(100)));
    assert_eq!(c.peer_credit(), 0);
}

#[test]
fn guest_credit_and_credit_updates() {
    let (mut c, mut host) = conn();
    let mem = guest_memory();
    let half = CONN_BUF_ALLOC as usize / 2;
    put_bytes(&mem, BUF, &vec![7u8; half + 1]);
    let slices = |n: usize| {
        vec![
            mem.get_slice(vm_memory::GuestAddress(BUF), n)
                .expect("slice"),
        ]
    };
    assert!(c.within_credit(CONN_BUF_ALLOC as usize));
    assert!(!c.within_credit(CONN_BUF_ALLOC as usize + 1));
    // Half the buffer used: no update yet.
    c.write_from_guest(&slices(1000)).expect("write");
    let mut buf = vec![0u8; 1000];
    host.read_exact(&mut buf).expect("read");
    assert_eq!(buf, vec![7u8; 1000]);
    assert!(!c.needs_credit_update());
    c.write_from_guest(&slices(half)).expect("write");
    assert!(c.needs_credit_update());
    let h = c.header(3, Op::CreditUpdate, 0, 0);
    assert_eq!(h.fwd_cnt as usize, half + 1000);
    assert_eq!(h.buf_alloc, CONN_BUF_ALLOC);
    assert!(!c.needs_credit_update());
    assert!(c.within_credit(CONN_BUF_ALLOC as usize));
}

#[test]
fn a_slow_host_peer_gets_the_rest_later() {
    let (mut c, mut host) = conn();
    let mem = guest_memory();
    let data: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    put_bytes(&mem, BUF, &data);
    let slice = mem
        .get_slice(vm_memory::GuestAddress(BUF), data.len())
        .expect("slice");
    let mut sent = 0;
    // Fill the socket until some bytes wait in the connection.
    while c.pending_len() == 0 {
        c.write_from_guest(std::slice::from_ref(&slice))
            .expect("write");
        sent += data.len();
        assert!(sent < 64 << 20, "the socket never filled");
    }
    assert_eq!(c.wanted_events(), Some(EventSet::OUT));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while got.len() < sent {
        c.flush().expect("flush");
        let n = host.read(&mut buf).expect("read");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(c.pending_len(), 0);
    assert_eq!(c.fwd_cnt.0 as usize, sent);
    assert!(got.chunks(data.len()).all(|c| c == &data[..c.len()]));
}

#[test]
fn interest_follows_the_state() {
    let (mut c, _h) = conn();
    // No credit: nothing to read for.
    assert_eq!(c.wanted_events(), Some(EventSet::empty()));
    c.update_peer_credit(&peer(100, 0));
    assert_eq!(c.wanted_events(), Some(EventSet::IN));
    c.in_ready = true;
    assert_eq!(c.wanted_events(), Some(EventSet::empty()));
    c.in_ready = false;
    c.peer_shutdown = super::super::packet::SHUTDOWN_RCV;
    assert_eq!(c.wanted_events(), Some(EventSet::empty()));
    c.host_hup = true;
    assert_eq!(c.wanted_events(), None);
}
