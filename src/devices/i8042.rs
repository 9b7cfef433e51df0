//! The i8042 PS/2 keyboard controller, reduced to what a microVM needs:
//! - the CPU reset line: Linux booted with `reboot=k` resets the machine by writing 0xfe
//!   to port 0x64, which ends the VM;
//! - a keyboard that can press Ctrl-Alt-Del ([`I8042::press_ctrl_alt_del`], the API's
//!   SendCtrlAltDel): the scancodes go to the guest through the output buffer and IRQ 1,
//!   and the guest's atkbd driver hands them to its keyboard handler, which signals init.
//!
//! The controller answers the commands Linux's i8042 driver sends when it probes and
//! resets the controller (self-test, command byte, interface test, enable/disable, output
//! port); booted with `i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd` it sends nothing
//! else. There is no mouse (AUX) port.

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::exit::{ExitLatch, ExitReason};

/// First I/O port of the controller (data port; the status/command port is base + 4).
pub const I8042_BASE: u16 = 0x60;
/// Number of ports from [`I8042_BASE`] the controller answers.
pub const I8042_LEN: u16 = 5;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

/// Status register bits.
const ST_OUTPUT_FULL: u8 = 0x01;
const ST_SYSTEM: u8 = 0x04;
const ST_LAST_WAS_COMMAND: u8 = 0x08;
const ST_UNLOCKED: u8 = 0x10;

/// Command byte (CTR) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;

/// Controller commands (written to the command port).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_FIRST: u8 = 0xf0;

/// Answers.
const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;

/// Keyboard commands (written to the data port).
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_RESET: u8 = 0xff;

/// Output port bit 0: the CPU reset line (active low).
const OUTPUT_PORT_RESET: u8 = 0x01;
/// The output port at power-on: reset line high, A20 enabled.
const OUTPUT_PORT_INIT: u8 = 0x03;

/// Most bytes waiting for the guest; further key presses are dropped.
const OUTPUT_CAPACITY: usize = 64;

/// Ctrl-Alt-Del as scancode set 2 (untranslated) and set 1 (translated) sequences:
/// press Left Ctrl, Left Alt, Delete; release them in reverse order.
const CAD_SET2: &[u8] = &[
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
const CAD_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// Errors from the keyboard side.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyboardError {
    #[error("the guest has not enabled its keyboard")]
    Disabled,
    #[error("the keyboard buffer is full: the guest is not reading its keyboard")]
    BufferFull,
    #[error("cannot raise the keyboard interrupt: {0}")]
    Irq(String),
}

/// The i8042 on the port-I/O bus.
pub struct I8042 {
    latch: Arc<ExitLatch>,
    /// IRQ 1, raised when keyboard data waits for the guest.
    irq: Option<EventFd>,
    ctr: u8,
    output_port: u8,
    /// A command waiting for its parameter on the data port.
    pending: Option<u8>,
    /// A keyboard command waiting for its parameter.
    kbd_pending: Option<u8>,
    last_was_command: bool,
    /// Bytes for the guest, and whether each came from the keyboard (raises IRQ 1).
    output: VecDeque<(u8, bool)>,
    /// The last byte read, which the data port keeps returning when empty.
    last_read: u8,
}

impl I8042 {
    /// A controller whose reset line ends the VM through `latch` and whose keyboard
    /// raises `irq` (none: key presses are queued but signal nothing).
    pub fn new(latch: Arc<ExitLatch>, irq: Option<EventFd>) -> Self {
        Self {
            latch,
            irq,
            ctr: CTR_KBD_INT | CTR_SYSTEM | CTR_TRANSLATE | CTR_AUX_DISABLED,
            output_port: OUTPUT_PORT_INIT,
            pending: None,
            kbd_pending: None,
            last_was_command: false,
            output: VecDeque::new(),
            last_read: 0,
        }
    }

    /// The controller's state, for a snapshot.
    pub fn save_state(&self) -> crate::snapshot::state::I8042State {
        crate::snapshot::state::I8042State {
            ctr: self.ctr,
            output_port: self.output_port,
            pending: self.pending,
            kbd_pending: self.kbd_pending,
            last_was_command: self.last_was_command,
            output: self.output.iter().copied().collect(),
            last_read: self.last_read,
        }
    }

    /// Takes a snapshot's state; an output queue longer than the controller's is cut.
    pub fn restore_state(&mut self, s: &crate::snapshot::state::I8042State) {
        self.ctr = s.ctr;
        self.output_port = s.output_port;
        self.pending = s.pending;
        self.kbd_pending = s.kbd_pending;
        self.last_was_command = s.last_was_command;
        self.output = s.output.iter().copied().take(OUTPUT_CAPACITY).collect();
        self.last_read = s.last_read;
    }

    /// Presses and releases Ctrl-Alt-Del on the keyboard, in the scancode set the guest
    /// configured (set 1 when it has the controller translate, set 2 otherwise).
    pub fn press_ctrl_alt_del(&mut self) -> Result<(), KeyboardError> {
        if self.ctr & CTR_KBD_DISABLED != 0 {
            return Err(KeyboardError::Disabled);
        }
        let codes = if self.ctr & CTR_TRANSLATE != 0 {
            CAD_SET1
        } else {
            CAD_SET2
        };
        if self.output.len() + codes.len() > OUTPUT_CAPACITY {
            return Err(KeyboardError::BufferFull);
        }
        let was_empty = self.output.is_empty();
        self.output.extend(codes.iter().map(|&c| (c, true)));
        if was_empty {
            self.raise_irq()
                .map_err(|e| KeyboardError::Irq(e.to_string()))?;
        }
        Ok(())
    }

    fn status(&self) -> u8 {
        let mut st = ST_UNLOCKED;
        if !self.output.is_empty() {
            st |= ST_OUTPUT_FULL;
        }
        if self.ctr & CTR_SYSTEM != 0 {
            st |= ST_SYSTEM;
        }
        if self.last_was_command {
            st |= ST_LAST_WAS_COMMAND;
        }
        st
    }

    /// Raises IRQ 1 if the front byte came from the keyboard and the guest wants it.
    fn raise_irq(&self) -> std::io::Result<()> {
        let from_kbd = self.output.front().is_some_and(|&(_, kbd)| kbd);
        match &self.irq {
            Some(irq) if from_kbd && self.ctr & CTR_KBD_INT != 0 => irq.write(1),
            _ => Ok(()),
        }
    }

    fn push_controller(&mut self, byte: u8) {
        self.output.clear();
        self.output.push_back((byte, false));
    }

    fn push_keyboard(&mut self, bytes: &[u8]) {
        let was_empty = self.output.is_empty();
        for &b in bytes {
            if self.output.len() < OUTPUT_CAPACITY {
                self.output.push_back((b, true));
            }
        }
        if was_empty && let Err(e) = self.raise_irq() {
            log::warn!("i8042: cannot raise IRQ 1: {e}");
        }
    }

    fn read_data(&mut self) -> u8 {
        if let Some((byte, _)) = self.output.pop_front() {
            self.last_read = byte;
            if let Err(e) = self.raise_irq() {
                log::warn!("i8042: cannot raise IRQ 1: {e}");
            }
        }
        self.last_read
    }

    fn write_output_port(&mut self, value: u8) {
        self.output_port = value;
        if value & OUTPUT_PORT_RESET == 0 {
            self.reset_cpu();
        }
    }

    fn reset_cpu(&self) {
        self.latch.request(ExitReason::Reset);
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        match cmd {
            CMD_READ_CTR => self.push_controller(self.ctr),
            CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLED,
            // No AUX port: the clock line is stuck low (answer 0x01).
            CMD_AUX_TEST => self.push_controller(0x01),
            CMD_SELF_TEST => {
                self.ctr |= CTR_SYSTEM;
                self.push_controller(SELF_TEST_OK);
            }
            CMD_KBD_TEST => self.push_controller(INTERFACE_OK),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLED,
            CMD_READ_OUTPUT_PORT => self.push_controller(self.output_port),
            // Pulse the output lines whose bit is 0 in the low nibble: bit 0 is reset.
            c if c >= CMD_PULSE_FIRST => {
                if c & OUTPUT_PORT_RESET == 0 {
                    self.reset_cpu();
                }
            }
            other => log::debug!("i8042: ignored command {other:#04x}"),
        }
    }

    fn write_data(&mut self, value: u8) {
        self.last_was_command = false;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(CMD_WRITE_OUTPUT_PORT) => self.write_output_port(value),
            Some(CMD_WRITE_KBD_BUFFER) => self.push_keyboard(&[value]),
            // AUX: nothing is connected; the byte is dropped.
            Some(_) => {}
            None => self.keyboard_command(value),
        }
    }

    /// A byte for the keyboard itself: answered as a PS/2 keyboard would.
    fn keyboard_command(&mut self, value: u8) {
        if self.kbd_pending.take().is_some() {
            // The parameter of LEDs, scancode set or typematic rate.
            self.push_keyboard(&[KBD_ACK]);
            return;
        }
        match value {
            KBD_RESET => self.push_keyboard(&[KBD_ACK, KBD_BAT_OK]),
            KBD_IDENTIFY => self.push_keyboard(&[KBD_ACK, 0xab, 0x83]),
            KBD_ECHO => self.push_keyboard(&[KBD_ECHO]),
            KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_TYPEMATIC => {
                self.kbd_pending = Some(value);
                self.push_keyboard(&[KBD_ACK]);
            }
            _ => self.push_keyboard(&[KBD_ACK]),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => self.read_data(),
            COMMAND => self.status(),
            _ => 0,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            DATA => self.write_data(value),
            COMMAND => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042, Arc<ExitLatch>, EventFd) {
        let latch = Arc::new(ExitLatch::new());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(latch.clone(), Some(irq.try_clone().unwrap()));
        (dev, latch, irq)
    }

    fn inb(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_ends_the_vm() {
        let (mut dev, latch, _) = device();
        dev.write(COMMAND, &[CMD_READ_CTR]);
        dev.write(DATA, &[0xfe]);
        assert!(!latch.is_set());
        dev.write(COMMAND, &[0xfe]);
        assert_eq!(latch.wait(), ExitReason::Reset);
    }

    #[test]
    fn output_port_reset_ends_the_vm() {
        let (mut dev, latch, _) = device();
        dev.write(COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA, &[0x02]);
        assert_eq!(latch.wait(), ExitReason::Reset);
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut dev, latch, irq) = device();
        assert_eq!(inb(&mut dev, COMMAND) & ST_OUTPUT_FULL, 0);
        dev.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(inb(&mut dev, COMMAND) & ST_OUTPUT_FULL, ST_OUTPUT_FULL);
        assert_eq!(inb(&mut dev, DATA), SELF_TEST_OK);
        dev.write(COMMAND, &[CMD_READ_CTR]);
        let ctr = inb(&mut dev, DATA);
        assert_eq!(ctr & CTR_TRANSLATE, CTR_TRANSLATE);
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[ctr & !CTR_KBD_INT]);
        dev.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(inb(&mut dev, DATA), ctr & !CTR_KBD_INT);
        dev.write(COMMAND, &[CMD_KBD_TEST]);
        assert_eq!(inb(&mut dev, DATA), INTERFACE_OK);
        // Controller answers raise no interrupt; keyboard answers do.
        assert!(irq.read().is_err());
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[ctr | CTR_KBD_INT]);
        dev.write(DATA, &[KBD_IDENTIFY]);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(
            [
                inb(&mut dev, DATA),
                inb(&mut dev, DATA),
                inb(&mut dev, DATA)
            ],
            [KBD_ACK, 0xab, 0x83]
        );
        assert_eq!(inb(&mut dev, COMMAND) & ST_OUTPUT_FULL, 0);
        assert!(!latch.is_set());
    }

    fn drain(dev: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while inb(dev, COMMAND) & ST_OUTPUT_FULL != 0 {
            out.push(inb(dev, DATA));
        }
        out
    }

    #[test]
    fn ctrl_alt_del_in_the_configured_set() {
        let (mut dev, _, irq) = device();
        dev.press_ctrl_alt_del().unwrap();
        assert!(irq.read().is_ok());
        assert_eq!(drain(&mut dev), CAD_SET1);
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[CTR_KBD_INT | CTR_SYSTEM]);
        dev.press_ctrl_alt_del().unwrap();
        assert_eq!(drain(&mut dev), CAD_SET2);
        dev.write(COMMAND, &[CMD_KBD_DISABLE]);
        assert_eq!(dev.press_ctrl_alt_del(), Err(KeyboardError::Disabled));
        dev.write(COMMAND, &[CMD_KBD_ENABLE]);
        for _ in 0..OUTPUT_CAPACITY / CAD_SET2.len() {
            dev.press_ctrl_alt_del().unwrap();
        }
        assert_eq!(dev.press_ctrl_alt_del(), Err(KeyboardError::BufferFull));
    }
}
