//! Help for KVM's instruction emulator on PVM hosts.
//!
//! On a PVM host the guest kernel's code is run by KVM's instruction emulator, which
//! gives up (KVM_EXIT_INTERNAL_ERROR, suberror KVM_INTERNAL_ERROR_EMULATION) on a few
//! instructions that Linux uses. hvlite completes the ones it can:
//! - `int3` (`cc`): advance RIP past it and inject #BP, as the CPU would (#BP is a trap).
//! - `clac` (`0f 01 ca`) / `stac` (`0f 01 cb`): clear / set RFLAGS.AC, advance RIP by 3.
//! - `fwait` (`9b`): advance RIP by 1. Linux runs it in `fpu__drop()` when a task exits,
//!   only to discard x87 exceptions left pending by user space, and the kernel's x87
//!   control word masks them all; so it has no effect to reproduce.
//!
//! The others seen there (popcnt, xrstor, cmpxchg16b) are kept away from the guest with
//! kernel command-line options (see [`crate::boot::cmdline`]); any other failure ends the
//! run with the instruction bytes and the guest RIP. On hardware KVM none of this applies.

use std::fmt::Write as _;

use kvm_bindings::{kvm_regs, kvm_vcpu_events};

/// RFLAGS.AC, the alignment-check / SMAP override flag.
pub const RFLAGS_AC: u64 = 1 << 18;
/// The #BP (breakpoint) exception vector.
pub const BP_VECTOR: u8 = 3;
/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// An instruction the VMM completes on the emulator's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixup {
    /// `int3`: trap to the guest's #BP handler.
    Int3,
    /// `clac`: clear RFLAGS.AC.
    Clac,
    /// `stac`: set RFLAGS.AC.
    Stac,
    /// `fwait`: wait for pending x87 exceptions; none are unmasked in the guest kernel.
    Fwait,
}

impl Fixup {
    /// Recognises the instruction at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Option<Fixup> {
        match bytes {
            [0xcc, ..] => Some(Fixup::Int3),
            [0x0f, 0x01, 0xca, ..] => Some(Fixup::Clac),
            [0x0f, 0x01, 0xcb, ..] => Some(Fixup::Stac),
            [0x9b, ..] => Some(Fixup::Fwait),
            _ => None,
        }
    }

    /// Length of the instruction in bytes.
    pub fn insn_len(self) -> u64 {
        match self {
            Fixup::Int3 | Fixup::Fwait => 1,
            Fixup::Clac | Fixup::Stac => 3,
        }
    }

    /// Applies the instruction's effect to the registers (RIP past it, flags). Returns the
    /// exception to inject afterwards, if any.
    pub fn apply(self, regs: &mut kvm_regs) -> Option<u8> {
        regs.rip = regs.rip.wrapping_add(self.insn_len());
        match self {
            Fixup::Int3 => return Some(BP_VECTOR),
            Fixup::Clac => regs.rflags &= !RFLAGS_AC,
            Fixup::Stac => regs.rflags |= RFLAGS_AC,
            Fixup::Fwait => {}
        }
        None
    }
}

/// The fixup for an emulation failure on `host`: only PVM hosts get help; on hardware
/// KVM an emulation failure is always an error.
pub fn fixup_for(host: crate::host::HostKind, bytes: &[u8]) -> Option<Fixup> {
    if host.is_pvm() {
        Fixup::decode(bytes)
    } else {
        None
    }
}

/// The vCPU events that inject exception `vector` (no error code) into the guest.
pub fn exception_event(mut events: kvm_vcpu_events, vector: u8) -> kvm_vcpu_events {
    events.exception.injected = 1;
    events.exception.nr = vector;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    events
}

/// Hex dump of instruction bytes for error messages: `f3 48 0f b8`.
pub fn hex_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_instructions_seen_on_pvm() {
        assert_eq!(Fixup::decode(&[0xcc, 0x90]), Some(Fixup::Int3));
        assert_eq!(Fixup::decode(&[0x0f, 0x01, 0xca]), Some(Fixup::Clac));
        assert_eq!(Fixup::decode(&[0x0f, 0x01, 0xcb, 0x00]), Some(Fixup::Stac));
        assert_eq!(Fixup::decode(&[0x9b, 0x65, 0x48]), Some(Fixup::Fwait));
        // popcnt, xrstor, lock cmpxchg16b: not completed by the VMM.
        assert_eq!(Fixup::decode(&[0xf3, 0x48, 0x0f, 0xb8]), None);
        assert_eq!(Fixup::decode(&[0x48, 0x0f, 0xae, 0x2f]), None);
        assert_eq!(Fixup::decode(&[0xf0, 0x48, 0x0f, 0xc7]), None);
        assert_eq!(Fixup::decode(&[0x0f, 0x01]), None);
        assert_eq!(Fixup::decode(&[]), None);
    }

    #[test]
    fn applies_effects() {
        let mut regs = kvm_regs {
            rip: 0x1000,
            rflags: 0x2 | RFLAGS_AC,
            ..Default::default()
        };
        assert_eq!(Fixup::Clac.apply(&mut regs), None);
        assert_eq!((regs.rip, regs.rflags), (0x1003, 0x2));
        assert_eq!(Fixup::Stac.apply(&mut regs), None);
        assert_eq!((regs.rip, regs.rflags), (0x1006, 0x2 | RFLAGS_AC));
        assert_eq!(Fixup::Int3.apply(&mut regs), Some(BP_VECTOR));
        assert_eq!(regs.rip, 0x1007);
        assert_eq!(Fixup::Fwait.apply(&mut regs), None);
        assert_eq!((regs.rip, regs.rflags), (0x1008, 0x2 | RFLAGS_AC));
        let ev = exception_event(kvm_vcpu_events::default(), BP_VECTOR);
        assert_eq!((ev.exception.injected, ev.exception.nr), (1, 3));
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(hex_bytes(&[0xf3, 0x48, 0x0f, 0xb8]), "f3 48 0f b8");
        assert_eq!(hex_bytes(&[]), "");
    }
}
