//! Which kind of KVM host we run on: hardware virtualization (VT-x/AMD-V) or PVM.
//!
//! KVM itself tells: a vCPU of a `kvm_pvm` host answers MSR [`PVM_SIGNATURE_MSR`] with
//! [`PVM_SIGNATURE`] ("PVM"), which hardware KVM does not know. That works wherever
//! `/dev/kvm` does, a jail without `/sys` included; when KVM cannot be asked, the loaded
//! modules under `/sys/module` decide.

use std::path::Path;
use std::sync::OnceLock;

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::Kvm;

/// The MSR through which a `kvm_pvm` host identifies itself.
pub const PVM_SIGNATURE_MSR: u32 = 0x4b56_4d11;
/// What [`PVM_SIGNATURE_MSR`] reads on a `kvm_pvm` host: the bytes "PVM", little-endian.
pub const PVM_SIGNATURE: u64 = 0x004d_5650;

/// The kind of KVM backend behind `/dev/kvm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// VT-x or AMD-V: the guest kernel runs natively, no workarounds needed.
    Hardware,
    /// PVM (`kvm_pvm`): guest kernel mode is emulated and needs the PVM measures.
    Pvm,
}

impl HostKind {
    /// Detects the host kind from the loaded KVM modules under `sysfs_module`
    /// (normally `/sys/module`).
    pub fn detect_in(sysfs_module: &Path) -> HostKind {
        let has = |m: &str| sysfs_module.join(m).exists();
        if has("kvm_pvm") && !has("kvm_intel") && !has("kvm_amd") {
            HostKind::Pvm
        } else {
            HostKind::Hardware
        }
    }

    /// The host kind a read of [`PVM_SIGNATURE_MSR`] shows: `None` when KVM does not know
    /// the MSR (hardware KVM), else the value read.
    pub fn from_signature(msr: Option<u64>) -> HostKind {
        if msr == Some(PVM_SIGNATURE) {
            HostKind::Pvm
        } else {
            HostKind::Hardware
        }
    }

    /// Asks KVM: a throwaway VM with one vCPU reads [`PVM_SIGNATURE_MSR`].
    pub fn detect_kvm(kvm: &Kvm) -> Result<HostKind, kvm_ioctls::Error> {
        let vm = kvm.create_vm()?;
        let vcpu = vm.create_vcpu(0)?;
        let entry = kvm_msr_entry {
            index: PVM_SIGNATURE_MSR,
            ..Default::default()
        };
        let mut msrs =
            Msrs::from_entries(&[entry]).map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM))?;
        let read = vcpu.get_msrs(&mut msrs)?;
        let value = (read == 1).then(|| msrs.as_slice()[0].data);
        Ok(Self::from_signature(value))
    }

    /// Detects the host kind of this machine once per process: through KVM
    /// ([`HostKind::detect_kvm`]), else from `/sys/module` ([`HostKind::detect_in`]).
    pub fn detect() -> HostKind {
        static KIND: OnceLock<HostKind> = OnceLock::new();
        *KIND.get_or_init(|| match Kvm::new().and_then(|kvm| Self::detect_kvm(&kvm)) {
            Ok(kind) => kind,
            Err(e) => {
                log::debug!("cannot ask KVM for the host kind ({e}); reading /sys/module");
                Self::detect_in(Path::new("/sys/module"))
            }
        })
    }

    /// Whether the PVM measures (emulation help, CPUID masks, command-line options) apply.
    pub fn is_pvm(self) -> bool {
        self == HostKind::Pvm
    }

    /// vCPUs for a container VM when none were asked for, if this host needs other than the
    /// usual default (`None`). On PVM hosts with 2 or more CPUs: 2, because there
    /// concurrent guest processes with one vCPU hit the host's stale-memory defect far more
    /// often than with two (`scripts/bench-pvm-defect.sh` measures it; the last figures are
    /// in `bench/results/pvm-defect.json`), and the emulated boot is faster too.
    pub fn container_cpus(self, host_cpus: usize) -> Option<u8> {
        (self.is_pvm() && host_cpus >= 2).then_some(2)
    }
}

impl std::fmt::Display for HostKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostKind::Hardware => write!(f, "hardware KVM (VT-x/AMD-V)"),
            HostKind::Pvm => write!(f, "PVM (kvm_pvm, guest kernel mode is emulated)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /sys/module stand-in holding `names`.
    fn fake_modules(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::create_dir_all(dir.path().join(n)).unwrap();
        }
        dir
    }

    #[test]
    fn containers_get_two_vcpus_only_on_pvm_hosts_with_two_cpus() {
        assert_eq!(HostKind::Pvm.container_cpus(2), Some(2));
        assert_eq!(HostKind::Pvm.container_cpus(64), Some(2));
        assert_eq!(HostKind::Pvm.container_cpus(1), None);
        assert_eq!(HostKind::Hardware.container_cpus(64), None);
    }

    /// On a hardware-KVM host none of the PVM measures apply: no command-line options, no
    /// CPUID masks on the KVM leaf, no help for emulation failures.
    #[test]
    fn no_pvm_measures_on_hardware() {
        use crate::boot::{cmdline, cpuid};
        use crate::vcpu::emulation::{Fixup, fixup_for};
        use kvm_bindings::{CpuId, kvm_cpuid_entry2};

        let hw = cmdline::build(&cmdline::CmdlineSpec::new(HostKind::Hardware)).unwrap();
        let hw = hw.as_cstring().unwrap().into_string().unwrap();
        assert!(!hw.contains(cmdline::PVM_OPTIONS));
        let pvm = cmdline::build(&cmdline::CmdlineSpec::new(HostKind::Pvm)).unwrap();
        assert!(
            pvm.as_cstring()
                .unwrap()
                .to_str()
                .unwrap()
                .contains(cmdline::PVM_OPTIONS)
        );

        let kvm_leaf = kvm_cpuid_entry2 {
            function: cpuid::KVM_CPUID_FEATURES,
            eax: u32::MAX,
            ..Default::default()
        };
        let mut ids = CpuId::from_entries(&[kvm_leaf]).unwrap();
        cpuid::customize_cpuid(&mut ids, 0, 2, HostKind::Hardware);
        assert_eq!(ids.as_slice()[0].eax, u32::MAX);
        cpuid::customize_cpuid(&mut ids, 0, 2, HostKind::Pvm);
        assert_ne!(ids.as_slice()[0].eax, u32::MAX);

        for bytes in [&[0xcc][..], &[0x0f, 0x01, 0xca], &[0x0f, 0x01, 0xcb]] {
            assert_eq!(fixup_for(HostKind::Hardware, bytes), None);
            assert!(fixup_for(HostKind::Pvm, bytes).is_some());
        }
        assert_eq!(fixup_for(HostKind::Pvm, &[0xcc]), Some(Fixup::Int3));
    }

    #[test]
    fn only_the_pvm_signature_means_pvm() {
        assert_eq!(HostKind::from_signature(Some(PVM_SIGNATURE)), HostKind::Pvm);
        assert_eq!(HostKind::from_signature(None), HostKind::Hardware);
        assert_eq!(HostKind::from_signature(Some(0)), HostKind::Hardware);
        assert_eq!(&PVM_SIGNATURE.to_le_bytes()[..3], b"PVM");
    }

    /// KVM and /sys/module agree on this machine (where /sys is there to ask).
    #[test]
    fn kvm_and_sysfs_agree() {
        let Ok(kvm) = Kvm::new() else {
            assert!(
                std::env::var_os("HVLITE_REQUIRE_KVM").is_none(),
                "no /dev/kvm"
            );
            return;
        };
        let by_kvm = HostKind::detect_kvm(&kvm).expect("KVM answers");
        assert_eq!(by_kvm, HostKind::detect_in(Path::new("/sys/module")));
        assert_eq!(HostKind::detect(), by_kvm);
    }

    #[test]
    fn detects_pvm_only_without_hardware_modules() {
        assert_eq!(
            HostKind::detect_in(fake_modules(&["kvm", "kvm_pvm"]).path()),
            HostKind::Pvm
        );
        assert_eq!(
            HostKind::detect_in(fake_modules(&["kvm", "kvm_intel"]).path()),
            HostKind::Hardware
        );
        assert_eq!(
            HostKind::detect_in(fake_modules(&["kvm", "kvm_amd", "kvm_pvm"]).path()),
            HostKind::Hardware
        );
        assert_eq!(
            HostKind::detect_in(fake_modules(&["kvm"]).path()),
            HostKind::Hardware
        );
    }
}
