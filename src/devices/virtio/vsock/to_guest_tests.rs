//! Host data into RX buffers: the guest's credit, starved RX queues, control packets
//! first.

use std::io::Write;

use super::super::packet::{Header, Op};
use super::super::test_utils::*;

#[test]
fn host_data_stops_at_zero_credit_and_resumes_on_credit_update() {
    let (mut h, rx) = with_port(52);
    h.send(
        Header {
            buf_alloc: 1000,
            ..guest_hdr(Op::Request, 1000, 52)
        },
        &[],
    );
    assert_eq!(h.recv()[0].op(), Some(Op::Response));
    let mut host = rx.try_recv().expect("the host end");
    let data = pattern(2500, 6);
    host.write_all(&data).expect("write");
    h.run();
    let mut got: Vec<u8> = Vec::new();
    let mut fwd = 0;
    for _ in 0..3 {
        let pkts = h.recv();
        assert!(h.quiet(), "nothing spins at zero credit");
        let (data_pkts, rest): (Vec<_>, Vec<_>) =
            pkts.into_iter().partition(|p| p.op() == Some(Op::Rw));
        assert_eq!(data_pkts.len(), 1);
        got.extend(&data_pkts[0].data);
        if got.len() < data.len() {
            assert_eq!(data_pkts[0].data.len(), 1000);
            assert_eq!(rest.len(), 1);
            assert_eq!(rest[0].op(), Some(Op::CreditRequest));
        }
        fwd += data_pkts[0].data.len() as u32;
        h.post_rx(2, 4096);
        h.send(
            Header {
                buf_alloc: 1000,
                fwd_cnt: fwd,
                ..guest_hdr(Op::CreditUpdate, 1000, 52)
            },
            &[],
        );
    }
    assert_eq!(got, data);
}

#[test]
fn starved_rx_parks_host_streams_until_a_kick() {
    let (mut h, rx) = with_port_rx(52, 1);
    h.connect(1000, 52);
    let mut host = rx.try_recv().expect("the host end");
    host.write_all(b"waiting").expect("write");
    h.run();
    assert!(h.recv().is_empty());
    assert!(h.quiet(), "a starved RX queue must not spin");
    // A kick with no buffers changes nothing.
    h.rx_kick.write(1).expect("kick");
    h.run();
    assert!(h.quiet());
    h.post_rx(1, 4096);
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"waiting");
    // Watched again: new data flows at once.
    h.post_rx(1, 4096);
    host.write_all(b"more").expect("write");
    h.run();
    assert_eq!(h.recv()[0].data, b"more");
}

#[test]
fn small_rx_buffers_split_host_data_and_the_header_may_be_split() {
    let (mut h, rx) = with_port_rx(52, 1);
    h.connect(1000, 52);
    let mut host = rx.try_recv().expect("the host end");
    // Buffers as two descriptors, the header split across them, 100 data bytes each.
    for _ in 0..3 {
        let slot = RX_BUF + u64::from(h.rx.next_head()) * SLOT;
        h.rx.add(&[(slot, 20, true), (slot + 20, 124, true)]);
    }
    let data = pattern(300, 1);
    host.write_all(&data).expect("write");
    h.rx_kick.write(1).expect("kick");
    h.run();
    let used = h.rx.take_used();
    assert_eq!(used.len(), 3);
    let mut got: Vec<u8> = Vec::new();
    for (descs, len) in used {
        assert_eq!(len, 144);
        let bytes = crate::devices::virtio::test_utils::get_bytes(&h.mem, descs[0].0, 144);
        let hdr = Header::from_bytes(&bytes[..44].try_into().expect("header"));
        assert_eq!((hdr.op(), hdr.len), (Some(Op::Rw), 100));
        got.extend(&bytes[44..]);
    }
    assert_eq!(got, data);
}

#[test]
fn short_rx_buffers_are_returned_unused() {
    let (mut h, _rx) = with_port_rx(52, 0);
    for len in [43, 44] {
        let slot = RX_BUF + u64::from(h.rx.next_head()) * SLOT;
        h.rx.add(&[(slot, len, true)]);
    }
    let slot = RX_BUF + u64::from(h.rx.next_head()) * SLOT;
    h.rx.add(&[(slot, 45, true)]);
    h.rx_kick.write(1).expect("kick");
    h.run();
    h.send(guest_hdr(Op::Request, 1000, 52), &[]);
    let used = h.rx.take_used();
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(lens, [0, 0, 44]);
    assert_eq!(h.counters.snapshot().rx_dropped, 2);
}

#[test]
fn control_packets_go_before_data_and_credit_requests_are_answered() {
    let (mut h, rx) = with_port(52);
    h.connect(1000, 52);
    let _host = rx.try_recv().expect("the host end");
    h.send(guest_hdr(Op::CreditRequest, 1000, 52), &[]);
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].op(), Some(Op::CreditUpdate));
    assert_eq!(got[0].hdr.buf_alloc, super::super::config::CONN_BUF_ALLOC);
}
