//! The queues and their event-loop glue end to end: TAP/kick → used ring → interrupt.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::super::counters::NetCounters;
use super::super::rx::RxConfig;
use super::super::test_utils::*;
use super::*;
use crate::devices::virtio::Subscriber;

const QS: u16 = 16;

/// An RX queue (no mergeable buffers, 1530-byte frames) and a TX queue on the mock rings,
/// sharing one set of counters.
fn queues(
    mem: &GuestMemoryMmap,
    rxq: &MockSplitQueue<GuestMemoryMmap>,
    txq: &MockSplitQueue<GuestMemoryMmap>,
) -> (NetRxQueue, NetTxQueue, Arc<NetCounters>) {
    let counters = Arc::new(NetCounters::default());
    let config = RxConfig {
        mergeable: false,
        guest_csum: true,
        frame_capacity: 1530,
    };
    let rx = NetRxQueue::new(
        mem.clone(),
        rxq.create_queue().expect("q"),
        Arc::clone(&counters),
        config,
    );
    let tx = NetTxQueue::new(
        mem.clone(),
        txq.create_queue().expect("q"),
        Arc::clone(&counters),
    );
    (rx, tx, counters)
}

#[test]
fn starved_rx_parks_the_tap_until_a_kick_and_tx_flows() {
    let mem = guest_memory();
    let rxq = MockSplitQueue::new(&mem, QS);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QS);
    let (rx, tx, counters) = queues(&mem, &rxq, &txq);
    let rx_kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let tx_kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("irq"),
    ));
    let (dev, host) = fake_tap();
    let handler = Arc::new(Mutex::new(NetHandler::new(
        dev,
        rx,
        tx,
        rx_kick.try_clone().expect("clone"),
        tx_kick.try_clone().expect("clone"),
        Arc::clone(&irq),
    )));
    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    let sub: Subscriber = handler.clone();
    em.add_subscriber(sub);
    assert!(handler.lock().expect("lock").tap_watched());

    // A frame arrives with no RX buffers: the TAP is parked, and nothing spins.
    let f = frame(80, 3);
    host.send(&f).expect("send");
    assert_eq!(em.run_with_timeout(1000).expect("run"), 1);
    assert!(!handler.lock().expect("lock").tap_watched());
    assert_eq!(em.run_with_timeout(50).expect("run"), 0);

    // The driver posts buffers and kicks: the waiting frame is delivered at once.
    rxq.add_desc_chains(&[wr(BUF, 2048), wr(BUF + 0x1000, 2048)], 0)
        .expect("chains");
    rx_kick.write(1).expect("kick");
    assert_eq!(em.run_with_timeout(1000).expect("run"), 1);
    assert_eq!(rxq.used().idx().load(), 1);
    assert_eq!(get_bytes(&mem, BUF + 12, 80), f[12..]);
    assert!(handler.lock().expect("lock").tap_watched());
    assert_eq!(irq.eventfd().read().expect("interrupt"), 1);
    assert_eq!(
        irq.status() & crate::devices::virtio::VIRTIO_INT_USED_RING,
        1
    );
    // The TAP is empty again: no further events.
    assert_eq!(em.run_with_timeout(50).expect("run"), 0);

    // TX: kick → frame on the host side → interrupt.
    let g = frame(300, 8);
    put_bytes(&mem, BUF + 0x8000, &g);
    txq.add_desc_chains(&[rd(BUF + 0x8000, g.len() as u32)], 0)
        .expect("chains");
    tx_kick.write(1).expect("kick");
    assert_eq!(em.run_with_timeout(1000).expect("run"), 1);
    assert_eq!(host_recv(&host), Some(g));
    assert_eq!(txq.used().idx().load(), 1);
    assert_eq!(irq.eventfd().read().expect("interrupt"), 1);
    let s = counters.snapshot();
    assert_eq!((s.rx_frames, s.tx_frames, s.interrupts), (1, 1, 2));
}

#[test]
fn broken_tx_ring_unregisters_its_kick() {
    let mem = guest_memory();
    let rxq = MockSplitQueue::new(&mem, QS);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QS);
    txq.avail().idx().store(QS + 2);
    let (rx, tx, counters) = queues(&mem, &rxq, &txq);
    let tx_kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("irq"),
    ));
    let (dev, _host) = fake_tap();
    let handler = NetHandler::new(
        dev,
        rx,
        tx,
        EventFd::new(EFD_NONBLOCK).expect("kick"),
        tx_kick.try_clone().expect("clone"),
        Arc::clone(&irq),
    );
    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    em.add_subscriber(Arc::new(Mutex::new(handler)));
    tx_kick.write(1).expect("kick");
    assert_eq!(em.run_with_timeout(1000).expect("run"), 1);
    assert!(irq.needs_reset());
    // The kick is off the loop: a new one is not served (and does not spin).
    tx_kick.write(1).expect("kick");
    assert_eq!(em.run_with_timeout(50).expect("run"), 0);
    assert_eq!(counters.snapshot().queue_errors, 1);
}
