//! The paravirtual exit port: the guest init writes its command's exit status here.
//!
//! Protocol (see [`crate::initcmd`]): a one-byte write of value `N` to port
//! [`crate::initcmd::EXIT_PORT`] ends the VM, and hvlite exits with status `N`. Reads
//! return 0. Wider writes use their low byte.

use std::sync::Arc;

use super::bus::BusDevice;
use crate::exit::{ExitLatch, ExitReason};

/// The exit port device.
pub struct ExitPort {
    latch: Arc<ExitLatch>,
}

impl ExitPort {
    /// An exit port that fires `latch`.
    pub fn new(latch: Arc<ExitLatch>) -> Self {
        Self { latch }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, Some(&status)) = (offset, data.first()) {
            self.latch.request(ExitReason::GuestStatus(status));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_reports_status() {
        let latch = Arc::new(ExitLatch::new());
        let mut port = ExitPort::new(latch.clone());
        let mut b = [0xffu8];
        port.read(0, &mut b);
        assert_eq!(b[0], 0);
        assert!(!latch.is_set());
        port.write(0, &[7]);
        assert_eq!(latch.wait(), ExitReason::GuestStatus(7));
    }
}
