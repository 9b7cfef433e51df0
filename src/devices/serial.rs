//! The 8250/16550A serial console (vm-superio) on COM1, wired to the host's stdio.
//!
//! Output bytes go to a host writer (stdout). The UART raises its interrupt through an
//! eventfd registered with KVM as an irqfd, so the guest's 8250 driver runs interrupt
//! driven (a UART that never interrupts leaves user-space output stuck in the tty layer).
//! Input from the host is queued into the receive FIFO by [`spawn_stdin_forwarder`].

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// First I/O port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports of an 8250.
pub const COM1_LEN: u16 = 8;

/// Raises the serial IRQ by writing to an eventfd that KVM injects as an interrupt.
pub struct SerialIrq(EventFd);

impl Trigger for SerialIrq {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The writer the guest's console output goes to.
pub type ConsoleOut = Box<dyn Write + Send>;

/// A COM1 UART on the port-I/O bus.
pub struct SerialConsole {
    uart: Serial<SerialIrq, NoEvents, ConsoleOut>,
}

impl SerialConsole {
    /// A UART that writes guest output to `out` and signals its interrupt on `irq`.
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        Self {
            uart: Serial::new(SerialIrq(irq), out),
        }
    }

    /// A UART with the registers and FIFO of a snapshot; a FIFO longer than the UART's
    /// is refused.
    pub fn from_state(
        irq: EventFd,
        out: ConsoleOut,
        state: &crate::snapshot::state::SerialState,
    ) -> Result<Self, String> {
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor[0],
            baud_divisor_high: state.baud_divisor[1],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = Serial::from_state(&s, SerialIrq(irq), NoEvents, out)
            .map_err(|e| format!("the serial state is invalid: {e:?}"))?;
        Ok(Self { uart })
    }

    /// The UART's registers and FIFO, for a snapshot.
    pub fn save_state(&self) -> crate::snapshot::state::SerialState {
        let s = self.uart.state();
        crate::snapshot::state::SerialState {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Queues host input for the guest; returns how many bytes fitted into the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(SerialError::FullFifo) => 0,
            Err(e) => {
                log::warn!("serial input dropped: {e}");
                input.len()
            }
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0, |o| self.uart.read(o));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.uart.write(offset, value) {
            // A closed stdout must not stop the guest; say so once per failure kind.
            log::debug!("serial output: {e}");
        }
    }
}

/// Forwards everything read from `input` to the guest's UART, waiting while its FIFO is
/// full. Ends at end of input or on a read error.
pub fn spawn_stdin_forwarder<R: Read + Send + 'static>(
    mut input: R,
    console: Arc<Mutex<SerialConsole>>,
) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Host);
            let mut buf = [0u8; 64];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let taken = console
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .enqueue_input(pending);
                    pending = &pending[taken..];
                    if taken == 0 {
                        thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_writer_and_raises_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let mut uart = SerialConsole::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        uart.write(1, &[0x02]); // IER: THR empty interrupt enabled
        for b in b"hi\n" {
            uart.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        assert!(irq.read().unwrap() >= 1);
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let uart = Arc::new(Mutex::new(SerialConsole::new(irq, Box::new(io::sink()))));
        let t = spawn_stdin_forwarder(&b"ok"[..], uart.clone()).unwrap();
        t.join().unwrap();
        let mut u = uart.lock().unwrap();
        let mut lsr = [0u8];
        u.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        u.read(0, &mut b);
        assert_eq!(b[0], b'o');
        u.read(0, &mut b);
        assert_eq!(b[0], b'k');
    }
}
