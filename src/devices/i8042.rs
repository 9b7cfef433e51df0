//! The i8042 keyboard controller, reduced to what a guest needs: the CPU reset line.
//!
//! Linux booted with `reboot=k` resets the machine by writing 0xfe to port 0x64; the
//! vm-superio model turns that into a trigger, which here ends the VM.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;
use crate::vmm::exit::{ExitLatch, ExitReason};

/// First I/O port of the controller (data port; the command port is base + 4).
pub const I8042_BASE: u16 = 0x60;
/// Number of ports from [`I8042_BASE`] the controller answers.
pub const I8042_LEN: u16 = 5;

/// Fires the VM's exit latch with [`ExitReason::Reset`].
pub struct ResetTrigger(Arc<ExitLatch>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

/// The i8042 on the port-I/O bus.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// A controller whose reset command ends the VM through `latch`.
    pub fn new(latch: Arc<ExitLatch>) -> Self {
        Self(I8042Device::new(ResetTrigger(latch)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0, |o| self.0.read(o));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(o), Some(&v)) = (u8::try_from(offset), data.first()) {
            // The trigger is infallible.
            let _ = self.0.write(o, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm() {
        let latch = Arc::new(ExitLatch::new());
        let mut dev = I8042::new(latch.clone());
        dev.write(4, &[0x20]);
        dev.write(0, &[0xfe]);
        assert!(!latch.is_set());
        dev.write(4, &[0xfe]);
        assert_eq!(latch.wait(), ExitReason::Reset);
    }
}
