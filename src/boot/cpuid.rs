//! Per-vCPU CPUID adjustments on top of KVM_GET_SUPPORTED_CPUID.
//!
//! A pure function over the entries, so it is unit-testable without KVM. Topology is flat:
//! one package with `num_cpus` cores of one thread each; vCPU `i` has (x2)APIC id `i`.
//!
//! On a PVM host a KVM hypercall from the emulated
//! guest kernel never returns, while masks on the KVM feature leaf 0x40000001 do reach
//! the guest. So on [`HostKind::Pvm`] every feature the guest would drive through a
//! hypercall is cleared: PV_UNHALT (KVM_HC_KICK_CPU from paravirtual spinlocks),
//! PV_SEND_IPI (KVM_HC_SEND_IPI), PV_SCHED_YIELD (KVM_HC_SCHED_YIELD) and
//! HC_MAP_GPA_RANGE (KVM_HC_MAP_GPA_RANGE). Also cleared, although they use MSRs only:
//! PV_TLB_FLUSH (no hypercall itself, cleared for safety as in the host notes' 2-vCPU run),
//! POLL_CONTROL (it enables guest-side halt polling, which under emulation spins the
//! guest kernel at 1-2 MIPS instead of halting), and the async page fault bits ASYNC_PF,
//! ASYNC_PF_VMEXIT and ASYNC_PF_INT (they inject "page not present/ready" events into
//! kernel code paths never tried under PVM's emulator, for no gain with resident guest
//! memory). kvmclock, steal time and PV EOI stay: they work through MSRs and shared
//! memory. On [`HostKind::Hardware`] leaf 0x40000001 is left exactly as KVM reports it.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

use crate::host::HostKind;

/// KVM feature bit (leaf 0x40000001 EAX): asynchronous page faults.
pub const KVM_FEATURE_ASYNC_PF: u32 = 4;
/// KVM feature bit: paravirtual unhalt (KVM_HC_KICK_CPU) for PV spinlocks.
pub const KVM_FEATURE_PV_UNHALT: u32 = 7;
/// KVM feature bit: paravirtual TLB flush.
pub const KVM_FEATURE_PV_TLB_FLUSH: u32 = 9;
/// KVM feature bit: async page faults delivered as VM exits (nested).
pub const KVM_FEATURE_ASYNC_PF_VMEXIT: u32 = 10;
/// KVM feature bit: paravirtual IPIs (KVM_HC_SEND_IPI).
pub const KVM_FEATURE_PV_SEND_IPI: u32 = 11;
/// KVM feature bit: host halt-polling control (MSR_KVM_POLL_CONTROL).
pub const KVM_FEATURE_POLL_CONTROL: u32 = 12;
/// KVM feature bit: paravirtual directed yield (KVM_HC_SCHED_YIELD).
pub const KVM_FEATURE_PV_SCHED_YIELD: u32 = 13;
/// KVM feature bit: async page fault "page ready" notification as an interrupt.
pub const KVM_FEATURE_ASYNC_PF_INT: u32 = 14;
/// KVM feature bit: KVM_HC_MAP_GPA_RANGE hypercall.
pub const KVM_FEATURE_HC_MAP_GPA_RANGE: u32 = 16;

/// Leaf 0x40000001 EAX bits cleared on a PVM host (see the module docs).
pub const PVM_CLEARED_KVM_FEATURES: u32 = (1 << KVM_FEATURE_ASYNC_PF)
    | (1 << KVM_FEATURE_PV_UNHALT)
    | (1 << KVM_FEATURE_PV_TLB_FLUSH)
    | (1 << KVM_FEATURE_ASYNC_PF_VMEXIT)
    | (1 << KVM_FEATURE_PV_SEND_IPI)
    | (1 << KVM_FEATURE_POLL_CONTROL)
    | (1 << KVM_FEATURE_PV_SCHED_YIELD)
    | (1 << KVM_FEATURE_ASYNC_PF_INT)
    | (1 << KVM_FEATURE_HC_MAP_GPA_RANGE);

/// KVM paravirtual feature leaf.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// Leaf 1 ECX: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: EBX[23:16] (logical processor count) is valid.
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_SIZE: u32 = 8;
/// Leaf 6 EAX: Intel turbo boost.
const LEAF6_EAX_TURBO: u32 = 1 << 1;
/// Leaf 6 ECX: energy/performance bias MSR (not emulated by KVM).
const LEAF6_ECX_EPB: u32 = 1 << 3;
/// Extended topology level types (leaf 0xB/0x1F ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `n` items: ceil(log2(n)).
fn id_bits(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

/// Leaf 0xB / 0x1F subleaf `index` for a flat topology of `num_cpus` cores.
fn topology_leaf(entry: &mut kvm_cpuid_entry2, vcpu_index: u8, num_cpus: u32) {
    let (shift, count, level_type) = match entry.index {
        0 => (0, 1, LEVEL_TYPE_SMT),
        1 => (id_bits(num_cpus), num_cpus, LEVEL_TYPE_CORE),
        _ => (0, 0, 0),
    };
    entry.eax = shift;
    entry.ebx = count;
    entry.ecx = (level_type << 8) | (entry.index & 0xff);
    entry.edx = u32::from(vcpu_index);
}

/// Adjusts the CPUID entries for vCPU `vcpu_index` of `num_cpus` on `host` (module docs).
pub fn customize_cpuid(cpuid: &mut CpuId, vcpu_index: u8, num_cpus: u8, host: HostKind) {
    let cpus = u32::from(num_cpus.max(1));
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (u32::from(vcpu_index) << 24)
                    | (cpus << 16)
                    | (CLFLUSH_SIZE << 8)
                    | (entry.ebx & 0xff);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if cpus > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 if entry.eax & 0x1f != 0 => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: logical processors
                // sharing this cache - 1 (per core up to L2, everyone for L3).
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cpus - 1 } else { 0 };
                entry.eax =
                    (entry.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((cpus - 1) & 0x3f) << 26);
            }
            6 => {
                entry.eax &= !LEAF6_EAX_TURBO;
                entry.ecx &= !LEAF6_ECX_EPB;
            }
            0xb | 0x1f => topology_leaf(entry, vcpu_index, cpus),
            KVM_CPUID_FEATURES if host.is_pvm() => entry.eax &= !PVM_CLEARED_KVM_FEATURES,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// All KVM feature bits a recent host reports, plus hint bits in EDX.
    const HOST_KVM_FEATURES: u32 = 0x0001_ffff;

    fn host_cpuid() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, 0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            entry(1, 0, 0x000906ea, 0x00ff_ff05, 0x7ffa_3203, 0x1f8b_fbff),
            entry(4, 0, 0x1c00_4121, 0x01c0_003f, 0x3f, 0),
            entry(4, 3, 0x1c03_c163, 0x03c0_003f, 0x2fff, 6),
            entry(4, 4, 0, 0, 0, 0),
            entry(6, 0, 0x0000_0006, 0, 0x9, 0),
            entry(0xb, 0, 1, 2, 0x100, 9),
            entry(0xb, 1, 4, 8, 0x201, 9),
            entry(0xb, 2, 0, 0, 2, 9),
            entry(KVM_CPUID_FEATURES, 0, HOST_KVM_FEATURES, 0, 0, 1),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn apic_ids_per_vcpu() {
        for vcpu in 0..4u8 {
            let mut c = host_cpuid();
            customize_cpuid(&mut c, vcpu, 4, HostKind::Hardware);
            let l1 = find(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(vcpu));
            assert_eq!((l1.ebx >> 16) & 0xff, 4);
            assert_eq!((l1.ebx >> 8) & 0xff, 8);
            assert_eq!(l1.ebx & 0xff, 5, "brand index kept");
            for sub in 0..3 {
                assert_eq!(find(&c, 0xb, sub).edx, u32::from(vcpu));
            }
        }
    }

    #[test]
    fn hypervisor_and_htt_bits() {
        let mut c = host_cpuid();
        customize_cpuid(&mut c, 0, 2, HostKind::Hardware);
        let l1 = find(&c, 1, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.ecx & !LEAF1_ECX_HYPERVISOR, 0x7ffa_3203);
        let mut one = host_cpuid();
        customize_cpuid(&mut one, 0, 1, HostKind::Hardware);
        assert_eq!(find(&one, 1, 0).edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn flat_topology_levels() {
        let mut c = host_cpuid();
        customize_cpuid(&mut c, 5, 6, HostKind::Hardware);
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx), (3, 6, 0x201));
        let end = find(&c, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx), (0, 0, 2));
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(32), 5);
    }

    #[test]
    fn cache_leaf_core_counts() {
        let mut c = host_cpuid();
        customize_cpuid(&mut c, 0, 3, HostKind::Hardware);
        let l1d = find(&c, 4, 0);
        assert_eq!(l1d.eax >> 26, 2);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!(l1d.eax & 0x3fff, 0x0121);
        let l3 = find(&c, 4, 3);
        assert_eq!(((l3.eax >> 14) & 0xfff, l3.eax >> 26), (2, 2));
        assert_eq!(find(&c, 4, 4).eax, 0, "terminator left alone");
        let l6 = find(&c, 6, 0);
        assert_eq!((l6.eax, l6.ecx), (0x4, 0x1));
    }

    #[test]
    fn kvm_leaf_untouched_on_hardware() {
        let before = find(&host_cpuid(), KVM_CPUID_FEATURES, 0);
        let mut c = host_cpuid();
        customize_cpuid(&mut c, 1, 2, HostKind::Hardware);
        assert_eq!(find(&c, KVM_CPUID_FEATURES, 0), before);
    }

    #[test]
    fn kvm_hypercall_features_cleared_on_pvm() {
        let mut c = host_cpuid();
        customize_cpuid(&mut c, 1, 2, HostKind::Pvm);
        let kvm = find(&c, KVM_CPUID_FEATURES, 0);
        for bit in [4, 7, 9, 10, 11, 12, 13, 14, 16] {
            assert_eq!(kvm.eax & (1 << bit), 0, "bit {bit}");
        }
        // kvmclock (0, 3), steal time (5), PV EOI (6) and MSI ext dest id (15) stay.
        for bit in [0, 3, 5, 6, 15] {
            assert_ne!(kvm.eax & (1 << bit), 0, "bit {bit}");
        }
        assert_eq!(kvm.eax, HOST_KVM_FEATURES & !PVM_CLEARED_KVM_FEATURES);
        assert_eq!(kvm.edx, 1, "hints untouched");
    }
}
