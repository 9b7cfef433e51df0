use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::test_utils::EventLoop;

const MEM: u64 = 1 << 20;

#[derive(Default)]
struct Sig(AtomicU32);
impl QueueSignal for Sig {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn signal_needs_reset(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn rd(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, 0, 0))
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("memory")
}

fn shared(stats_s: u32) -> Arc<BalloonShared> {
    Arc::new(BalloonShared::new(0, stats_s, 1).expect("timerfd"))
}

fn put_pfns(mem: &GuestMemoryMmap, at: u64, pfns: &[u32]) -> u32 {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    bytes.len() as u32
}

#[test]
fn inflated_pages_are_released_and_bad_pfns_refused() {
    let mem = memory();
    // Pages 0x40 and 0x41 (contiguous) and 0x50 hold data; 0xFFFF_FFFF and 0x100 (just past
    // RAM) are outside guest memory.
    for page in [0x40u64, 0x41, 0x50] {
        mem.write_slice(&[0xaa; 4096], GuestAddress(page << PAGE_SHIFT))
            .unwrap();
    }
    let len = put_pfns(&mem, 0x8000, &[0x40, 0x41, 0xFFFF_FFFF, 0x50, 0x100]);
    let iq = MockSplitQueue::create(&mem, GuestAddress(0x80000), 16);
    iq.add_desc_chains(&[rd(0x8000, len)], 0).unwrap();
    let dq = MockSplitQueue::create(&mem, GuestAddress(0x20000), 16);
    let sh = shared(0);
    let mut q = BalloonQueues::new(
        mem.clone(),
        iq.create_queue().unwrap(),
        dq.create_queue().unwrap(),
        None,
        Arc::clone(&sh),
    );
    let sig = Sig::default();
    assert_eq!(q.process_pages(true, &sig).unwrap(), 1);
    assert_eq!(iq.used().idx().load(), 1);
    assert_eq!(sig.0.load(Ordering::Relaxed), 1);
    assert_eq!(sh.counters.inflated_pages.load(Ordering::Relaxed), 3);
    assert_eq!(sh.counters.refused_pfns.load(Ordering::Relaxed), 2);
    // Released pages read back as zeros (MADV_DONTNEED on private anonymous memory).
    for page in [0x40u64, 0x41, 0x50] {
        let mut got = [0xffu8; 4096];
        mem.read_slice(&mut got, GuestAddress(page << PAGE_SHIFT))
            .unwrap();
        assert!(got.iter().all(|&b| b == 0), "page {page:#x} kept its data");
    }
}

#[test]
fn deflated_pages_are_counted_and_checked() {
    let mem = memory();
    let len = put_pfns(&mem, 0x8000, &[0x20, 0x4000_0000]);
    let iq = MockSplitQueue::create(&mem, GuestAddress(0x80000), 16);
    let dq = MockSplitQueue::create(&mem, GuestAddress(0x20000), 16);
    dq.add_desc_chains(&[rd(0x8000, len)], 0).unwrap();
    let sh = shared(0);
    let mut q = BalloonQueues::new(
        mem.clone(),
        iq.create_queue().unwrap(),
        dq.create_queue().unwrap(),
        None,
        Arc::clone(&sh),
    );
    assert_eq!(q.process_pages(false, &Sig::default()).unwrap(), 1);
    assert_eq!(sh.counters.deflated_pages.load(Ordering::Relaxed), 1);
    assert_eq!(sh.counters.refused_pfns.load(Ordering::Relaxed), 1);
}

#[test]
fn a_buffer_outside_memory_or_oversized_is_harmless() {
    let mem = memory();
    let iq = MockSplitQueue::create(&mem, GuestAddress(0x80000), 16);
    // A buffer past the end of RAM, and a 4 GiB one: nothing read, both completed.
    iq.add_desc_chains(&[rd(MEM + 0x8000, 64), rd(0x8000, u32::MAX)], 0)
        .unwrap();
    let dq = MockSplitQueue::create(&mem, GuestAddress(0x20000), 16);
    let sh = shared(0);
    let mut q = BalloonQueues::new(
        mem.clone(),
        iq.create_queue().unwrap(),
        dq.create_queue().unwrap(),
        None,
        Arc::clone(&sh),
    );
    assert_eq!(q.process_pages(true, &Sig::default()).unwrap(), 2);
    // The second buffer is read up to the limit: zeros are page frame 0, which is RAM.
    assert_eq!(
        sh.counters.inflated_pages.load(Ordering::Relaxed),
        u64::from(MAX_PFN_BYTES / 4)
    );
}

#[test]
fn statistics_are_read_held_and_given_back_on_the_interval() {
    let mem = memory();
    let mut bytes = Vec::new();
    for (tag, v) in [(4u16, 1000u64), (5, 4000), (6, 3000), (77, 1)] {
        bytes.extend(tag.to_le_bytes());
        bytes.extend(v.to_le_bytes());
    }
    mem.write_slice(&bytes, GuestAddress(0x9000)).unwrap();
    let (iq, dq, sq) = (
        MockSplitQueue::create(&mem, GuestAddress(0x80000), 16),
        MockSplitQueue::create(&mem, GuestAddress(0x20000), 16),
        MockSplitQueue::create(&mem, GuestAddress(0x30000), 16),
    );
    sq.add_desc_chains(&[rd(0x9000, bytes.len() as u32)], 0)
        .unwrap();
    let sh = shared(1);
    let mut q = BalloonQueues::new(
        mem.clone(),
        iq.create_queue().unwrap(),
        dq.create_queue().unwrap(),
        Some(sq.create_queue().unwrap()),
        Arc::clone(&sh),
    );
    let sig = Sig::default();
    assert_eq!(q.process_stats(&sig).unwrap(), 1);
    // Held, not returned yet.
    assert_eq!(sq.used().idx().load(), 0);
    let st = sh.statistics().unwrap();
    assert_eq!(st.guest.free_memory, Some(1000));
    assert_eq!(st.guest.total_memory, Some(4000));
    assert_eq!(st.guest.available_memory, Some(3000));
    assert_eq!(st.guest.swap_in, None);
    q.request_stats(&sig).unwrap();
    assert_eq!(sq.used().idx().load(), 1);
    // Nothing held any more: a second request is a no-op.
    q.request_stats(&sig).unwrap();
    assert_eq!(sq.used().idx().load(), 1);
}

#[test]
fn stats_parse_ignores_partial_entries() {
    let mut b = vec![4, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    b.extend([5, 0, 9]);
    let s = GuestStats::parse(&b);
    assert_eq!(s.free_memory, Some(1));
    assert_eq!(s.total_memory, None);
}

#[test]
fn the_device_offers_its_features_and_config() {
    let lp = EventLoop::start();
    let mut b = Balloon::new(16, true, 1, 128, lp.handle.clone()).unwrap();
    assert_eq!(b.device_type(), VIRTIO_ID_BALLOON);
    assert_eq!(b.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    let f = b.avail_features();
    assert_ne!(f & (1 << VIRTIO_BALLOON_F_STATS_VQ), 0);
    assert_ne!(f & (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM), 0);
    let mut c = [0u8; 8];
    b.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes(c[..4].try_into().unwrap()), 16 * 256);
    // The driver reports its size; num_pages is not the driver's to write.
    b.write_config(0, &[1, 2, 3, 4, 0, 1, 0, 0]);
    b.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes(c[..4].try_into().unwrap()), 16 * 256);
    assert_eq!(u32::from_le_bytes(c[4..].try_into().unwrap()), 256);
    let sh = b.shared();
    assert_eq!(sh.actual_mib(), 1);
    let gen0 = b.config_generation();
    sh.set_target_mib(64).unwrap();
    assert_ne!(b.config_generation(), gen0);
    assert_eq!(sh.target_mib(), 64);
    assert_eq!(
        sh.set_target_mib(129),
        Err(BalloonError::TooBig {
            mib: 129,
            ram_mib: 128
        })
    );
    assert_eq!(sh.set_stats_interval(0), Err(BalloonError::StatsSwitchOff));
    sh.set_stats_interval(5).unwrap();

    let plain = Balloon::new(0, false, 0, 128, lp.handle.clone()).unwrap();
    assert_eq!(plain.queue_max_sizes().len(), 2);
    assert_eq!(plain.avail_features() >> 1 & 0b11, 0);
    let sh = plain.shared();
    assert_eq!(sh.statistics(), Err(BalloonError::StatsDisabled));
    assert_eq!(sh.set_stats_interval(1), Err(BalloonError::StatsDisabled));
}
