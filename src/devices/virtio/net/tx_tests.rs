//! TX descriptor handling on a mock queue, with a datagram socket standing in for the TAP.

use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::config::{HDR_LEN, MAX_FRAME_LEN};
use super::super::test_utils::*;
use super::*;

const QS: u16 = 16;

fn tx_queue(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
) -> (NetTxQueue, Arc<NetCounters>) {
    let counters = Arc::new(NetCounters::default());
    let tx = NetTxQueue::new(
        mem.clone(),
        vq.create_queue().expect("q"),
        Arc::clone(&counters),
    );
    (tx, counters)
}

fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).expect("elem").load();
    (e.id(), e.len())
}

#[test]
fn frames_reach_the_tap_whole() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    let a = frame(1000, 1);
    let b = frame(60, 2);
    put_bytes(&mem, BUF, &a[..HDR_LEN]);
    put_bytes(&mem, BUF + 0x100, &a[HDR_LEN..]);
    put_bytes(&mem, BUF + 0x1000, &b);
    let descs = [
        raw(BUF, HDR_LEN as u32, false, Some(1)),
        raw(BUF + 0x100, 1000, false, None),
        rd(BUF + 0x1000, b.len() as u32),
    ];
    vq.add_desc_chains(&descs, 0).expect("chains");
    let (mut tx, counters) = tx_queue(&mem, &vq);
    let (dev, host) = fake_tap();
    let sig = Signals::default();

    assert_eq!(tx.process(&dev, &sig).expect("tx"), 2);
    assert_eq!(host_recv(&host), Some(a));
    assert_eq!(host_recv(&host), Some(b));
    assert_eq!(host_recv(&host), None);
    assert_eq!(vq.used().idx().load(), 2);
    assert_eq!([used(&vq, 0), used(&vq, 1)], [(0, 0), (2, 0)]);
    assert_eq!(sig.used(), 1);
    let s = counters.snapshot();
    assert_eq!(
        (s.tx_frames, s.tx_bytes, s.tx_dropped, s.tx_errors),
        (2, 1060, 0, 0)
    );
}

#[test]
fn malformed_chains_are_dropped_and_the_device_goes_on() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    let good = frame(100, 7);
    put_bytes(&mem, BUF + 0x10_0000, &good);
    let big = (HDR_LEN + MAX_FRAME_LEN + 1) as u32;
    let descs = [
        rd(BUF, 10),                            // 0: shorter than the header
        rd(BUF, (HDR_LEN + 13) as u32),         // 1: no whole Ethernet header
        wr(BUF, 200),                           // 2: device-writable
        rd(MEM_SIZE as u64 - 50, 200),          // 3: runs off guest memory
        rd(u64::MAX - 0x10, 200),               // 4: address overflow
        rd(BUF, big),                           // 5: oversize
        raw(BUF, 12, false, Some(7)),           // 6: mixed directions
        raw(BUF + 0x100, 100, true, None),      // 7
        rd(BUF + 0x10_0000, good.len() as u32), // 8: good
    ];
    vq.add_desc_chains(&descs, 0).expect("chains");
    let (mut tx, counters) = tx_queue(&mem, &vq);
    let (dev, host) = fake_tap();
    let sig = Signals::default();
    assert_eq!(tx.process(&dev, &sig).expect("tx"), 8);
    assert_eq!(host_recv(&host), Some(good));
    assert_eq!(host_recv(&host), None);
    assert_eq!(vq.used().idx().load(), 8);
    for (i, head) in [0, 1, 2, 3, 4, 5, 6, 8].into_iter().enumerate() {
        assert_eq!(used(&vq, i), (head, 0));
    }
    let s = counters.snapshot();
    assert_eq!(
        (s.tx_dropped, s.tx_frames, s.tx_errors, s.queue_errors),
        (7, 1, 0, 0)
    );
    assert!(!tx.is_broken());
}

#[test]
fn write_errors_are_counted() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    put_bytes(&mem, BUF, &frame(100, 1));
    vq.add_desc_chains(&[rd(BUF, 112), rd(BUF, 112)], 0)
        .expect("chains");
    let (mut tx, counters) = tx_queue(&mem, &vq);
    let (dev, host) = fake_tap();
    drop(host);
    let sig = Signals::default();
    assert_eq!(tx.process(&dev, &sig).expect("tx"), 2);
    assert_eq!(vq.used().idx().load(), 2);
    let s = counters.snapshot();
    assert_eq!((s.tx_errors, s.tx_frames), (2, 0));
}

#[test]
fn malformed_avail_ring_needs_reset() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    vq.avail().idx().store(QS + 1);
    let (mut tx, counters) = tx_queue(&mem, &vq);
    let (dev, _host) = fake_tap();
    let sig = Signals::default();
    assert!(matches!(
        tx.process(&dev, &sig),
        Err(RingError::AvailRing(_))
    ));
    assert!(tx.is_broken());
    assert_eq!(sig.reset(), 1);
    assert_eq!(tx.process(&dev, &sig).expect("tx"), 0);
    assert_eq!(counters.snapshot().queue_errors, 1);
}

#[test]
fn no_interrupt_flag_is_honoured() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    put_bytes(&mem, BUF, &frame(100, 1));
    vq.add_desc_chains(&[rd(BUF, 112)], 0).expect("chains");
    mem.write_obj(1u16, GuestAddress(vq.avail_addr().0))
        .expect("flags");
    let (mut tx, _) = tx_queue(&mem, &vq);
    let (dev, _host) = fake_tap();
    let sig = Signals::default();
    assert_eq!(tx.process(&dev, &sig).expect("tx"), 1);
    assert_eq!(sig.used(), 0);
}

#[test]
fn a_rate_limited_queue_holds_frames_back_until_its_timer() {
    use crate::devices::virtio::rate_limiter::{RateLimiter, TokenBucket};
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    let a = frame(100, 1);
    let b = frame(100, 2);
    put_bytes(&mem, BUF, &a);
    put_bytes(&mem, BUF + 0x1000, &b);
    let descs = [rd(BUF, a.len() as u32), rd(BUF + 0x1000, b.len() as u32)];
    vq.add_desc_chains(&descs, 0).expect("chains");
    let (tx, _) = tx_queue(&mem, &vq);
    // One frame now, the next a long time later.
    let limiter = RateLimiter::new(None, TokenBucket::new(1, 0, 100_000)).expect("limiter");
    let limiter = Arc::new(std::sync::Mutex::new(limiter));
    let mut tx = tx.with_limiter(Some(Arc::clone(&limiter)));
    let (dev, host) = fake_tap();
    let sig = Signals::default();

    assert_eq!(tx.process(&dev, &sig).expect("tx"), 1);
    assert_eq!(host_recv(&host), Some(a));
    assert_eq!(host_recv(&host), None);
    assert_eq!(vq.used().idx().load(), 1);
    assert!(limiter.lock().unwrap().is_throttled());
    // Limits lifted (as a PATCH would): the held frame goes on the next round.
    limiter.lock().unwrap().update(None, Some(None));
    limiter.lock().unwrap().on_timer();
    assert_eq!(tx.process(&dev, &sig).expect("tx"), 1);
    assert_eq!(host_recv(&host), Some(b));
    assert_eq!(vq.used().idx().load(), 2);
}
