//! A hostile virtio-mmio driver, as operations for the table-driven guest: correct set-up
//! where it needs one, then every way of misprogramming a device the test asks for.

use super::program::Op;

/// virtio-mmio register offsets.
const DEVICE_FEATURES_SEL: u64 = 0x14;
const DRIVER_FEATURES: u64 = 0x20;
const DRIVER_FEATURES_SEL: u64 = 0x24;
const QUEUE_SEL: u64 = 0x30;
const QUEUE_NUM: u64 = 0x38;
const QUEUE_READY: u64 = 0x44;
const QUEUE_NOTIFY: u64 = 0x50;
const INTERRUPT_ACK: u64 = 0x64;
const STATUS: u64 = 0x70;
const QUEUE_DESC_LOW: u64 = 0x80;
const QUEUE_DESC_HIGH: u64 = 0x84;
const QUEUE_AVAIL_LOW: u64 = 0x90;
const QUEUE_AVAIL_HIGH: u64 = 0x94;
const QUEUE_USED_LOW: u64 = 0xa0;
const QUEUE_USED_HIGH: u64 = 0xa4;

const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const FEATURES_OK: u32 = 8;
const DRIVER_OK: u32 = 4;

const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// One device as the driver sees it: its MMIO window, its queue count and a private area
/// of guest RAM (rings at +0, +0x1000, +0x2000 per queue, buffers from +0x40000).
#[derive(Clone, Copy)]
pub struct Dev {
    pub mmio: u64,
    pub queues: u32,
    pub area: u64,
}

impl Dev {
    fn reg(&self, off: u64, v: u32) -> Op {
        Op::Write32(self.mmio + off, v)
    }
    pub fn desc(&self, q: u32) -> u64 {
        self.area + u64::from(q) * 0x4000
    }
    pub fn avail(&self, q: u32) -> u64 {
        self.desc(q) + 0x1000
    }
    pub fn used(&self, q: u32) -> u64 {
        self.desc(q) + 0x2000
    }
    pub fn buf(&self, i: u64) -> u64 {
        self.area + 0x40000 + i * 0x1000
    }

    /// Resets the device and clears its rings.
    pub fn reset(&self, ops: &mut Vec<Op>) {
        ops.push(self.reg(STATUS, 0));
        ops.push(self.reg(INTERRUPT_ACK, 0xffff_ffff));
        for q in 0..self.queues {
            for w in 0..(0x3000 / 8) {
                if w % 64 == 0 || w < 16 {
                    ops.push(Op::Write64(self.desc(q) + w * 8, 0));
                }
            }
            ops.push(Op::Write64(self.avail(q), 0));
            ops.push(Op::Write64(self.used(q), 0));
        }
    }

    /// The features handshake: VIRTIO_F_VERSION_1 only.
    pub fn negotiate(&self, ops: &mut Vec<Op>) {
        ops.push(self.reg(STATUS, ACKNOWLEDGE));
        ops.push(self.reg(STATUS, ACKNOWLEDGE | DRIVER));
        ops.push(self.reg(DEVICE_FEATURES_SEL, 1));
        ops.push(Op::Read32(self.mmio + 0x10));
        ops.push(self.reg(DRIVER_FEATURES_SEL, 1));
        ops.push(self.reg(DRIVER_FEATURES, 1));
        ops.push(self.reg(DRIVER_FEATURES_SEL, 0));
        ops.push(self.reg(DRIVER_FEATURES, 0));
        ops.push(self.reg(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK));
    }

    /// Sets up queue `q` with `size` entries at `desc`/`avail`/`used` and marks it ready.
    pub fn queue_at(&self, ops: &mut Vec<Op>, q: u32, size: u32, desc: u64, avail: u64, used: u64) {
        ops.push(self.reg(QUEUE_SEL, q));
        ops.push(Op::Read32(self.mmio + 0x34));
        ops.push(self.reg(QUEUE_NUM, size));
        ops.push(self.reg(QUEUE_DESC_LOW, desc as u32));
        ops.push(self.reg(QUEUE_DESC_HIGH, (desc >> 32) as u32));
        ops.push(self.reg(QUEUE_AVAIL_LOW, avail as u32));
        ops.push(self.reg(QUEUE_AVAIL_HIGH, (avail >> 32) as u32));
        ops.push(self.reg(QUEUE_USED_LOW, used as u32));
        ops.push(self.reg(QUEUE_USED_HIGH, (used >> 32) as u32));
        ops.push(self.reg(QUEUE_READY, 1));
    }

    /// Reset, negotiation, every queue with `size` entries, DRIVER_OK.
    pub fn init(&self, ops: &mut Vec<Op>, size: u32) {
        self.reset(ops);
        self.negotiate(ops);
        for q in 0..self.queues {
            self.queue_at(ops, q, size, self.desc(q), self.avail(q), self.used(q));
        }
        ops.push(self.reg(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK));
    }

    /// Descriptor `i` of queue `q`.
    pub fn put_desc(&self, ops: &mut Vec<Op>, q: u32, i: u16, d: (u64, u32, u16, u16)) {
        let (addr, len, flags, next) = d;
        let at = self.desc(q) + u64::from(i) * 16;
        ops.push(Op::Write64(at, addr));
        let tail = u64::from(len) | (u64::from(flags) << 32) | (u64::from(next) << 48);
        ops.push(Op::Write64(at + 8, tail));
    }

    /// Puts `head` in avail slot `slot`, publishes index `idx` and notifies queue `q`.
    pub fn publish(&self, ops: &mut Vec<Op>, q: u32, slot: u16, head: u16, idx: u16) {
        ops.push(Op::Write16(self.avail(q) + 4 + 2 * u64::from(slot), head));
        ops.push(Op::Write16(self.avail(q) + 2, idx));
        ops.push(self.reg(QUEUE_NOTIFY, q));
    }

    pub fn notify(&self, q: u32) -> Op {
        self.reg(QUEUE_NOTIFY, q)
    }

    /// Every misprogramming of queue `q` (the device's request or transmit queue), each
    /// followed by a reset and a fresh set-up. `mmio_any` is an address in some device's
    /// MMIO window.
    pub fn abuse(&self, ops: &mut Vec<Op>, q: u32, mmio_any: u64) {
        let buf = self.buf(0);
        // A descriptor loop: 0 -> 1 -> 0.
        self.init(ops, 8);
        self.put_desc(ops, q, 0, (buf, 16, NEXT, 1));
        self.put_desc(ops, q, 1, (buf + 16, 16, NEXT, 0));
        self.publish(ops, q, 0, 0, 1);
        // A chain longer than the queue (size 4, five links, the last pointing past it).
        self.init(ops, 4);
        for i in 0..4u16 {
            self.put_desc(ops, q, i, (buf + u64::from(i) * 64, 64, NEXT, i + 1));
        }
        self.publish(ops, q, 0, 0, 1);
        // Buffers that wrap the address space, lie in MMIO, or are huge.
        for (addr, len) in [
            (0xffff_ffff_ffff_ff00, 0x200),
            (mmio_any, 0x100),
            (0xc000_0000, 0x1000),
            (buf, u32::MAX),
            (0x7fff_ffff_f000, 0x2000),
        ] {
            self.init(ops, 8);
            self.put_desc(ops, q, 0, (addr, len, NEXT, 1));
            self.put_desc(ops, q, 1, (buf, 512, NEXT | WRITE, 2));
            self.put_desc(ops, q, 2, (addr, len, WRITE, 0));
            self.publish(ops, q, 0, 0, 1);
        }
        // An avail index far ahead of what was made available, then behind it.
        self.init(ops, 8);
        self.put_desc(ops, q, 0, (buf, 64, 0, 0));
        self.publish(ops, q, 0, 0, 1000);
        self.publish(ops, q, 0, 0, 0xffff);
        // A head index beyond the queue.
        self.init(ops, 8);
        self.publish(ops, q, 0, 200, 1);
        // Rings moved while the device runs, and rings in MMIO or outside RAM.
        self.init(ops, 8);
        self.put_desc(ops, q, 0, (buf, 64, 0, 0));
        self.publish(ops, q, 0, 0, 1);
        self.queue_at(ops, q, 8, self.buf(8), self.buf(9), self.buf(10));
        ops.push(self.notify(q));
        self.queue_at(ops, q, 8, mmio_any, mmio_any, mmio_any);
        ops.push(self.notify(q));
        self.queue_at(
            ops,
            q,
            8,
            0xffff_ffff_ffff_f000,
            0x10_0000_0000,
            0xffff_ffff,
        );
        ops.push(self.notify(q));
        ops.push(self.reg(QUEUE_READY, 0));
        ops.push(self.notify(q));
        // A queue size that is no power of two, zero, or above the maximum.
        for size in [3, 0, 0x10000, 0xffff_ffff] {
            self.reset(ops);
            self.negotiate(ops);
            self.queue_at(ops, q, size, self.desc(q), self.avail(q), self.used(q));
            ops.push(self.reg(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK));
            ops.push(self.notify(q));
        }
        // Feature negotiation out of order: DRIVER_OK without FEATURES_OK, features
        // changed after FEATURES_OK, features never offered, a status of all ones.
        self.reset(ops);
        ops.push(self.reg(STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK));
        ops.push(self.notify(q));
        self.reset(ops);
        self.negotiate(ops);
        ops.push(self.reg(DRIVER_FEATURES_SEL, 0));
        ops.push(self.reg(DRIVER_FEATURES, 0xffff_ffff));
        ops.push(self.reg(DRIVER_FEATURES_SEL, 7));
        ops.push(self.reg(DRIVER_FEATURES, 0xffff_ffff));
        ops.push(self.reg(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK));
        ops.push(self.notify(q));
        ops.push(self.reg(STATUS, 0xffff_ffff));
        ops.push(self.notify(q));
        // A reset in the middle of a request, then a notify on the reset device.
        self.init(ops, 8);
        self.put_desc(ops, q, 0, (buf, 16, NEXT, 1));
        self.put_desc(ops, q, 1, (buf + 0x100, 512, NEXT | WRITE, 2));
        self.put_desc(ops, q, 2, (buf + 0x400, 1, WRITE, 0));
        self.publish(ops, q, 0, 0, 1);
        ops.push(self.reg(STATUS, 0));
        ops.push(self.notify(q));
        // A notification storm on a queue with nothing new, and for queues that do not
        // exist.
        self.init(ops, 8);
        ops.push(Op::Repeat32(self.mmio + QUEUE_NOTIFY, q, 20_000));
        ops.push(Op::Repeat32(self.mmio + QUEUE_NOTIFY, 77, 2_000));
        self.reset(ops);
    }
}

/// A block read of sector 0 through queue 0 (the device set up first); waits for it and
/// prints the first `show` bytes read.
pub fn block_read_and_print(ops: &mut Vec<Op>, blk: &Dev, show: u64) {
    blk.init(ops, 8);
    let hdr = blk.buf(0);
    let data = blk.buf(1);
    let status = blk.buf(2);
    ops.push(Op::Write64(hdr, 0)); // type IN, reserved
    ops.push(Op::Write64(hdr + 8, 0)); // sector 0
    ops.push(Op::Write8(status, 0xff));
    blk.put_desc(ops, 0, 0, (hdr, 16, NEXT, 1));
    blk.put_desc(ops, 0, 1, (data, 512, NEXT | WRITE, 2));
    blk.put_desc(ops, 0, 2, (status, 1, WRITE, 0));
    blk.publish(ops, 0, 0, 0, 1);
    ops.push(Op::WaitChange16(blk.used(0) + 2, 0));
    ops.push(Op::Print(data, show));
}

/// A small deterministic pseudo-random generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `n` random MMIO accesses (any width, into device windows and unclaimed parts of the
/// MMIO gap) and port accesses (reads anywhere; writes except to the ports that end or
/// reset the VM or carry the console).
pub fn random_accesses(ops: &mut Vec<Op>, rng: &mut Rng, n: usize, windows: u64, exit_port: u16) {
    for _ in 0..n {
        let r = rng.next();
        let v = rng.next();
        let mmio = match r % 4 {
            0 | 1 => 0xd000_0000 + (r >> 8) % (windows * 0x1000 + 0x2000),
            2 => 0xc000_0000 + ((r >> 8) % 0x0f00_0000),
            _ => 0xd100_0000 + ((r >> 8) % 0x0100_0000),
        } & !3;
        let port = (v >> 16) as u16;
        let port_writable =
            !matches!(port, 0x60..=0x64 | 0x3f8..=0x3ff | 0xcf8..=0xcff) && port != exit_port;
        ops.push(match (r >> 40) % 7 {
            0 => Op::Read32(mmio),
            1 => Op::Write32(mmio, v as u32),
            2 => Op::Write8(mmio + (v & 3), v as u8),
            3 => Op::Write16(mmio + (v & 2), v as u16),
            4 => Op::Write64(mmio & !7, v),
            5 => Op::In8(port),
            _ if port_writable => Op::Out8(port, v as u8),
            _ => Op::In8(port),
        });
    }
}
