//! Fuzzes the virtio-mmio transport's register interface as a hostile driver sees it:
//! any sequence of reads and writes of any width at any offset (feature selection and
//! negotiation in any order, queue geometry, status changes, resets mid-activation, config
//! space). The device behind it serves its first queue on activation with whatever
//! geometry the driver left, against guest memory from the input. It must never panic.
//!
//! Input: byte 0 the number of operations N; then N operations of 8 bytes (byte 0 bit 0
//! write, bits 1-2 width 1/2/4/8, bytes 1-2 offset LE mod 0x1100, bytes 4-7 value); the
//! rest is guest memory from address 0.

#![no_main]

#[path = "../common/guest.rs"]
mod guest;

use std::sync::Arc;

use hvlite::devices::bus::BusDevice;
use hvlite::devices::virtio::mmio::MmioTransport;
use hvlite::devices::virtio::{ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const MAX_SIZES: [u16; 2] = [256, 16];

struct Device {
    config: [u8; 16],
}

impl VirtioDevice for Device {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &MAX_SIZES
    }
    fn avail_features(&self) -> u64 {
        // VERSION_1, EVENT_IDX and two device bits.
        (1 << 32) | (1 << 29) | 0b101
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|x| self.config.get(x))
                .map_or(0, |v| *v);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let slot = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|x| self.config.get_mut(x));
            if let Some(slot) = slot {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let Some(mut queue) = ctx.queues.into_iter().next() else {
            return Err(ActivateError::Device("no queue".into()));
        };
        // Walk (and complete) whatever the driver made available; a bounded number so a
        // descriptor loop cannot hold the fuzzer.
        for _ in 0..512 {
            let Some(chain) = queue.pop_descriptor_chain(&ctx.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = chain.take(64).fold(0u32, |n, d| n.wrapping_add(d.len()));
            if queue.add_used(&ctx.mem, head, len).is_err() {
                break;
            }
        }
        let _ = ctx.interrupt.signal_used_queue();
        Ok(())
    }
    fn reset(&mut self) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let ops_len = (usize::from(count) * 8).min(rest.len());
    let (ops, image) = rest.split_at(ops_len);
    let mem = guest::guest_memory(image);
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq));
    let kicks = (0..MAX_SIZES.len())
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let Ok(mut t) = MmioTransport::new(Box::new(Device { config: [0; 16] }), mem, interrupt, kicks)
    else {
        return;
    };
    for op in ops.chunks_exact(8) {
        let write = op[0] & 1 != 0;
        let width = 1usize << ((op[0] >> 1) & 3);
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) % 0x1100;
        let value = u64::from(u32::from_le_bytes([op[4], op[5], op[6], op[7]]));
        let bytes = (value | (value << 32)).to_le_bytes();
        if write {
            t.write(offset, &bytes[..width]);
        } else {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
        }
    }
});
