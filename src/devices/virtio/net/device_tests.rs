//! The device through the `VirtioDevice` interface, over a real TAP and a real event-loop
//! thread (needs root and /dev/net/tun; skipped loudly otherwise).

use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::super::test_utils::*;
use super::*;
use crate::devices::virtio::test_utils::{EventLoop, wait_until};
use crate::devices::virtio::{VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt};

fn context(
    mem: &GuestMemoryMmap,
    rxq: &MockSplitQueue<GuestMemoryMmap>,
    txq: &MockSplitQueue<GuestMemoryMmap>,
) -> (ActivateContext, EventFd, EventFd, Arc<VirtioInterrupt>) {
    let rx_kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let tx_kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("irq"),
    ));
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues: vec![
            rxq.create_queue().expect("q"),
            txq.create_queue().expect("q"),
        ],
        kicks: vec![
            rx_kick.try_clone().expect("clone"),
            tx_kick.try_clone().expect("clone"),
        ],
        interrupt: Arc::clone(&irq),
    };
    (ctx, rx_kick, tx_kick, irq)
}

#[test]
fn net_device_over_a_real_tap() {
    if !tap_available("net_device_over_a_real_tap") {
        return;
    }
    let name = "hvt-dev0";
    let event_loop = EventLoop::start();
    let tap = Tap::open(name).expect("tap");
    let mac = [0x02, 0, 0, 0, 0, 0x42];
    let mut net = Net::new(tap, mac, event_loop.handle.clone());
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let mut cfg = [0u8; 10];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg, [2, 0, 0, 0, 0, 0x42, 1, 0, 1, 0]);
    let acked = [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
    ]
    .iter()
    .fold(0u64, |f, b| f | 1 << b);
    assert_eq!(net.avail_features() & acked, acked);
    net.set_acked_features(acked);

    let mem = guest_memory();
    let rxq = MockSplitQueue::new(&mem, 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), 16);
    let chains: Vec<_> = (0..6).map(|i| wr(BUF + i * 0x1000, 2048)).collect();
    rxq.add_desc_chains(&chains, 0).expect("chains");

    // Wrong queue count first; then the real activation.
    let (mut bad, ..) = context(&mem, &rxq, &txq);
    bad.queues.pop();
    assert!(matches!(
        net.activate(bad),
        Err(ActivateError::QueueCount { got: 1, want: 2 })
    ));
    let (ctx, _rx_kick, tx_kick, irq) = context(&mem, &rxq, &txq);
    net.activate(ctx).expect("activate");
    assert!(net.is_active());
    ip(&["link", "set", name, "up"]);
    let host = PacketSocket::bind(name);

    // Guest → host.
    let out = eth_frame(1000, 1);
    put_bytes(&mem, BUF + 0x10000, &[0; 12]);
    put_bytes(&mem, BUF + 0x10000 + 12, &out);
    txq.add_desc_chains(&[rd(BUF + 0x10000, 12 + out.len() as u32)], 0)
        .expect("chains");
    tx_kick.write(1).expect("kick");
    assert!(host.recv_matching(|f| f == out.as_slice()).is_some());
    wait_until("the TX interrupt", || irq.eventfd().read().is_ok());
    assert_eq!(net.stats().tx_frames, 1);

    // Host → guest (the kernel may send its own frames first: look in every buffer).
    let inbound = eth_frame(400, 5);
    host.send(&inbound);
    let found = |mem: &GuestMemoryMmap| {
        (0..6).any(|i| get_bytes(mem, BUF + i * 0x1000 + 12, inbound.len()) == inbound)
    };
    wait_until("the RX frame", || found(&mem));
    assert!(net.stats().rx_frames >= 1);

    net.reset();
    assert!(!net.is_active());
    // Still usable: a second activation works.
    let (ctx, ..) = context(&mem, &rxq, &txq);
    net.activate(ctx).expect("re-activate");
    assert!(net.is_active());
    drop(net);
    drop(event_loop);
}
