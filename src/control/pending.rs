//! The VM being configured through the API before InstanceStart: the resources the PUT
//! requests set, turned into a [`VmConfig`] when the VM starts.

use std::path::PathBuf;

use crate::api::{BootSource, Drive, MachineConfig, NetworkInterface, VsockSpec};
use crate::vmm::config::{DiskConfig, NetConfig, VmConfig, VsockConfig};

/// Why the configuration cannot be applied or started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PendingError {
    #[error("no kernel: PUT /boot-source first")]
    NoBootSource,
    #[error("drive {existing:?} is already the root device")]
    SecondRoot { existing: String },
}

/// One drive, with its id and whether it holds the root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PendingDrive {
    id: String,
    disk: DiskConfig,
    root: bool,
}

/// The configuration so far. Drives and interfaces keep the order of their first PUT;
/// a PUT with a known id replaces that entry in place.
#[derive(Clone, Debug)]
pub struct PendingVm {
    kernel: Option<PathBuf>,
    /// Everything but the kernel, the disks and the interfaces.
    base: VmConfig,
    drives: Vec<PendingDrive>,
    nets: Vec<(String, NetConfig)>,
}

impl PendingVm {
    /// Starts from what the command line and config file gave (`base`'s kernel is
    /// ignored; `kernel` is the one they gave, if any).
    pub fn new(kernel: Option<PathBuf>, base: VmConfig) -> Self {
        let drives = base
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| PendingDrive {
                id: base.disk_id(i),
                disk: d.clone(),
                root: false,
            })
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
            vcpu_count: self.base.cpus,
            mem_size_mib: self.base.memory_mib,
        }
    }

    /// `PUT /machine-config`.
    pub fn set_machine_config(&mut self, m: &MachineConfig) {
        self.base.cpus = m.vcpu_count;
        self.base.memory_mib = m.mem_size_mib;
    }

    /// `PUT /boot-source`: replaces kernel, initrd and boot arguments.
    pub fn set_boot_source(&mut self, b: &BootSource) {
        self.kernel = Some(b.kernel_image_path.clone());
        self.base.initrd = b.initrd_path.clone();
        self.base.cmdline = b.boot_args.clone();
    }

    /// `PUT /drives/{id}`.
    pub fn put_drive(&mut self, d: &Drive) -> Result<(), PendingError> {
        let id = d.drive_id.as_str();
        if d.is_root_device
            && let Some(other) = self.drives.iter().find(|p| p.root && p.id != id)
        {
            return Err(PendingError::SecondRoot {
                existing: other.id.clone(),
            });
        }
        let drive = PendingDrive {
            id: id.to_string(),
            disk: DiskConfig::from(d),
            root: d.is_root_device,
        };
        match self.drives.iter_mut().find(|p| p.id == id) {
            Some(slot) => *slot = drive,
            None => self.drives.push(drive),
        }
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`.
    pub fn put_net(&mut self, n: &NetworkInterface) {
        let id = n.iface_id.as_str();
        let net = NetConfig::from(n);
        match self.nets.iter_mut().find(|(i, _)| i == id) {
            Some(slot) => slot.1 = net,
            None => self.nets.push((id.to_string(), net)),
        }
    }

    /// `PUT /vsock`.
    pub fn set_vsock(&mut self, v: &VsockSpec) {
        self.base.vsock = Some(VsockConfig {
            cid: u64::from(v.guest_cid),
            uds: Some(v.uds_path.clone()),
        });
    }

    /// The VM to boot. The root drive, if any, comes first (`/dev/vda`) and the kernel
    /// gets `root=/dev/vda` with `ro` or `rw` before the user's boot arguments.
    pub fn to_vm_config(&self) -> Result<VmConfig, PendingError> {
        let kernel = self.kernel.clone().ok_or(PendingError::NoBootSource)?;
        let mut drives: Vec<&PendingDrive> = self.drives.iter().filter(|d| d.root).collect();
        drives.extend(self.drives.iter().filter(|d| !d.root));
        let mut cfg = VmConfig {
            kernel,
            disks: drives.iter().map(|d| d.disk.clone()).collect(),
            disk_ids: drives.iter().map(|d| d.id.clone()).collect(),
            nets: self.nets.iter().map(|(_, n)| n.clone()).collect(),
            net_ids: self.nets.iter().map(|(i, _)| i.clone()).collect(),
            ..self.base.clone()
        };
        if let Some(root) = drives.first().filter(|d| d.root) {
            let mode = if root.disk.read_only { "ro" } else { "rw" };
            let opts = format!("root=/dev/vda {mode}");
            cfg.cmdline = Some(match cfg.cmdline.take() {
                Some(user) => format!("{opts} {user}"),
                None => opts,
            });
        }
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
        p.set_boot_source(&BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: Some("quiet".into()),
        });
        p.set_machine_config(&MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 256,
        });
        p.put_drive(&drive("data", false)).unwrap();
        p.put_drive(&drive("root", true)).unwrap();
        assert_eq!(
            p.put_drive(&drive("other", true)),
            Err(PendingError::SecondRoot {
                existing: "root".into()
            })
        );
        // Replacing keeps the position.
        p.put_drive(&drive("data", false)).unwrap();
        let cfg = p.to_vm_config().unwrap();
        assert_eq!(cfg.kernel, PathBuf::from("/k"));
        assert_eq!((cfg.cpus, cfg.memory_mib), (2, 256));
        assert_eq!(cfg.disk_ids, ["root", "vda", "data"]);
        assert_eq!(cfg.disks[0].path, PathBuf::from("/root.img"));
        assert_eq!(cfg.cmdline.as_deref(), Some("root=/dev/vda rw quiet"));
        assert_eq!(p.machine_config().vcpu_count, 2);
    }
}
