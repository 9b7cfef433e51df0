//! The VM being configured through the API before InstanceStart: the resources the PUT
//! requests set, turned into a [`VmConfig`] when the VM starts.

use std::path::PathBuf;

use crate::config::{
    Balloon, BootSource, DeviceId, DiskConfig, Drive, DrivePatch, Entropy, GuestCid, HostPath,
    HugePages, MacAddr, MachineConfig, MemSizeMib, NetConfig, NetworkInterface,
    NetworkInterfacePatch, SecondRoot, Smt, TapName, VcpuCount, VmConfig, Vsock, VsockConfig,
    check_one_root,
};
use crate::vmm::config_file::{FileConfig, Process};

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
            smt: Some(Smt),
            track_dirty_pages: Some(self.base.track_dirty_pages),
            huge_pages: Some(HugePages),
            cpu_template: None,
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
        // A PUT replaces the whole resource: an absent flag is Firecracker's default.
        self.base.track_dirty_pages = m.track_dirty_pages.unwrap_or(false);
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

    /// Records a `PATCH /drives/{id}` applied to the running VM, so that the
    /// configuration reported stays true.
    pub fn patch_drive(&mut self, p: &DrivePatch) {
        if let Some((_, d)) = self
            .drives
            .iter_mut()
            .find(|(i, _)| i == p.drive_id.as_str())
        {
            if let Some(path) = &p.path_on_host {
                d.path = path.to_path_buf();
            }
            if let Some(r) = p.rate_limiter {
                let mut now = d.rate_limiter.unwrap_or_default();
                now.bandwidth = r.bandwidth.or(now.bandwidth);
                now.ops = r.ops.or(now.ops);
                d.rate_limiter = Some(now);
            }
        }
    }

    /// Records a `PATCH /network-interfaces/{id}` applied to the running VM.
    pub fn patch_net(&mut self, p: &NetworkInterfacePatch) {
        let Some((_, n)) = self.nets.iter_mut().find(|(i, _)| i == p.iface_id.as_str()) else {
            return;
        };
        for (patch, limiter) in [
            (p.tx_rate_limiter, &mut n.tx_rate_limiter),
            (p.rx_rate_limiter, &mut n.rx_rate_limiter),
        ] {
            if let Some(r) = patch {
                let mut now = limiter.unwrap_or_default();
                now.bandwidth = r.bandwidth.or(now.bandwidth);
                now.ops = r.ops.or(now.ops);
                *limiter = Some(now);
            }
        }
    }

    /// `PUT /network-interfaces/{id}`.
    pub fn put_net(&mut self, n: &NetworkInterface) {
        let (id, net) = n.to_net();
        match self.nets.iter_mut().find(|(i, _)| *i == id) {
            Some(slot) => slot.1 = net,
            None => self.nets.push((id, net)),
        }
    }

    /// `PUT /fs/{id}`: a share, replacing one with the same id.
    pub fn put_fs(&mut self, f: &crate::config::FsDevice) {
        let (id, share) = f.to_share();
        let b = &mut self.base;
        // Shares without an id (from the command line) are named by their tag.
        b.share_ids = (0..b.shares.len()).map(|i| b.share_id(i)).collect();
        match b.share_ids.iter().position(|i| *i == id) {
            Some(at) => b.shares[at] = share,
            None => {
                b.shares.push(share);
                b.share_ids.push(id);
            }
        }
    }

    /// `PUT /entropy`.
    pub fn set_entropy(&mut self, e: &Entropy) {
        self.base.entropy = Some(e.into());
    }

    /// `PUT /balloon`.
    pub fn set_balloon(&mut self, b: &Balloon) {
        self.base.balloon = Some(*b);
    }

    /// The balloon as configured (`GET /balloon` before the start).
    pub fn balloon(&self) -> Option<Balloon> {
        self.base.balloon
    }

    /// `PATCH /balloon` and `PATCH /balloon/statistics` after the start: what `GET
    /// /vm/config` then reports.
    pub fn update_balloon(&mut self, f: impl FnOnce(&mut Balloon)) {
        if let Some(b) = self.base.balloon.as_mut() {
            f(b);
        }
    }

    /// `PUT /vsock`.
    pub fn set_vsock(&mut self, v: &Vsock) {
        self.base.vsock = Some(VsockConfig::from(v));
    }

    /// The configuration as a config file would write it (`GET /vm/config`); the file
    /// loads back into the same VM. A vsock without a host socket has no form in the
    /// file and is left out.
    pub fn to_file_config(&self) -> Result<FileConfig, String> {
        let path = |p: &PathBuf| HostPath::try_from(p.clone());
        let boot_source = BootSource {
            kernel_image_path: self.kernel.as_ref().map(path).transpose()?,
            initrd_path: self.base.initrd.as_ref().map(path).transpose()?,
            boot_args: self.base.cmdline.clone(),
        };
        let drives = (self.drives.iter())
            .map(|(id, d)| {
                Ok(Drive {
                    drive_id: DeviceId::try_from(id.clone())?,
                    path_on_host: path(&d.path)?,
                    is_read_only: d.read_only,
                    is_root_device: d.root,
                    rate_limiter: d.rate_limiter,
                })
            })
            .collect::<Result<_, String>>()?;
        let network_interfaces = (self.nets.iter())
            .map(|(id, n)| {
                Ok(NetworkInterface {
                    iface_id: DeviceId::try_from(id.clone())?,
                    host_dev_name: TapName::try_from(n.tap.clone())?,
                    guest_mac: n.mac.map(MacAddr),
                    tx_rate_limiter: n.tx_rate_limiter,
                    rx_rate_limiter: n.rx_rate_limiter,
                })
            })
            .collect::<Result<_, String>>()?;
        let vsock = match &self.base.vsock {
            Some(VsockConfig {
                cid,
                uds: Some(uds),
            }) => Some(Vsock {
                guest_cid: GuestCid::try_from(*cid)?,
                uds_path: path(uds)?,
            }),
            _ => None,
        };
        let process = (self.base.command.clone()).map(|args| Process {
            args: Some(args),
            ..Process::default()
        });
        Ok(FileConfig {
            boot_source: Some(boot_source),
            machine_config: Some(self.machine_config()),
            drives,
            network_interfaces,
            vsock,
            entropy: (self.base.entropy).map(|e| Entropy {
                rate_limiter: e.rate_limiter,
            }),
            balloon: self.base.balloon,
            fs: (self.base.shares.iter().enumerate())
                .map(|(i, s)| crate::config::FsDevice::from_share(&self.base.share_id(i), s))
                .collect::<Result<_, _>>()?,
            process,
            ..FileConfig::default()
        })
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
    fn shares_are_put_by_id() {
        let mut p = PendingVm::new(Some("/k".into()), VmConfig::new(PathBuf::new()));
        let fs = |id: &str, path: &str| -> crate::config::FsDevice {
            serde_json::from_value(serde_json::json!({
                "fs_id": id, "tag": id, "path_on_host": path
            }))
            .unwrap()
        };
        p.put_fs(&fs("a", "/one"));
        p.put_fs(&fs("b", "/two"));
        p.put_fs(&fs("a", "/three"));
        let cfg = p.to_vm_config().unwrap();
        assert_eq!(cfg.share_ids, ["a", "b"]);
        assert_eq!(cfg.shares[0].path, PathBuf::from("/three"));
        let file = p.to_file_config().unwrap();
        assert_eq!(file.fs.len(), 2);
        assert_eq!(file.fs[1].to_share().1.path, PathBuf::from("/two"));
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
