//! The handler end to end: malformed rings, closing on drop, and megabytes both ways.

use std::io::{self, Write};

use super::super::config::CONN_BUF_ALLOC;
use super::super::packet::{HDR_LEN, Header, Op};
use super::super::test_utils::*;

#[test]
fn malformed_tx_ring_needs_reset_and_stops_the_queue() {
    let (mut h, _rx) = with_port(52);
    h.tx.set_avail_idx(QS + 2);
    h.tx_kick.write(1).expect("kick");
    h.run();
    assert!(h.irq.needs_reset());
    assert!(h.handler().tx().ring().is_broken());
    // The kick is off the loop: a new one is not served (and does not spin).
    h.tx_kick.write(1).expect("kick");
    assert!(h.quiet());
    assert_eq!(h.counters.snapshot().queue_errors, 1);
}

#[test]
fn malformed_rx_ring_needs_reset() {
    let (mut h, _rx) = with_port_rx(52, 0);
    h.rx.set_avail_idx(QS + 5);
    // A REQUEST gives the device something to put into RX buffers.
    h.send(guest_hdr(Op::Request, 1000, 52), &[]);
    assert!(h.irq.needs_reset());
    assert!(h.handler().rx().ring().is_broken());
    h.rx_kick.write(1).expect("kick");
    assert!(h.quiet());
}

#[test]
fn dropping_the_handler_closes_host_streams() {
    let (mut h, rx) = with_port(52);
    h.connect(1000, 52);
    let mut host = rx.try_recv().expect("the host end");
    assert_eq!(read_now(&mut host), Some(Vec::new()));
    drop(h);
    assert_eq!(read_now(&mut host), None);
}

/// What the guest driver knows of one connection's flow control.
#[derive(Default)]
struct GuestSide {
    /// The device's buffer and consumption, from its latest header.
    dev_buf_alloc: u32,
    dev_fwd_cnt: u32,
    /// Bytes the guest sent and consumed.
    tx_cnt: u32,
    fwd_cnt: u32,
}

impl GuestSide {
    fn credit(&self) -> usize {
        self.dev_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.dev_fwd_cnt)) as usize
    }

    fn header(&self, op: Op) -> Header {
        Header {
            fwd_cnt: self.fwd_cnt,
            ..guest_hdr(op, 1000, 52)
        }
    }
}

#[test]
fn four_mebibytes_each_way_arrive_intact() {
    const TOTAL: usize = 4 << 20;
    const RX_LEN: u32 = (HDR_LEN + 65536) as u32;
    let (mut h, rx) = with_port(52);
    h.connect(1000, 52);
    let mut host = rx.try_recv().expect("the host end");
    host.set_nonblocking(true).expect("non-blocking");
    h.post_rx(32, RX_LEN);
    let up = pattern(TOTAL, 1);
    let down = pattern(TOTAL, 2);
    let (mut up_sent, mut up_got) = (0, Vec::with_capacity(TOTAL));
    let (mut down_sent, mut down_got) = (0, Vec::with_capacity(TOTAL));
    let mut guest = GuestSide {
        dev_buf_alloc: CONN_BUF_ALLOC,
        ..GuestSide::default()
    };
    let mut rounds = 0;
    while up_got.len() < TOTAL || down_got.len() < TOTAL {
        rounds += 1;
        assert!(
            rounds < 10_000,
            "stalled: up {} down {}",
            up_got.len(),
            down_got.len()
        );
        // Guest to host, within the credit.
        loop {
            let n = guest.credit().min(65536).min(TOTAL - up_sent);
            if n == 0 {
                break;
            }
            h.send(guest.header(Op::Rw), &up[up_sent..up_sent + n]);
            up_sent += n;
            guest.tx_cnt = guest.tx_cnt.wrapping_add(n as u32);
        }
        // Host to guest, as much as the socket takes.
        match host.write(&down[down_sent..]) {
            Ok(n) => down_sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("host write: {e}"),
        }
        h.run();
        up_got.extend(read_now(&mut host).expect("host stream open"));
        h.run();
        // The guest reads what arrived, returns the buffers and tells its consumption.
        let got = h.recv();
        for p in &got {
            guest.dev_buf_alloc = p.hdr.buf_alloc;
            guest.dev_fwd_cnt = p.hdr.fwd_cnt;
            match p.op() {
                Some(Op::Rw) => {
                    down_got.extend_from_slice(&p.data);
                    guest.fwd_cnt = guest.fwd_cnt.wrapping_add(p.data.len() as u32);
                }
                Some(Op::CreditUpdate | Op::CreditRequest) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        if !got.is_empty() {
            h.send(guest.header(Op::CreditUpdate), &[]);
            let missing = 32 - h.rx.outstanding();
            h.post_rx(missing, RX_LEN);
        }
    }
    assert!(up_got == up, "guest to host bytes differ");
    assert!(down_got == down, "host to guest bytes differ");
    let s = h.counters.snapshot();
    assert_eq!(
        (s.bytes_from_guest, s.bytes_to_guest),
        (TOTAL as u64, TOTAL as u64)
    );
    assert_eq!(
        (s.resets_sent, s.dropped, s.malformed, s.rx_dropped),
        (0, 0, 0, 0)
    );
}
