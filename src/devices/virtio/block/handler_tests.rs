//! The queue and its event-loop glue, end to end: kick eventfd → used ring → interrupt.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::super::disk::DiskImage;
use super::super::queue::{BlockCounters, BlockQueue};
use super::super::test_utils::*;
use super::*;
use crate::devices::virtio::{Subscriber, VIRTIO_INT_CONFIG, VIRTIO_INT_USED_RING};

const QSIZE: u16 = 256;

struct Rig {
    kick: EventFd,
    irq: Arc<VirtioInterrupt>,
    counters: Arc<BlockCounters>,
    handler: Arc<Mutex<BlockHandler>>,
}

fn rig(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, disk: DiskImage) -> Rig {
    rig_with(mem, vq.create_queue().expect("queue"), disk)
}

fn rig_with(mem: &GuestMemoryMmap, queue: Queue, disk: DiskImage) -> Rig {
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("irq"),
    ));
    let counters = Arc::new(BlockCounters::default());
    let queue = BlockQueue::new(mem.clone(), queue, Arc::new(disk), Arc::clone(&counters));
    let handler = BlockHandler::new(queue, kick.try_clone().expect("clone"), Arc::clone(&irq));
    Rig {
        kick,
        irq,
        counters,
        handler: Arc::new(Mutex::new(handler)),
    }
}

fn subscribe(em: &mut EventManager<Subscriber>, rig: &Rig) {
    let sub: Subscriber = rig.handler.clone();
    em.add_subscriber(sub);
}

/// A read of 1 KiB from sector 1 and a write of 512 bytes of 0x42 to sector 5, as two
/// chains at descriptor indices 0..3 and 3..6.
fn two_requests(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) {
    put_header(mem, HDR, VIRTIO_BLK_T_IN, 1);
    put_header(mem, HDR + 16, VIRTIO_BLK_T_OUT, 5);
    fill(mem, BUF + 0x1000, 512, 0x42);
    let descs = [
        raw(HDR, 16, false, Some(1)),
        raw(BUF, 1024, true, Some(2)),
        raw(STATUS, 1, true, None),
        raw(HDR + 16, 16, false, Some(4)),
        raw(BUF + 0x1000, 512, false, Some(5)),
        raw(STATUS + 1, 1, true, None),
    ];
    vq.add_desc_chains(&descs, 0).expect("chains");
}

#[test]
fn kick_to_used_ring_to_interrupt() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(DISK_SECTORS, false);
    let vq = MockSplitQueue::new(&mem, QSIZE);
    two_requests(&mem, &vq);
    fill(&mem, STATUS, 2, 0xee);
    let rig = rig(&mem, &vq, disk);
    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    subscribe(&mut em, &rig);

    rig.kick.write(1).expect("kick");
    assert_eq!(em.run_with_timeout(1000).expect("run"), 1);

    assert_eq!(vq.used().idx().load(), 2);
    let first = vq.used().ring().ref_at(0).expect("elem").load();
    let second = vq.used().ring().ref_at(1).expect("elem").load();
    assert_eq!((first.id(), first.len()), (0, 1025));
    assert_eq!((second.id(), second.len()), (3, 1));
    assert_eq!(get_bytes(&mem, STATUS, 2), [0, 0]);
    let want: Vec<u8> = (512..1536).map(pattern).collect();
    assert_eq!(get_bytes(&mem, BUF, 1024), want);
    assert!(file_bytes(&f)[2560..3072].iter().all(|&b| b == 0x42));

    assert_eq!(rig.irq.eventfd().read().expect("interrupt"), 1);
    assert_ne!(rig.irq.status() & VIRTIO_INT_USED_RING, 0);
    assert!(!rig.irq.needs_reset());
    assert!(rig.kick.read().is_err(), "the kick was not drained");
    let stats = rig.counters.snapshot();
    assert_eq!(
        (stats.requests, stats.bytes_read, stats.bytes_written),
        (2, 1024, 512)
    );
    assert_eq!((stats.errors, stats.dropped, stats.interrupts), (0, 0, 1));

    // A kick with nothing new: no work, no interrupt.
    rig.kick.write(1).expect("kick");
    assert_eq!(em.run_with_timeout(1000).expect("run"), 1);
    assert!(rig.irq.eventfd().read().is_err());
    assert_eq!(rig.counters.snapshot().requests, 2);
}

#[test]
fn malformed_avail_ring_needs_reset_and_loop_survives() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    let vq = MockSplitQueue::new(&mem, QSIZE);
    vq.avail().idx().store(QSIZE + 44);
    let bad = rig(&mem, &vq, disk);

    // Another device on the same loop, in separate memory.
    let mem2 = guest_memory();
    let (_g, disk2) = temp_disk(DISK_SECTORS, false);
    let vq2 = MockSplitQueue::new(&mem2, QSIZE);
    two_requests(&mem2, &vq2);
    let good = rig(&mem2, &vq2, disk2);

    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    subscribe(&mut em, &bad);
    subscribe(&mut em, &good);

    bad.kick.write(1).expect("kick");
    assert_eq!(em.run_with_timeout(1000).expect("run"), 1);
    assert!(bad.irq.needs_reset());
    assert_ne!(bad.irq.status() & VIRTIO_INT_CONFIG, 0);
    assert!(bad.handler.lock().expect("lock").queue().is_broken());
    assert_eq!(bad.counters.snapshot().queue_errors, 1);
    assert_eq!(vq.used().idx().load(), 0);

    // The broken queue's kick is no longer watched; the other device still works.
    bad.kick.write(1).expect("kick");
    good.kick.write(1).expect("kick");
    assert_eq!(em.run_with_timeout(1000).expect("run"), 1);
    assert_eq!(vq2.used().idx().load(), 2);
    assert_eq!(good.irq.eventfd().read().expect("interrupt"), 1);
    assert_eq!(bad.counters.snapshot().requests, 0);
}

#[test]
fn head_index_out_of_range_is_dropped() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    let vq = MockSplitQueue::new(&mem, QSIZE);
    vq.avail().ring().ref_at(0).expect("slot").store(QSIZE + 7);
    vq.avail().idx().store(1);
    let rig = rig(&mem, &vq, disk);
    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    subscribe(&mut em, &rig);
    rig.kick.write(1).expect("kick");
    em.run_with_timeout(1000).expect("run");
    let stats = rig.counters.snapshot();
    assert_eq!(
        (stats.requests, stats.dropped, stats.queue_errors),
        (1, 1, 0)
    );
    assert!(!rig.irq.needs_reset());
    assert_eq!(vq.used().idx().load(), 0);
}

#[test]
fn descriptor_loop_terminates() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    let vq = MockSplitQueue::new(&mem, QSIZE);
    put_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ...: virtio-queue stops after queue-size descriptors.
    let descs = [raw(HDR, 16, false, Some(1)), raw(BUF, 512, true, Some(0))];
    for (i, d) in descs.iter().enumerate() {
        vq.desc_table().store(i as u16, *d).expect("desc");
    }
    vq.avail().ring().ref_at(0).expect("slot").store(0);
    vq.avail().idx().store(1);
    let rig = rig(&mem, &vq, disk);
    let mut handler = rig.handler.lock().expect("lock");
    assert_eq!(handler.queue.process(rig.irq.as_ref()).expect("process"), 1);
    assert_eq!(vq.used().idx().load(), 1);
    // The last descriptor yielded (writable) takes the status; the readable header
    // descriptors among the data make it an I/O error.
    assert_eq!(rig.counters.snapshot().errors, 1);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    let vq = MockSplitQueue::new(&mem, QSIZE);
    two_requests(&mem, &vq);
    // used_event (after the avail ring): only interrupt once used idx passes 10.
    let used_event = vq.avail_addr().0 + 4 + 2 * u64::from(QSIZE);
    mem.write_obj(10u16, GuestAddress(used_event))
        .expect("used_event");
    let mut queue: Queue = vq.create_queue().expect("queue");
    queue.set_event_idx(true);
    let rig = rig_with(&mem, queue, disk);
    let mut handler = rig.handler.lock().expect("lock");
    assert_eq!(handler.queue.process(rig.irq.as_ref()).expect("process"), 2);
    assert_eq!(vq.used().idx().load(), 2);
    assert!(
        rig.irq.eventfd().read().is_err(),
        "interrupt not suppressed"
    );
    // avail_event (after the used ring) tells the driver where the device stopped.
    let avail_event = vq.used_addr().0 + 4 + 8 * u64::from(QSIZE);
    assert_eq!(
        mem.read_obj::<u16>(GuestAddress(avail_event))
            .expect("read"),
        2
    );

    // Two more chains (the same descriptors); used_event = 2 is crossed: interrupt.
    vq.avail().ring().ref_at(2).expect("slot").store(0);
    vq.avail().ring().ref_at(3).expect("slot").store(3);
    vq.avail().idx().store(4);
    mem.write_obj(2u16, GuestAddress(used_event))
        .expect("used_event");
    assert_eq!(handler.queue.process(rig.irq.as_ref()).expect("process"), 2);
    assert_eq!(rig.irq.eventfd().read().expect("interrupt"), 1);
}

#[test]
fn a_rate_limited_queue_waits_for_its_timer_not_spinning() {
    use crate::devices::virtio::rate_limiter::{RateLimiter, TokenBucket};
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    let vq = MockSplitQueue::new(&mem, QSIZE);
    two_requests(&mem, &vq);
    // One op now, the next 200 ms later.
    let limiter = RateLimiter::new(None, TokenBucket::new(1, 0, 200)).expect("limiter");
    let limiter = Arc::new(Mutex::new(limiter));
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("irq"),
    ));
    let counters = Arc::new(BlockCounters::default());
    let queue = BlockQueue::new(
        mem.clone(),
        vq.create_queue().expect("queue"),
        Arc::new(disk),
        Arc::clone(&counters),
    )
    .with_limiter(Some(Arc::clone(&limiter)));
    let handler = BlockHandler::new(queue, kick.try_clone().expect("clone"), Arc::clone(&irq));
    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    em.add_subscriber(Arc::new(Mutex::new(handler)) as Subscriber);

    let start = std::time::Instant::now();
    kick.write(1).expect("kick");
    assert_eq!(em.run_with_timeout(1000).expect("run"), 1);
    assert_eq!(vq.used().idx().load(), 1, "the second request waits");
    assert!(limiter.lock().unwrap().is_throttled());
    // Nothing to do until the timer fires: the loop sleeps (one event, ~200 ms later).
    assert_eq!(em.run_with_timeout(5000).expect("run"), 1);
    let waited = start.elapsed();
    assert_eq!(vq.used().idx().load(), 2);
    assert!(
        waited >= std::time::Duration::from_millis(150),
        "served after {waited:?}"
    );
    assert_eq!(counters.snapshot().requests, 2);
    assert!(!irq.needs_reset());
}
