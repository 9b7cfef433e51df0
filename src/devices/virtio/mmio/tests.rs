use std::sync::Mutex;

use vm_memory::Bytes;

use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use crate::devices::virtio::{VIRTIO_INT_CONFIG, VIRTIO_INT_USED_RING};

const MEM_SIZE: usize = 4 << 20;
const DEVICE_TYPE: u32 = 0x2a;
const MAX_SIZES: [u16; 2] = [256, 16];
const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const AVAIL_FEATURES: u64 = VERSION_1 | EVENT_IDX | 0b101;

/// What the fake device saw of one activation: per queue (size, desc, avail, used, ready,
/// event_idx), and the kick eventfds.
struct Activation {
    queues: Vec<(u16, u64, u64, u64, bool, bool)>,
    kicks: Vec<EventFd>,
}

#[derive(Default)]
struct Record {
    activations: Vec<Activation>,
    resets: usize,
    acked: Option<u64>,
    config: [u8; 8],
    fail_activate: bool,
    /// Each activation's queue positions (next_avail, next_used).
    positions: Vec<Vec<(u16, u16)>>,
}

struct FakeDevice(Arc<Mutex<Record>>);

impl FakeDevice {
    fn rec(&self) -> std::sync::MutexGuard<'_, Record> {
        self.0.lock().unwrap()
    }
}

fn config_index(offset: u64, i: usize) -> Option<usize> {
    usize::try_from(offset).ok()?.checked_add(i)
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &MAX_SIZES
    }
    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }
    fn set_acked_features(&mut self, features: u64) {
        self.rec().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let rec = self.rec();
        for (i, b) in data.iter_mut().enumerate() {
            *b = config_index(offset, i)
                .and_then(|x| rec.config.get(x))
                .map_or(0, |v| *v);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut rec = self.rec();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = config_index(offset, i).and_then(|x| rec.config.get_mut(x)) {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut rec = self.rec();
        if rec.fail_activate {
            return Err(ActivateError::Device("told to fail".into()));
        }
        let positions = (ctx.queues.iter())
            .map(|q| (q.next_avail(), q.next_used()))
            .collect();
        rec.positions.push(positions);
        let queues = ctx
            .queues
            .iter()
            .map(|q| {
                let (d, a, u) = (q.desc_table(), q.avail_ring(), q.used_ring());
                (q.size(), d, a, u, q.ready(), q.event_idx_enabled())
            })
            .collect();
        rec.activations.push(Activation {
            queues,
            kicks: ctx.kicks,
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.rec().resets += 1;
    }
}

struct Fixture {
    t: MmioTransport,
    rec: Arc<Mutex<Record>>,
    kicks: Vec<EventFd>,
    irq: Arc<VirtioInterrupt>,
}

fn fixture() -> Fixture {
    let rec = Arc::new(Mutex::new(Record::default()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let kicks: Vec<_> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let clones = kicks.iter().map(|k| k.try_clone().unwrap()).collect();
    let dev = Box::new(FakeDevice(rec.clone()));
    let t = MmioTransport::new(dev, mem, irq.clone(), clones).unwrap();
    Fixture { t, rec, kicks, irq }
}

fn w(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn r(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// ACKNOWLEDGE, DRIVER, both feature halves, FEATURES_OK; returns the Status read back.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    w(t, REG_STATUS, ACKNOWLEDGE);
    w(t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    w(t, REG_DRIVER_FEATURES_SEL, 0);
    w(t, REG_DRIVER_FEATURES, features as u32);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    w(t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    r(t, REG_STATUS)
}

/// Queue `index` at `base` (desc), `base + 0x1000` (avail), `base + 0x2000` (used).
fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
    w(t, REG_QUEUE_SEL, index);
    w(t, REG_QUEUE_NUM, size);
    for (low, addr) in [
        (REG_QUEUE_DESC_LOW, base),
        (REG_QUEUE_DRIVER_LOW, base + 0x1000),
        (REG_QUEUE_DEVICE_LOW, base + 0x2000),
    ] {
        w(t, low, addr as u32);
        w(t, low + 4, (addr >> 32) as u32);
    }
    w(t, REG_QUEUE_READY, 1);
}

fn driver_ok(t: &mut MmioTransport) -> u32 {
    w(
        t,
        REG_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    r(t, REG_STATUS)
}

fn full_init(t: &mut MmioTransport) {
    assert_eq!(negotiate(t, VERSION_1 | EVENT_IDX), 0xb);
    setup_queue(t, 0, 128, 0x10000);
    setup_queue(t, 1, 16, 0x20000);
    assert_eq!(driver_ok(t), 0xf);
}

#[test]
fn new_checks_kicks_and_queue_sizes() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let dev = Box::new(FakeDevice(Arc::default()));
    let one = vec![EventFd::new(EFD_NONBLOCK).unwrap()];
    let res = MmioTransport::new(dev, mem, irq, one);
    assert!(matches!(
        res,
        Err(MmioError::KickCount {
            kicks: 1,
            queues: 2
        })
    ));
}

#[test]
fn identification_registers() {
    let Fixture { mut t, .. } = fixture();
    assert_eq!(r(&mut t, REG_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r(&mut t, REG_VERSION), 2);
    assert_eq!(r(&mut t, REG_DEVICE_ID), DEVICE_TYPE);
    assert_eq!(r(&mut t, REG_VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(t.device_type(), DEVICE_TYPE);
    assert!(!t.is_activated());
    for (sel, max) in [(0, 256), (1, 16), (2, 0), (u32::MAX, 0)] {
        w(&mut t, REG_QUEUE_SEL, sel);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), max);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    }
    assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 0);
}

#[test]
fn device_features_both_halves() {
    let Fixture { mut t, .. } = fixture();
    for (sel, want) in [(0, AVAIL_FEATURES as u32), (1, 1), (2, 0), (0, 0x2000_0005)] {
        w(&mut t, REG_DEVICE_FEATURES_SEL, sel);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), want);
    }
}

#[test]
fn feature_negotiation_acks_both_halves() {
    let Fixture { mut t, rec, .. } = fixture();
    assert_eq!(negotiate(&mut t, VERSION_1 | 0b100), 0xb);
    assert_eq!(rec.lock().unwrap().acked, Some(VERSION_1 | 0b100));
}

#[test]
fn bad_features_leave_features_ok_clear() {
    for features in [
        0b1,
        VERSION_1 | 0b10,
        VERSION_1 | (1 << 40),
        AVAIL_FEATURES | (1 << 63),
    ] {
        let Fixture { mut t, rec, .. } = fixture();
        assert_eq!(negotiate(&mut t, features), 0x3, "features {features:#x}");
        assert_eq!(rec.lock().unwrap().acked, None);
        // DRIVER_OK cannot follow a rejected FEATURES_OK.
        assert_eq!(driver_ok(&mut t), 0x3);
    }
    // A non-zero word beyond bit 63 is a feature the device does not offer.
    let Fixture { mut t, rec, .. } = fixture();
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    w(&mut t, REG_DRIVER_FEATURES_SEL, 2);
    w(&mut t, REG_DRIVER_FEATURES, 1);
    assert_eq!(negotiate(&mut t, VERSION_1), 0x3);
    assert_eq!(rec.lock().unwrap().acked, None);
}

#[test]
fn full_init_activates_with_queue_addresses() {
    let Fixture { mut t, rec, .. } = fixture();
    full_init(&mut t);
    assert!(t.is_activated());
    let rec = rec.lock().unwrap();
    assert_eq!(rec.activations.len(), 1);
    let act = &rec.activations[0];
    assert_eq!(
        act.queues,
        vec![
            (128, 0x10000, 0x11000, 0x12000, true, true),
            (16, 0x20000, 0x21000, 0x22000, true, true),
        ]
    );
    assert_eq!(act.kicks.len(), 2);
    w(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
}

#[test]
fn queue_notify_signals_the_kick() {
    let Fixture {
        mut t, kicks, rec, ..
    } = fixture();
    w(&mut t, REG_QUEUE_NOTIFY, 1);
    assert_eq!(kicks[1].read().unwrap(), 1);
    assert!(kicks[0].read().is_err());
    w(&mut t, REG_QUEUE_NOTIFY, 2);
    w(&mut t, REG_QUEUE_NOTIFY, u32::MAX);
    assert!(kicks.iter().all(|k| k.read().is_err()));
    // The device's clones see the same counter.
    full_init(&mut t);
    w(&mut t, REG_QUEUE_NOTIFY, 0);
    assert_eq!(
        rec.lock().unwrap().activations[0].kicks[0].read().unwrap(),
        1
    );
}

fn assert_needs_reset(t: &mut MmioTransport, rec: &Mutex<Record>, irq: &VirtioInterrupt) {
    assert_eq!(driver_ok(t), 0xf | NEEDS_RESET);
    assert!(!t.is_activated());
    assert!(rec.lock().unwrap().activations.is_empty());
    assert_eq!(irq.status() & VIRTIO_INT_CONFIG, VIRTIO_INT_CONFIG);
}

#[test]
fn driver_ok_with_unready_or_invalid_queue_needs_reset() {
    // Queue 1 never set up.
    let Fixture {
        mut t, rec, irq, ..
    } = fixture();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 128, 0x10000);
    assert_needs_reset(&mut t, &rec, &irq);

    let bad: [(u32, u64); 5] = [
        (100, 0x20000),               // not a power of two
        (32, 0x20000),                // above the maximum (16)
        (0, 0x20000),                 // empty
        (16, 0x20008),                // misaligned descriptor table
        (16, MEM_SIZE as u64 - 0x10), // rings outside guest memory
    ];
    for (size, base) in bad {
        let Fixture {
            mut t, rec, irq, ..
        } = fixture();
        negotiate(&mut t, VERSION_1);
        setup_queue(&mut t, 0, 128, 0x10000);
        setup_queue(&mut t, 1, size, base);
        assert_needs_reset(&mut t, &rec, &irq);
    }

    // The device refusing to start also ends in needs-reset.
    let Fixture {
        mut t, rec, irq, ..
    } = fixture();
    rec.lock().unwrap().fail_activate = true;
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 128, 0x10000);
    setup_queue(&mut t, 1, 16, 0x20000);
    assert_needs_reset(&mut t, &rec, &irq);
    // The driver echoes NEEDS_RESET back when it adds FAILED.
    w(&mut t, REG_STATUS, 0xf | NEEDS_RESET | FAILED);
    assert_eq!(r(&mut t, REG_STATUS), 0xf | NEEDS_RESET | FAILED);
}

#[test]
fn writes_in_the_wrong_phase_are_ignored() {
    let Fixture { mut t, rec, .. } = fixture();
    // Status bits out of order, or cleared.
    for value in [
        DRIVER,
        FEATURES_OK | ACKNOWLEDGE,
        DRIVER_OK | ACKNOWLEDGE,
        0x100,
    ] {
        w(&mut t, REG_STATUS, value);
        assert_eq!(r(&mut t, REG_STATUS), 0, "status {value:#x}");
    }
    w(&mut t, REG_STATUS, ACKNOWLEDGE);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE);
    // Features before DRIVER, queue config before FEATURES_OK.
    w(&mut t, REG_DRIVER_FEATURES, 0b100);
    setup_queue(&mut t, 0, 128, 0x10000);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    w(&mut t, REG_STATUS, ACKNOWLEDGE);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER);
    assert_eq!(negotiate(&mut t, VERSION_1), 0xb);
    assert_eq!(rec.lock().unwrap().acked, Some(VERSION_1));
    // Features after FEATURES_OK.
    w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
    w(&mut t, REG_DRIVER_FEATURES, 0b1);
    assert_eq!(t.driver_features, VERSION_1);
    setup_queue(&mut t, 0, 128, 0x10000);
    setup_queue(&mut t, 1, 16, 0x20000);
    assert_eq!(driver_ok(&mut t), 0xf);
    // Queue config after DRIVER_OK; a repeated DRIVER_OK does not activate again.
    w(&mut t, REG_QUEUE_SEL, 0);
    w(&mut t, REG_QUEUE_READY, 0);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
    assert_eq!(driver_ok(&mut t), 0xf);
    assert_eq!(rec.lock().unwrap().activations.len(), 1);
}

#[test]
fn reset_allows_a_second_activation() {
    let Fixture {
        mut t, rec, irq, ..
    } = fixture();
    w(&mut t, REG_STATUS, 0);
    assert_eq!(rec.lock().unwrap().resets, 0);
    full_init(&mut t);
    irq.signal_used_queue().unwrap();
    w(&mut t, REG_STATUS, 0);
    assert_eq!(rec.lock().unwrap().resets, 1);
    assert!(!t.is_activated());
    assert_eq!(r(&mut t, REG_STATUS), 0);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    full_init(&mut t);
    assert!(t.is_activated());
    assert_eq!(rec.lock().unwrap().activations.len(), 2);
    // A reset also clears a needs-reset condition.
    w(&mut t, REG_STATUS, 0);
    negotiate(&mut t, VERSION_1);
    assert_eq!(driver_ok(&mut t) & NEEDS_RESET, NEEDS_RESET);
    w(&mut t, REG_STATUS, 0);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    assert_eq!(rec.lock().unwrap().resets, 2);
}

#[test]
fn interrupt_status_and_ack() {
    let Fixture { mut t, irq, .. } = fixture();
    irq.signal_used_queue().unwrap();
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), VIRTIO_INT_USED_RING);
    irq.signal_config_change().unwrap();
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 3);
    assert_eq!(irq.eventfd().read().unwrap(), 2);
    w(&mut t, REG_INTERRUPT_ACK, VIRTIO_INT_USED_RING);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), VIRTIO_INT_CONFIG);
    w(&mut t, REG_INTERRUPT_ACK, u32::MAX);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    // InterruptStatus is read-only.
    w(&mut t, REG_INTERRUPT_STATUS, 3);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
}

#[test]
fn config_space_accesses_of_every_size() {
    let Fixture { mut t, rec, .. } = fixture();
    t.write(0x100, &[0x11]);
    t.write(0x101, &[0x22, 0x33]);
    t.write(0x103, &[0x44, 0x55, 0x66, 0x77]);
    assert_eq!(
        rec.lock().unwrap().config,
        [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0]
    );
    t.write(0x100, &0x8877_6655_4433_2211u64.to_le_bytes());
    let mut eight = [0u8; 8];
    t.read(0x100, &mut eight);
    assert_eq!(u64::from_le_bytes(eight), 0x8877_6655_4433_2211);
    let mut four = [0u8; 4];
    t.read(0x104, &mut four);
    assert_eq!(four, [0x55, 0x66, 0x77, 0x88]);
    let mut two = [0u8; 2];
    t.read(0x107, &mut two);
    assert_eq!(two, [0x88, 0]);
    let mut one = [0xffu8; 1];
    t.read(0x200, &mut one);
    assert_eq!(one, [0]);
    // Straddling the end of the window: ignored.
    four = [0xff; 4];
    t.read(0xffe, &mut four);
    assert_eq!(four, [0; 4]);
}

#[test]
fn odd_register_accesses_are_ignored() {
    let Fixture { mut t, .. } = fixture();
    let mut eight = [0xffu8; 8];
    t.read(REG_MAGIC_VALUE, &mut eight);
    assert_eq!(eight, [0; 8]);
    let mut four = [0xffu8; 4];
    t.read(0x2, &mut four);
    assert_eq!(four, [0; 4]);
    let mut two = [0xffu8; 2];
    t.read(REG_MAGIC_VALUE, &mut two);
    assert_eq!(two, [0; 2]);
    t.write(REG_STATUS, &[1]);
    t.write(REG_STATUS, &[1, 0]);
    t.write(REG_STATUS, &1u64.to_le_bytes());
    t.write(REG_STATUS + 1, &[1, 0, 0, 0]);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    t.read(REG_MAGIC_VALUE, &mut []);
    t.write(REG_STATUS, &[]);
}

#[test]
fn garbage_never_panics() {
    let Fixture { mut t, rec, .. } = fixture();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let sizes = [0, 1, 2, 3, 4, 4, 4, 5, 8, 16];
    for _ in 0..200_000 {
        let x = next();
        let offset = match x % 8 {
            0 => next(),
            1 => (next() % 0x1200) & !3,
            _ => (next() % 0x110) & !3,
        };
        let len = sizes[(next() % sizes.len() as u64) as usize];
        let value = match next() % 4 {
            0 => next() % 0x100,
            _ => next(),
        };
        let mut buf = value.to_le_bytes().repeat(2);
        buf.truncate(len);
        if x & (1 << 40) != 0 {
            t.read(offset, &mut buf);
        } else {
            t.write(offset, &buf);
        }
    }
    // Whatever happened, a reset brings the transport back to a working state.
    w(&mut t, REG_STATUS, 0);
    rec.lock().unwrap().fail_activate = false;
    let before = rec.lock().unwrap().activations.len();
    full_init(&mut t);
    assert_eq!(rec.lock().unwrap().activations.len(), before + 1);
}

#[test]
fn refused_accesses_are_counted_and_a_good_driver_has_none() {
    let mut f = fixture();
    let refused = f.t.refusals();
    full_init(&mut f.t);
    assert_eq!(refused.load(Ordering::Relaxed), 0);
    w(&mut f.t, 0x0c, 1); // unknown register
    w(&mut f.t, REG_QUEUE_NUM, 8); // queue register after DRIVER_OK
    w(&mut f.t, REG_QUEUE_NOTIFY, 7); // absent queue
    f.t.write(REG_STATUS, &[1, 2]); // wrong width
    f.t.read(MMIO_WINDOW_SIZE, &mut [0u8; 4]); // outside the window
    w(&mut f.t, REG_STATUS, ACKNOWLEDGE); // a bit taken away
    assert_eq!(refused.load(Ordering::Relaxed), 6);
}

#[test]
fn a_saved_transport_restores_and_resumes_its_queues() {
    let Fixture {
        mut t, irq, rec, ..
    } = fixture();
    full_init(&mut t);
    // The device used 5 chains of queue 0: the used ring's idx says so.
    t.mem.write_obj(5u16, GuestAddress(0x12002)).unwrap();
    irq.trigger(VIRTIO_INT_USED_RING).unwrap();
    let saved = t.save_state();
    assert!(saved.activated);
    assert_eq!(saved.interrupt_status, VIRTIO_INT_USED_RING);
    assert_eq!(
        (saved.queues[0].next_avail, saved.queues[0].next_used),
        (5, 5)
    );
    assert_eq!(saved.queues[1].size, 16);
    assert_eq!(rec.lock().unwrap().activations.len(), 1);

    let Fixture {
        t: mut fresh,
        rec: fresh_rec,
        irq: fresh_irq,
        ..
    } = fixture();
    fresh.mem.write_obj(5u16, GuestAddress(0x12002)).unwrap();
    fresh.check_state(&saved).unwrap();
    fresh.restore_state(&saved).unwrap();
    assert!(fresh.is_activated());
    assert_eq!(fresh_irq.status(), VIRTIO_INT_USED_RING);
    assert_eq!(r(&mut fresh, REG_STATUS), 0xf);
    let fr = fresh_rec.lock().unwrap();
    assert_eq!(fr.positions, vec![vec![(5, 5), (0, 0)]]);
    assert_eq!(fr.acked, Some(VERSION_1 | EVENT_IDX));
    assert_eq!(fr.activations[0].queues[0].0, 128);
    drop(fr);
    assert_eq!(fresh.save_state(), saved);

    // Another device type, queue count or feature set is refused.
    let mut other = saved.clone();
    other.device_type = 7;
    assert!(fresh.check_state(&other).is_err());
    let mut other = saved.clone();
    other.queues.pop();
    assert!(fresh.check_state(&other).is_err());
    let mut other = saved.clone();
    other.acked_features |= 1 << 40;
    assert!(fresh.check_state(&other).is_err());
}

#[test]
fn a_device_saved_before_driver_ok_is_not_activated() {
    let Fixture { mut t, .. } = fixture();
    assert_eq!(negotiate(&mut t, VERSION_1), 0xb);
    let saved = t.save_state();
    let Fixture {
        t: mut fresh, rec, ..
    } = fixture();
    fresh.restore_state(&saved).unwrap();
    assert!(!fresh.is_activated());
    assert!(rec.lock().unwrap().activations.is_empty());
    assert_eq!(r(&mut fresh, REG_STATUS), 0xb);
}
