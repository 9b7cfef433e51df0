//! Fuzzes virtio-vsock end to end on the host side: the real `VsockHandler` on a real event
//! loop, with a guest (TX and RX queue geometry and guest memory holding packets: headers,
//! payloads, any op, any port, any credit) and an in-process host port (1024, as the agent
//! port) that accepts the guest's connections and answers each with data. Packets run
//! through the TX queue into the muxer (connection table, credit, RST paths) and replies
//! come back through the RX queue. It must never panic, and the event loop must go idle.
//!
//! Input: a TX queue header and an RX queue header (common/guest.rs, 7 bytes each), one
//! byte of rounds (1..=4), then guest memory.

#![no_main]

#[path = "../common/guest.rs"]
mod guest;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use hvlite::devices::virtio::VirtioInterrupt;
use hvlite::devices::virtio::vsock::handler::VsockQueues;
use hvlite::devices::virtio::vsock::host::Backend;
use hvlite::devices::virtio::vsock::ring::Ring;
use hvlite::devices::virtio::vsock::rx::VsockRxQueue;
use hvlite::devices::virtio::vsock::tx::VsockTxQueue;
use hvlite::devices::virtio::vsock::{Muxer, Timeouts, VsockCounters, VsockHandler};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

const GUEST_CID: u64 = 3;
const HOST_PORT: u32 = 1024;

/// Runs the loop until nothing is ready (bounded: a busy loop is a finding).
fn settle(em: &mut EventManager<Subscriber>) {
    for _ in 0..1000 {
        match em.run_with_timeout(0) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    panic!("the vsock event loop never went idle");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 * guest::QUEUE_HEADER + 1 {
        return;
    }
    let (tx_head, rest) = data.split_at(guest::QUEUE_HEADER);
    let (rx_head, rest) = rest.split_at(guest::QUEUE_HEADER);
    let (&rounds, image) = rest.split_first().expect("length checked");
    let mem = guest::guest_memory(image);
    let (Some(txq), Some(rxq)) = (guest::queue(tx_head, &mem), guest::queue(rx_head, &mem)) else {
        return;
    };
    let Ok(event) = Queue::new(16) else {
        return;
    };
    let counters = Arc::new(VsockCounters::default());
    let rx_kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let tx_kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    ));
    let queues = VsockQueues {
        rx: VsockRxQueue::new(Ring::new(mem.clone(), rxq, Arc::clone(&counters))),
        tx: VsockTxQueue::new(Ring::new(mem.clone(), txq, Arc::clone(&counters))),
        event,
        rx_kick: rx_kick.try_clone().expect("dup"),
        tx_kick: tx_kick.try_clone().expect("dup"),
    };
    let backend = Backend::bind(None).expect("backend");
    let (port_tx, port_rx) = mpsc::channel::<UnixStream>();
    backend.register_port(HOST_PORT, port_tx);
    let Ok(muxer) = Muxer::new(
        GUEST_CID,
        Arc::new(backend),
        Arc::clone(&counters),
        Timeouts::default(),
    ) else {
        return;
    };
    let handler: Subscriber = Arc::new(Mutex::new(VsockHandler::new(queues, muxer, irq)));
    let Ok(mut em) = EventManager::<Subscriber>::new() else {
        return;
    };
    em.add_subscriber(handler);
    let mut peers = Vec::new();
    for _ in 0..(rounds % 4) + 1 {
        let _ = tx_kick.write(1);
        settle(&mut em);
        while let Ok(stream) = port_rx.try_recv() {
            peers.push(stream);
        }
        for p in &mut peers {
            let _ = p.set_nonblocking(true);
            let _ = p.write(b"reply from the host port");
        }
        let _ = rx_kick.write(1);
        settle(&mut em);
    }
});
