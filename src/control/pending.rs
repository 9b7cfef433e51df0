//! The VM being configured through the API before InstanceStart: the resources the PUT
//! requests set, turned into a [`VmConfig`] when the VM starts.

use std::path::PathBuf;

use crate::config::{
    BootSource, DiskConfig, Drive, MachineConfig, MemSizeMib, NetConfig, NetworkInterface,
    SecondRoot, VcpuCount, VmConfig, Vsock, VsockConfig, check_one_root,
};

/// Why the configuration cannot be applied or started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PendingError {
    #[error("no kernel: PUT /boot-source first")]
    NoBootSource,
    #[error(transparent)]
    SecondRoot(#[from] SecondRoot),
}

/// The configuration so far. Drives and interfaces keep the order of their first PUT;
/// a PUT with a known id replaces that entry in place.
#[derive(Clone, Debug)]
pub struct PendingVm {
    kernel: Option<PathBuf>,
    /// Everything but the kernel, the disks and the interfaces.
    base: VmConfig,
    /// (drive_id, disk); the disk says whether it holds the root filesystem.
    drives: Vec<(String, DiskConfig)>,
    nets: Vec<(String, NetConfig)>,
}

impl PendingVm {
    /// Starts from what the command line and config file gave (`base`'s kernel is
    /// ignored; `kernel` is the one they gave, if any).
    pub fn new(kernel: Option<PathBuf>, base: VmConfig) -> Self {
        let drives = (base.disks.iter().enumerate())
            .map(|(i, d)| (base.disk_id(i), d.clone()))
            .collect();
        let nets = (base.nets.iter().enumerate())
            .map(|(i, n)| (base.net_id(i), n.clone()))
            .collect();
        Self {
            kernel,
            base,
            drives,
            nets,
        }
    }

    /// `GET /machine-config`.
    pub fn machine_config(&self) -> MachineConfig {
        MachineConfig {
            vcpu_count: VcpuCount::try_from(u64::from(self.base.cpus)).ok(),
            mem_size_mib: MemSizeMib::try_from(self.base.memory_mib).ok(),
        }
    }

    /// `PUT /machine-config` (the request checked that both fields are there).
    pub fn set_machine_config(&mut self, m: &MachineConfig) {
        if let Some(n) = m.vcpu_count {
            self.base.cpus = n.get();
        }
        if let Some(mib) = m.mem_size_mib {
            self.base.memory_mib = mib.get();
        }
    }

    /// `PUT /boot-source`: replaces kernel, initrd and boot arguments.
    pub fn set_boot_source(&mut self, b: &BootSource) {
        self.kernel = b.kernel_image_path.clone().map(PathBuf::from);
        self.base.initrd = b.initrd_path.clone().map(PathBuf::from);
        self.base.cmdline = b.boot_args.clone();
    }

    /// `PUT /drives/{id}`.
    pub fn put_drive(&mut self, d: &Drive) -> Result<(), PendingError> {
        let (id, disk) = d.to_disk();
        let others = self.drives.iter().filter(|(i, _)| *i != id);
        let all = others.map(|(i, d)| (i.as_str(), d.root));
        check_one_root(all.chain([(id.as_str(), disk.root)])).map_err(|(_, e)| e)?;
        match self.drives.iter_mut().find(|(i, _)| *i == id) {
            Some(slot) => slot.1 = disk,
            None => self.drives.push((id, disk)),
        }
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`.
    pub fn put_net(&mut self, n: &NetworkInterface) {
        let (id, net) = n.to_net();
        match self.nets.iter_mut().find(|(i, _)| *i == id) {
            Some(slot) => slot.1 = net,
            None => self.nets.push((id, net)),
        }
    }

    /// `PUT /vsock`.
    pub fn set_vsock(&mut self, v: &Vsock) {
        self.base.vsock = Some(VsockConfig::from(v));
    }

    /// The VM to boot. The root drive, if any, comes first (`/dev/vda`); the VMM gives the
    /// kernel `root=/dev/vda` for it ([`VmConfig::set_disks`]).
    pub fn to_vm_config(&self) -> Result<VmConfig, PendingError> {
        let kernel = self.kernel.clone().ok_or(PendingError::NoBootSource)?;
        let mut cfg = VmConfig {
            kernel,
            nets: self.nets.iter().map(|(_, n)| n.clone()).collect(),
            net_ids: self.nets.iter().map(|(i, _)| i.clone()).collect(),
            ..self.base.clone()
        };
        cfg.set_disks(self.drives.clone());
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, root: bool) -> Drive {
        serde_json::from_value(serde_json::json!({
            "drive_id": id, "path_on_host": format!("/{id}.img"), "is_root_device": root
        }))
        .unwrap()
    }

    #[test]
    fn resources_become_a_vm_config() {
        let mut base = VmConfig::new(PathBuf::new());
        base.disks = vec!["/cli.img".parse().unwrap()];
        let mut p = PendingVm::new(None, base);
        assert_eq!(p.to_vm_config(), Err(PendingError::NoBootSource));
        p.set_boot_source(
            &serde_json::from_str(r#"{"kernel_image_path": "/k", "boot_args": "quiet"}"#).unwrap(),
        );
        p.set_machine_config(
            &serde_json::from_str(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#).unwrap(),
        );
        p.put_drive(&drive("data", false)).unwrap();
        p.put_drive(&drive("root", true)).unwrap();
        assert_eq!(
            p.put_drive(&drive("other", true)),
            Err(PendingError::SecondRoot(SecondRoot {
                first: "root".into(),
                second: "other".into()
            }))
        );
        // The root drive may be replaced, and stay the root.
        p.put_drive(&drive("root", true)).unwrap();
        // Replacing keeps the position.
        p.put_drive(&drive("data", false)).unwrap();
        let cfg = p.to_vm_config().unwrap();
        assert_eq!(cfg.kernel, PathBuf::from("/k"));
        assert_eq!((cfg.cpus, cfg.memory_mib), (2, 256));
        assert_eq!(cfg.disk_ids, ["root", "vda", "data"]);
        assert_eq!(cfg.disks[0].path, PathBuf::from("/root.img"));
        assert!(cfg.disks[0].root && !cfg.disks[0].read_only);
        assert_eq!(cfg.cmdline.as_deref(), Some("quiet"));
        assert_eq!(p.machine_config().vcpu_count.map(VcpuCount::get), Some(2));
    }
}
