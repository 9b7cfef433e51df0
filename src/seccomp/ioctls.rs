//! The ioctl request numbers hvlite's threads use, by file kind (x86_64 values from
//! <linux/kvm.h>, <linux/if_tun.h> and <asm-generic/ioctls.h>).

use kvm_bindings as kb;
use std::mem::size_of;

/// `_IOR(KVMIO, nr, size)`.
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// `_IOWR(KVMIO, nr, size)`.
const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

// KVM vCPU fd.
pub const KVM_RUN: u64 = 0xae80;
pub const KVM_GET_REGS: u64 = 0x8090_ae81;
pub const KVM_SET_REGS: u64 = 0x4090_ae82;
pub const KVM_GET_SREGS: u64 = 0x8138_ae83;
pub const KVM_TRANSLATE: u64 = 0xc018_ae85;
pub const KVM_GET_VCPU_EVENTS: u64 = 0x8040_ae9f;
pub const KVM_SET_VCPU_EVENTS: u64 = 0x4040_aea0;

// KVM vCPU fd, read when a paused VM is snapshotted (src/vcpu/persist.rs).
pub const KVM_GET_MSRS: u64 = iowr(0x88, size_of::<kb::kvm_msrs>());
pub const KVM_GET_LAPIC: u64 = ior(0x8e, size_of::<kb::kvm_lapic_state>());
pub const KVM_GET_MP_STATE: u64 = ior(0x98, size_of::<kb::kvm_mp_state>());
pub const KVM_GET_DEBUGREGS: u64 = ior(0xa1, size_of::<kb::kvm_debugregs>());
pub const KVM_GET_TSC_KHZ: u64 = 0xaea3;
pub const KVM_GET_XSAVE: u64 = ior(0xa4, size_of::<kb::kvm_xsave>());
pub const KVM_GET_XCRS: u64 = ior(0xa6, size_of::<kb::kvm_xcrs>());

// KVM VM fd, read when a paused VM is snapshotted (src/vmm/persist.rs).
pub const KVM_GET_IRQCHIP: u64 = iowr(0x62, size_of::<kb::kvm_irqchip>());
pub const KVM_GET_CLOCK: u64 = ior(0x7c, size_of::<kb::kvm_clock_data>());
pub const KVM_GET_PIT2: u64 = ior(0x9f, size_of::<kb::kvm_pit_state2>());

// KVM VM fd.
pub const KVM_IRQ_LINE: u64 = 0x4008_ae61;
pub const KVM_IRQFD: u64 = 0x4020_ae76;
pub const KVM_IOEVENTFD: u64 = 0x4040_ae79;

// Files and sockets.
pub const FIONBIO: u64 = 0x5421;
pub const FIOCLEX: u64 = 0x5451;
pub const TCGETS: u64 = 0x5401;
/// Reads a terminal's window size (`<asm-generic/ioctls.h>`).
pub const TIOCGWINSZ: u64 = 0x5413;

// Network interfaces (the TAP's MTU, read at activation).
pub const SIOCGIFMTU: u64 = 0x8921;

// TAP.
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
pub const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;

/// The vCPU thread: its own vCPU fd; the VM fd and TAP offloads from device activation.
pub const VCPU: &[u64] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_SET_REGS,
    KVM_GET_SREGS,
    KVM_TRANSLATE,
    KVM_GET_VCPU_EVENTS,
    KVM_SET_VCPU_EVENTS,
    KVM_GET_MSRS,
    KVM_GET_LAPIC,
    KVM_GET_MP_STATE,
    KVM_GET_DEBUGREGS,
    KVM_GET_TSC_KHZ,
    KVM_GET_XSAVE,
    KVM_GET_XCRS,
    KVM_IRQ_LINE,
    KVM_IRQFD,
    KVM_IOEVENTFD,
    TUNSETOFFLOAD,
    TUNSETVNETHDRSZ,
    SIOCGIFMTU,
    FIONBIO,
    FIOCLEX,
];

/// The device event loop: non-blocking host sockets only.
pub const DEVICE_LOOP: &[u64] = &[FIONBIO, FIOCLEX, TUNSETOFFLOAD];

/// API and host threads: socket modes, terminal probes of std's I/O and the window size of
/// an OCI container's host pty (the console relay).
pub const HOST: &[u64] = &[FIONBIO, FIOCLEX, TCGETS, TIOCGWINSZ];

/// The controller: also raises the keyboard line for Ctrl-Alt-Del and reads the VM's
/// interrupt controllers, PIT and clock for a snapshot.
pub const API_CONTROL: &[u64] = &[
    FIONBIO,
    FIOCLEX,
    TCGETS,
    KVM_IRQ_LINE,
    KVM_GET_IRQCHIP,
    KVM_GET_CLOCK,
    KVM_GET_PIT2,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernel_encoding() {
        // _IOR('\xae', 0x81, struct kvm_regs) etc., computed from the structure sizes.
        let ior = |nr: u64, size: usize| (2u64 << 30) | ((size as u64) << 16) | (0xae << 8) | nr;
        let iow = |nr: u64, size: usize| (1u64 << 30) | ((size as u64) << 16) | (0xae << 8) | nr;
        let iowr = |nr: u64, size: usize| (3u64 << 30) | ((size as u64) << 16) | (0xae << 8) | nr;
        assert_eq!(KVM_GET_REGS, ior(0x81, size_of::<kb::kvm_regs>()));
        assert_eq!(KVM_SET_REGS, iow(0x82, size_of::<kb::kvm_regs>()));
        assert_eq!(KVM_GET_SREGS, ior(0x83, size_of::<kb::kvm_sregs>()));
        assert_eq!(KVM_TRANSLATE, iowr(0x85, size_of::<kb::kvm_translation>()));
        assert_eq!(
            KVM_GET_VCPU_EVENTS,
            ior(0x9f, size_of::<kb::kvm_vcpu_events>())
        );
        assert_eq!(
            KVM_SET_VCPU_EVENTS,
            iow(0xa0, size_of::<kb::kvm_vcpu_events>())
        );
        assert_eq!(KVM_IRQ_LINE, iow(0x61, size_of::<kb::kvm_irq_level>()));
        assert_eq!(KVM_IRQFD, iow(0x76, size_of::<kb::kvm_irqfd>()));
        assert_eq!(KVM_IOEVENTFD, iow(0x79, size_of::<kb::kvm_ioeventfd>()));
        assert_eq!(TUNSETOFFLOAD, libc::TUNSETOFFLOAD);
        assert_eq!(TUNSETVNETHDRSZ, libc::TUNSETVNETHDRSZ);
        assert_eq!(FIONBIO, libc::FIONBIO);
        assert_eq!(FIOCLEX, libc::FIOCLEX);
        assert_eq!(TCGETS, libc::TCGETS);
        assert_eq!(SIOCGIFMTU, libc::SIOCGIFMTU);
    }

    #[test]
    fn snapshot_ioctls_have_the_kernel_values() {
        // The values of <linux/kvm.h> on x86_64, as strace prints them.
        assert_eq!(KVM_GET_MSRS, 0xc008_ae88);
        assert_eq!(KVM_GET_LAPIC, 0x8400_ae8e);
        assert_eq!(KVM_GET_MP_STATE, 0x8004_ae98);
        assert_eq!(KVM_GET_DEBUGREGS, 0x8080_aea1);
        assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
        assert_eq!(KVM_GET_XCRS, 0x8188_aea6);
        assert_eq!(KVM_GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(KVM_GET_CLOCK, 0x8030_ae7c);
        assert_eq!(KVM_GET_PIT2, 0x8070_ae9f);
    }
}
