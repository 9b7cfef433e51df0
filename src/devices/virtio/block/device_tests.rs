//! The device through the `VirtioDevice` interface, with a real event-loop thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_RO, VIRTIO_BLK_T_IN};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::super::test_utils::*;
use super::*;
use crate::devices::virtio::test_utils::EventLoop;
use crate::devices::virtio::{VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt};

fn wait_for_interrupt(irq: &VirtioInterrupt) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if irq.eventfd().read().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn context(
    mem: &GuestMemoryMmap,
    queue: Queue,
    kick: &EventFd,
    irq: &Arc<VirtioInterrupt>,
) -> ActivateContext {
    ActivateContext {
        mem: mem.clone(),
        queues: vec![queue],
        kicks: vec![kick.try_clone().expect("clone")],
        interrupt: Arc::clone(irq),
    }
}

#[test]
fn identity_features_and_config() {
    let ev = EventLoop::start();
    let (_f, disk) = temp_disk(DISK_SECTORS, true);
    let mut dev = Block::new(disk, ev.handle.clone());
    assert_eq!(dev.device_type(), 2);
    assert_eq!(dev.queue_max_sizes(), &[256]);
    let features = dev.avail_features();
    assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
    assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    dev.write_config(0, &[1, 2, 3]);
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    dev.set_acked_features(u64::MAX);
    assert!(format!("{dev:?}").contains("Block"));
    let (_g, rw) = temp_disk(1, false);
    let dev = Block::new(rw, ev.handle.clone());
    assert_eq!(dev.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn activate_serve_reset_reactivate() {
    let ev = EventLoop::start();
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    let mut dev = Block::new(disk, ev.handle.clone());
    dev.set_acked_features(dev.avail_features());
    let vq = MockSplitQueue::new(&mem, 256);
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("irq"),
    ));

    dev.activate(context(
        &mem,
        vq.create_queue().expect("queue"),
        &kick,
        &irq,
    ))
    .expect("activate");
    assert!(dev.is_active());
    let again = dev.activate(context(
        &mem,
        vq.create_queue().expect("queue"),
        &kick,
        &irq,
    ));
    assert!(matches!(again, Err(ActivateError::Device(_))));

    put_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    vq.add_desc_chains(
        &[
            raw(HDR, 16, false, Some(1)),
            raw(BUF, 512, true, Some(2)),
            raw(STATUS, 1, true, None),
        ],
        0,
    )
    .expect("chain");
    kick.write(1).expect("kick");
    assert!(wait_for_interrupt(&irq), "no interrupt");
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(dev.stats().bytes_read, 512);
    assert_eq!(dev.counters().snapshot().requests, 1);

    dev.reset();
    assert!(!dev.is_active());
    // After reset the kick is not served.
    vq.add_desc_chains(
        &[
            raw(HDR, 16, false, Some(1)),
            raw(BUF, 512, true, Some(2)),
            raw(STATUS, 1, true, None),
        ],
        0,
    )
    .expect("chain");
    kick.write(1).expect("kick");
    // Two round trips through the event loop: a handler still registered would have been
    // woken by the kick in between, and would have read it.
    for _ in 0..2 {
        (ev.handle)
            .call_blocking(|_| Ok::<_, event_manager::Error>(()))
            .expect("event loop round trip");
    }
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(kick.read().expect("the kick is still pending"), 1);

    // Reactivated with a fresh queue state (next_avail = 0), both chains in the avail
    // ring are served.
    let kick2 = EventFd::new(EFD_NONBLOCK).expect("kick");
    dev.activate(context(
        &mem,
        vq.create_queue().expect("queue"),
        &kick2,
        &irq,
    ))
    .expect("reactivate");
    kick2.write(1).expect("kick");
    assert!(wait_for_interrupt(&irq), "no interrupt after reactivation");
    assert_eq!(vq.used().idx().load(), 2);
    drop(dev);
}

#[test]
fn activate_rejects_bad_contexts() {
    let ev = EventLoop::start();
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    let mut dev = Block::new(disk, ev.handle.clone());
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("irq"),
    ));
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let vq = MockSplitQueue::new(&mem, 256);

    let mut ctx = context(&mem, vq.create_queue().expect("queue"), &kick, &irq);
    ctx.queues.clear();
    assert!(matches!(
        dev.activate(ctx),
        Err(ActivateError::QueueCount { got: 0, want: 1 })
    ));
    let mut ctx = context(&mem, vq.create_queue().expect("queue"), &kick, &irq);
    ctx.kicks.push(EventFd::new(0).expect("extra"));
    assert!(matches!(
        dev.activate(ctx),
        Err(ActivateError::QueueCount { .. })
    ));
    // A queue that was never made ready.
    let ctx = context(&mem, Queue::new(256).expect("queue"), &kick, &irq);
    assert!(matches!(dev.activate(ctx), Err(ActivateError::Device(_))));
    assert!(!dev.is_active());
}
