//! RX descriptor handling on a mock queue, with a datagram socket standing in for the TAP.

use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::test_utils::*;
use super::*;

const QS: u16 = 16;

fn cfg(mergeable: bool, frame_capacity: usize) -> RxConfig {
    RxConfig {
        mergeable,
        guest_csum: true,
        frame_capacity,
    }
}

fn rx_queue(
    mem: &GuestMemoryMmap,
    queue: Queue,
    config: RxConfig,
) -> (NetRxQueue, Arc<NetCounters>) {
    let counters = Arc::new(NetCounters::default());
    let rx = NetRxQueue::new(mem.clone(), queue, Arc::clone(&counters), config);
    (rx, counters)
}

fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).expect("elem").load();
    (e.id(), e.len())
}

fn num_buffers(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    u16::from_le_bytes([
        get_bytes(mem, addr + 10, 2)[0],
        get_bytes(mem, addr + 11, 1)[0],
    ])
}

#[test]
fn frame_into_one_buffer() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    vq.add_desc_chains(&[wr(BUF, 2048)], 0).expect("chains");
    let (mut rx, counters) = rx_queue(&mem, vq.create_queue().expect("q"), cfg(false, 1530));
    let (dev, host) = fake_tap();
    let sig = Signals::default();
    let f = frame(100, 1);
    host.send(&f).expect("send");

    // The only buffer is used: nothing left for a next frame.
    assert_eq!(rx.process(&dev, &sig, 64).expect("rx"), RxProgress::Starved);
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(used(&vq, 0), (0, 112));
    assert_eq!(num_buffers(&mem, BUF), 1);
    assert_eq!(get_bytes(&mem, BUF + 12, 100), f[12..]);
    assert_eq!(sig.used(), 1);
    let s = counters.snapshot();
    assert_eq!((s.rx_frames, s.rx_bytes, s.rx_dropped), (1, 100, 0));
}

#[test]
fn mergeable_frame_spans_chains_and_waits_for_buffers() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    let chains: Vec<_> = (0..4).map(|i| wr(BUF + i * 0x1000, 1024)).collect();
    vq.add_desc_chains(&chains, 0).expect("chains");
    let (mut rx, counters) = rx_queue(&mem, vq.create_queue().expect("q"), cfg(true, 4096));
    let (dev, host) = fake_tap();
    let sig = Signals::default();
    let f = frame(2988, 5);
    host.send(&f).expect("send");

    // One frame over three chains; the fourth stays stashed, too small for the next.
    assert_eq!(rx.process(&dev, &sig, 64).expect("rx"), RxProgress::Starved);
    assert_eq!(vq.used().idx().load(), 3);
    assert_eq!(
        [used(&vq, 0), used(&vq, 1), used(&vq, 2)],
        [(0, 1024), (1, 1024), (2, 952)]
    );
    assert_eq!(num_buffers(&mem, BUF), 3);
    let mut got = get_bytes(&mem, BUF, 1024);
    got.extend(get_bytes(&mem, BUF + 0x1000, 1024));
    got.extend(get_bytes(&mem, BUF + 0x2000, 952));
    assert_eq!(got[12..], f[12..]);
    assert_eq!(rx.stashed_chains(), 1);

    // Not enough buffers for the next frame: it stays in the TAP.
    let g = frame(488, 9);
    host.send(&g).expect("send");
    assert_eq!(rx.process(&dev, &sig, 64).expect("rx"), RxProgress::Starved);
    assert_eq!(vq.used().idx().load(), 3);
    assert_eq!(counters.snapshot().rx_frames, 1);

    // The driver posts more; the waiting frame goes into the stashed chain.
    let more: Vec<_> = (4..7).map(|i| wr(BUF + i * 0x1000, 1024)).collect();
    vq.add_desc_chains(&more, 4).expect("chains");
    assert_eq!(rx.process(&dev, &sig, 64).expect("rx"), RxProgress::Starved);
    assert_eq!(vq.used().idx().load(), 4);
    assert_eq!(used(&vq, 3), (3, 500));
    assert_eq!(num_buffers(&mem, BUF + 0x3000), 1);
    assert_eq!(get_bytes(&mem, BUF + 0x3000 + 12, 488), g[12..]);
    let s = counters.snapshot();
    assert_eq!(
        (s.rx_frames, s.rx_bytes, s.rx_dropped, s.rx_errors),
        (2, 3476, 0, 0)
    );
    assert!(s.rx_starved >= 3);
}

#[test]
fn no_buffers_leaves_the_frame_pending() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    let (mut rx, counters) = rx_queue(&mem, vq.create_queue().expect("q"), cfg(false, 1530));
    let (dev, host) = fake_tap();
    let sig = Signals::default();
    let f = frame(60, 2);
    host.send(&f).expect("send");
    for _ in 0..3 {
        assert_eq!(rx.process(&dev, &sig, 64).expect("rx"), RxProgress::Starved);
    }
    assert_eq!(vq.used().idx().load(), 0);
    assert_eq!(sig.used(), 0);
    vq.add_desc_chains(&[wr(BUF, 2048), wr(BUF + 0x1000, 2048)], 0)
        .expect("chains");
    // One buffer left, and the TAP is empty.
    assert_eq!(rx.process(&dev, &sig, 64).expect("rx"), RxProgress::Drained);
    assert_eq!(used(&vq, 0), (0, 72));
    assert_eq!(get_bytes(&mem, BUF + 12, 60), f[12..]);
    assert_eq!(counters.snapshot().rx_frames, 1);
}

#[test]
fn malformed_buffers_are_returned_unused() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    let descs = [
        rd(BUF, 2048),                        // 0: device-readable
        wr(BUF, 8),                           // 1: shorter than the header
        wr(MEM_SIZE as u64 + 0x1000, 2048),   // 2: outside guest memory
        wr(u64::MAX - 0x10, 2048),            // 3: address overflow
        raw(BUF, 1000, true, Some(5)),        // 4: mixed directions
        raw(BUF + 0x1000, 1000, false, None), // 5
        wr(BUF + 0x10000, 2048),              // 6: good
        wr(BUF + 0x20000, 2048),              // 7: good, left for the next frame
    ];
    vq.add_desc_chains(&descs, 0).expect("chains");
    let (mut rx, counters) = rx_queue(&mem, vq.create_queue().expect("q"), cfg(false, 1530));
    let (dev, host) = fake_tap();
    let sig = Signals::default();
    let f = frame(100, 3);
    host.send(&f).expect("send");
    assert_eq!(rx.process(&dev, &sig, 64).expect("rx"), RxProgress::Drained);
    assert_eq!(vq.used().idx().load(), 6);
    for (i, head) in [0, 1, 2, 3, 4].into_iter().enumerate() {
        assert_eq!(used(&vq, i), (head, 0));
    }
    assert_eq!(used(&vq, 5), (6, 112));
    assert_eq!(get_bytes(&mem, BUF + 0x10000 + 12, 100), f[12..]);
    let s = counters.snapshot();
    assert_eq!((s.rx_dropped, s.rx_frames, s.queue_errors), (5, 1, 0));
    assert!(!rx.is_broken());
}

#[test]
fn header_split_over_descriptors_and_flags_cleared() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    let descs = [
        raw(BUF, 6, true, Some(1)),
        raw(BUF + 0x100, 2000, true, None),
        wr(BUF + 0x1000, 2000),
    ];
    vq.add_desc_chains(&descs, 0).expect("chains");
    let mut config = cfg(false, 1530);
    config.guest_csum = false;
    let (mut rx, _) = rx_queue(&mem, vq.create_queue().expect("q"), config);
    let (dev, host) = fake_tap();
    let sig = Signals::default();
    let mut f = frame(50, 4);
    f[0] = 2; // VIRTIO_NET_HDR_F_DATA_VALID
    host.send(&f).expect("send");
    assert_eq!(rx.process(&dev, &sig, 64).expect("rx"), RxProgress::Drained);
    assert_eq!(used(&vq, 0), (0, 62));
    assert_eq!(get_bytes(&mem, BUF, 1), [0]);
    assert_eq!(get_bytes(&mem, BUF + 0x100 + 4, 2), [1, 0]);
    assert_eq!(get_bytes(&mem, BUF + 0x100 + 6, 50), f[12..]);
}

#[test]
fn malformed_avail_ring_needs_reset() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    vq.avail().idx().store(QS + 3);
    let (mut rx, counters) = rx_queue(&mem, vq.create_queue().expect("q"), cfg(false, 1530));
    let (dev, _host) = fake_tap();
    let sig = Signals::default();
    assert!(matches!(
        rx.process(&dev, &sig, 64),
        Err(RingError::AvailRing(_))
    ));
    assert!(rx.is_broken());
    assert_eq!(sig.reset(), 1);
    assert_eq!(rx.process(&dev, &sig, 64).expect("rx"), RxProgress::Broken);
    assert_eq!(counters.snapshot().queue_errors, 1);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    let chains: Vec<_> = (0..3).map(|i| wr(BUF + i * 0x1000, 2048)).collect();
    vq.add_desc_chains(&chains, 0).expect("chains");
    let mut queue: Queue = vq.create_queue().expect("q");
    // MockSplitQueue lays its used ring over the end of the avail ring, used_event
    // included: move the used ring out of the way.
    queue.set_used_ring_address(Some(0x4000), Some(0));
    queue.set_event_idx(true);
    let used_event = vq.avail_addr().0 + 4 + 2 * u64::from(QS);
    // The driver wants an interrupt once the used index passes 1.
    mem.write_obj(1u16, GuestAddress(used_event))
        .expect("used_event");
    let (mut rx, _) = rx_queue(&mem, queue, cfg(false, 1530));
    let (dev, host) = fake_tap();
    let sig = Signals::default();
    host.send(&frame(20, 0)).expect("send");
    rx.process(&dev, &sig, 1).expect("rx");
    assert_eq!(sig.used(), 0, "used index 1 does not pass used_event 1");
    host.send(&frame(20, 0)).expect("send");
    rx.process(&dev, &sig, 1).expect("rx");
    assert_eq!(sig.used(), 1);
    host.send(&frame(20, 0)).expect("send");
    rx.process(&dev, &sig, 1).expect("rx");
    assert_eq!(sig.used(), 1, "used_event was not moved on");
}

#[test]
fn a_receive_limiter_holds_the_next_frame_back_until_paid() {
    use crate::devices::virtio::rate_limiter::{RateLimiter, TokenBucket};
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QS);
    vq.add_desc_chains(
        &[
            wr(BUF, 2048),
            wr(BUF + 0x1000, 2048),
            wr(BUF + 0x2000, 2048),
        ],
        0,
    )
    .expect("chains");
    let (rx, counters) = rx_queue(&mem, vq.create_queue().expect("q"), cfg(false, 1530));
    // 150 bytes a minute. A frame is paid after it was read: the first (100 bytes) is
    // paid, the second is read and cannot be, so the third stays in the TAP.
    let bucket = TokenBucket::new(150, 0, 60_000).expect("bucket");
    let limiter = Arc::new(std::sync::Mutex::new(
        RateLimiter::new(Some(bucket), None).expect("limiter"),
    ));
    let mut rx = rx.with_limiter(Some(Arc::clone(&limiter)));
    let (dev, host) = fake_tap();
    let sig = Signals::default();
    for i in 1..=3 {
        host.send(&frame(100, i)).expect("send");
    }
    assert_eq!(
        rx.process(&dev, &sig, 64).expect("rx"),
        RxProgress::Throttled
    );
    assert_eq!(counters.snapshot().rx_frames, 2);
    assert!(limiter.lock().unwrap().is_throttled());
    // Still throttled: nothing more is read, however often the device is asked.
    assert_eq!(
        rx.process(&dev, &sig, 64).expect("rx"),
        RxProgress::Throttled
    );
    assert_eq!(counters.snapshot().rx_frames, 2);
}
