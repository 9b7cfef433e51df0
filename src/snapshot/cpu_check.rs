//! Whether this host can run a snapshot's vCPUs: every CPU feature the snapshot's CPUID
//! promised the guest must be one KVM supports here. (On PVM hosts KVM_GET_CPUID2 reports
//! the host's bits rather than what was set, so the CPUID compared is the one hvlite set,
//! saved in the snapshot, against KVM_GET_SUPPORTED_CPUID of this host.)

use kvm_bindings::kvm_cpuid_entry2;

/// A feature register: CPUID leaf, subleaf and register name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureWord {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
}

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    fn of(self, e: &kvm_cpuid_entry2) -> u32 {
        match self {
            Reg::Eax => e.eax,
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        }
    }
}

const fn word(leaf: u32, subleaf: u32, reg: Reg) -> FeatureWord {
    FeatureWord { leaf, subleaf, reg }
}

/// The registers whose bits are CPU features a guest may use once it saw them.
pub const FEATURE_WORDS: [FeatureWord; 8] = [
    word(1, 0, Reg::Ecx),
    word(1, 0, Reg::Edx),
    word(7, 0, Reg::Ebx),
    word(7, 0, Reg::Ecx),
    word(7, 0, Reg::Edx),
    word(0xd, 1, Reg::Eax),
    word(0x8000_0001, 0, Reg::Ecx),
    word(0x8000_0001, 0, Reg::Edx),
];

/// Bits of leaf 1 ECX that are not CPU features (OSXSAVE mirrors CR4, the hypervisor bit
/// is set by KVM, x2APIC and TSC-deadline are emulated by KVM whatever the host).
const LEAF1_ECX_NOT_FEATURES: u32 = (1 << 27) | (1 << 31) | (1 << 21) | (1 << 24);

/// Bits of leaf 1 EDX that are not CPU features: HTT (bit 28) says the package has more
/// than one logical CPU, which hvlite sets itself for a VM of more than one vCPU.
const LEAF1_EDX_NOT_FEATURES: u32 = crate::boot::cpuid::LEAF1_EDX_HTT;

fn find(entries: &[kvm_cpuid_entry2], w: FeatureWord) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| {
        e.function == w.leaf
            && (e.index == w.subleaf
                || e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
    })
}

/// A feature the snapshot promised that this host lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub word: FeatureWord,
    /// The promised bits the host does not offer.
    pub bits: u32,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPUID leaf {:#x}.{} {:?} bits {:#010x}",
            self.word.leaf, self.word.subleaf, self.word.reg, self.bits
        )
    }
}

/// The features `saved` promises that `supported` lacks (empty: compatible).
pub fn missing_features(
    saved: &[kvm_cpuid_entry2],
    supported: &[kvm_cpuid_entry2],
) -> Vec<Missing> {
    let mut out = Vec::new();
    for w in FEATURE_WORDS {
        let Some(s) = find(saved, w) else { continue };
        let mut want = w.reg.of(s);
        if w == word(1, 0, Reg::Ecx) {
            want &= !LEAF1_ECX_NOT_FEATURES;
        }
        if w == word(1, 0, Reg::Edx) {
            want &= !LEAF1_EDX_NOT_FEATURES;
        }
        let have = find(supported, w).map_or(0, |e| w.reg.of(e));
        let bits = want & !have;
        if bits != 0 {
            out.push(Missing { word: w, bits });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn a_promised_feature_the_host_lacks_is_found() {
        let supported = [entry(1, 0, 0b1011, 0xff), entry(0x8000_0001, 0, 0, 1)];
        let ok = [entry(1, 0, 0b0011 | (1 << 31), 0x0f)];
        assert!(missing_features(&ok, &supported).is_empty());
        let bad = [entry(1, 0, 0b0100, 0x100), entry(0x8000_0001, 0, 0, 3)];
        let m = missing_features(&bad, &supported);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0].bits, 0b0100);
        assert_eq!(m[1].bits, 0x100);
        assert_eq!(m[2].bits, 2);
        assert!(m[0].to_string().contains("leaf 0x1.0 Ecx"), "{}", m[0]);
        // HTT, set by hvlite for a multi-vCPU VM, is not a feature the host must have.
        let smp = [entry(1, 0, 0, 0x0f | (1 << 28))];
        assert!(missing_features(&smp, &supported).is_empty());
    }
}
