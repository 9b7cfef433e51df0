//! Maps one KVM exit to what the vCPU loop does next. No device knowledge lives here: port
//! and MMIO accesses go to the buses.

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use crate::devices::bus::Buses;
use crate::exit::ExitReason;

/// What the vCPU loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again.
    Continue,
    /// End the VM for this reason.
    Stop(ExitReason),
    /// KVM could not go on by itself (KVM_EXIT_INTERNAL_ERROR): the vCPU looks at the
    /// internal-error details, which may be an emulation failure it can help with.
    InternalError,
    /// The vCPU shut down (KVM_EXIT_SHUTDOWN, a triple fault): the vCPU reports its RIP.
    TripleFault,
}

/// Value read from a port or MMIO address no device answers (a floating bus).
const UNCLAIMED_READ: u8 = 0xff;

/// Handles one exit.
pub fn dispatch(exit: VcpuExit<'_>, buses: &Buses) -> Action {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.pio.read(u64::from(port), data) {
                data.fill(UNCLAIMED_READ);
            }
            Action::Continue
        }
        VcpuExit::IoOut(port, data) => {
            buses.pio.write(u64::from(port), data);
            Action::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                data.fill(UNCLAIMED_READ);
            }
            Action::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            buses.mmio.write(addr, data);
            Action::Continue
        }
        // With the in-kernel irqchip KVM handles HLT itself; should one reach us, resume.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => Action::Continue,
        VcpuExit::Shutdown => Action::TripleFault,
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_RESET => Action::Stop(ExitReason::Reset),
            KVM_SYSTEM_EVENT_SHUTDOWN => Action::Stop(ExitReason::Shutdown),
            KVM_SYSTEM_EVENT_CRASH => Action::Stop(ExitReason::Fatal("the guest crashed".into())),
            other => Action::Stop(ExitReason::Fatal(format!(
                "unexpected KVM system event {other}"
            ))),
        },
        VcpuExit::InternalError => Action::InternalError,
        VcpuExit::FailEntry(reason, cpu) => Action::Stop(ExitReason::Fatal(format!(
            "KVM could not enter the guest (hardware reason {reason:#x}, host cpu {cpu})"
        ))),
        other => Action::Stop(ExitReason::Fatal(format!("unexpected vCPU exit {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    struct Echo(Vec<u8>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    fn buses() -> (Buses, Arc<Mutex<Echo>>) {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut b = Buses::default();
        b.pio.insert(dev.clone(), 0x3f8, 8).unwrap();
        b.mmio.insert(dev.clone(), 0xd000_0000, 0x1000).unwrap();
        (b, dev)
    }

    #[test]
    fn port_and_mmio_accesses_reach_the_bus() {
        let (b, dev) = buses();
        assert_eq!(dispatch(VcpuExit::IoOut(0x3f8, b"x"), &b), Action::Continue);
        let mut d = [0u8; 1];
        assert_eq!(
            dispatch(VcpuExit::IoIn(0x3fa, &mut d), &b),
            Action::Continue
        );
        assert_eq!(d, [3]);
        let mut w = [0u8; 4];
        dispatch(VcpuExit::MmioRead(0xd000_0010, &mut w), &b);
        assert_eq!(w, [0x11; 4]);
        dispatch(VcpuExit::MmioWrite(0xd000_0000, b"yz"), &b);
        assert_eq!(dev.lock().unwrap().0, b"xyz");
    }

    #[test]
    fn unclaimed_reads_float_high() {
        let (b, _) = buses();
        let mut d = [0u8; 2];
        dispatch(VcpuExit::IoIn(0x80, &mut d), &b);
        assert_eq!(d, [0xff, 0xff]);
        let mut m = [0u8; 4];
        dispatch(VcpuExit::MmioRead(0x1234_0000, &mut m), &b);
        assert_eq!(m, [0xff; 4]);
    }

    #[test]
    fn ends_of_the_vm() {
        let (b, _) = buses();
        assert_eq!(dispatch(VcpuExit::Shutdown, &b), Action::TripleFault);
        assert_eq!(
            dispatch(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]), &b),
            Action::Stop(ExitReason::Reset)
        );
        assert_eq!(
            dispatch(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]), &b),
            Action::Stop(ExitReason::Shutdown)
        );
        assert!(matches!(
            dispatch(VcpuExit::FailEntry(7, 1), &b),
            Action::Stop(ExitReason::Fatal(_))
        ));
        assert_eq!(dispatch(VcpuExit::InternalError, &b), Action::InternalError);
        assert_eq!(dispatch(VcpuExit::Hlt, &b), Action::Continue);
    }
}
