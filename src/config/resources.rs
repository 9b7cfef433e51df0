//! The resources a VM is configured from, as the config file's sections and the API's
//! request bodies write them: [`BootSource`], [`MachineConfig`], [`Drive`],
//! [`NetworkInterface`] and [`Vsock`]. Unknown fields are errors.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::FlushSecs;
use crate::logging::{LevelSpec, LineOptions, LogDest, LogFormat};
use crate::metrics::DEFAULT_FLUSH_INTERVAL;

use super::values::{
    CpuTemplate, DeviceId, GuestCid, HostPath, HugePages, MacAddr, MemSizeMib, RateLimiterConfig,
    Smt, TapName, VcpuCount,
};
use super::vm::{DiskConfig, NetConfig, SecondRoot, VsockConfig, check_one_root};

/// `boot-source`: what to boot (`--kernel`, `--initrd`, `--cmdline`). The config file may
/// leave the kernel to the command line; `PUT /boot-source` must name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel image on the host: ELF vmlinux or bzImage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_image_path: Option<HostPath>,
    /// Initrd / initramfs on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<HostPath>,
    /// Extra kernel command-line options, appended to hvlite's defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `machine-config`: resources (`--cpus`, `--memory`). The config file may leave either
/// to the default; `PUT /machine-config` must give both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<VcpuCount>,
    /// Guest memory in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<MemSizeMib>,
    /// Simultaneous multithreading: `false` only (each vCPU is a core of its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smt: Option<Smt>,
    /// Track the pages the guest writes (KVM dirty logging on guest memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Page size backing guest memory: `"None"` only (4 KiB pages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    /// Firecracker's static CPU template: `"None"` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
}

impl BootSource {
    /// The first field a whole boot source needs that this one lacks: the kernel.
    pub fn missing_field(&self) -> Option<&'static str> {
        self.kernel_image_path
            .is_none()
            .then_some("kernel_image_path")
    }
}

impl MachineConfig {
    /// A whole machine config; the values are checked as when parsed.
    pub fn new(vcpu_count: u8, mem_size_mib: u64) -> Result<Self, String> {
        Ok(Self {
            vcpu_count: Some(VcpuCount::try_from(u64::from(vcpu_count))?),
            mem_size_mib: Some(MemSizeMib::try_from(mem_size_mib)?),
            ..Self::default()
        })
    }

    /// The first field a whole machine config needs that this one lacks.
    pub fn missing_field(&self) -> Option<&'static str> {
        if self.vcpu_count.is_none() {
            Some("vcpu_count")
        } else if self.mem_size_mib.is_none() {
            Some("mem_size_mib")
        } else {
            None
        }
    }
}

/// A disk (`drives[]`, `PUT /drives/{drive_id}`, `--disk`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Names the drive in metrics (`hvlite.block.<drive_id>`) and in the API's path.
    pub drive_id: DeviceId,
    /// Host file backing the disk.
    pub path_on_host: HostPath,
    /// The guest may only read it.
    #[serde(default)]
    pub is_read_only: bool,
    /// The guest's root filesystem is on it: it becomes `/dev/vda` and the kernel gets
    /// `root=/dev/vda ro` (or `rw`). At most one drive may have it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_root_device: bool,
    /// Limits on the guest's I/O to the drive (Firecracker's RateLimiter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /drives/{drive_id}` on a started VM: a new backing file (the guest is told
/// and sees the new capacity) and/or new rate limits (a bucket given replaces that
/// bucket; one left out stays).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DrivePatch {
    pub drive_id: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<HostPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{iface_id}` on a started VM: new TX and RX rate limits (a
/// bucket given replaces that bucket; one left out stays).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfacePatch {
    pub iface_id: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
}

/// A network interface (`network-interfaces[]`, `PUT /network-interfaces/{iface_id}`,
/// `--net`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Names the interface in metrics (`hvlite.net.<iface_id>`) and in the API's path.
    pub iface_id: DeviceId,
    /// The host TAP device.
    pub host_dev_name: TapName,
    /// The guest's MAC address; hvlite picks a stable one when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
    /// Limits on the frames the guest sends (Firecracker's tx_rate_limiter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on the frames the guest receives (Firecracker's rx_rate_limiter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
}

/// `vsock`: a virtio-vsock device bridged to a Unix socket on the host (`--vsock`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id.
    pub guest_cid: GuestCid,
    /// Host processes connect here (`CONNECT <port>`); guest connections to host port P
    /// go to `<uds_path>_P`.
    pub uds_path: HostPath,
}

/// `logger`: where hvlite's own log goes (see [`crate::logging`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Log file; stderr when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_path: Option<HostPath>,
    /// Level directives, as in `HVLITE_LOG`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<LevelSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    /// Show each line's level (Firecracker's `show_level`); true when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Show each line's source file and line (Firecracker's `show_log_origin`); false
    /// when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
}

impl Logger {
    /// What each line shows.
    pub fn line_options(&self) -> LineOptions {
        let default = LineOptions::default();
        LineOptions {
            level: self.show_level.unwrap_or(default.level),
            origin: self.show_log_origin.unwrap_or(default.origin),
        }
    }

    /// Where the log goes.
    pub fn dest(&self) -> LogDest {
        (self.log_path.clone()).map_or(LogDest::Stderr, |p| LogDest::File(p.into()))
    }
}

/// `metrics`: the metrics file (see [`crate::metrics`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: HostPath,
    /// Seconds between periodic flushes; 60 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush_interval_secs: Option<FlushSecs>,
}

impl MetricsConfig {
    /// Time between periodic flushes.
    pub fn flush_interval(&self) -> Duration {
        self.flush_interval_secs
            .map_or(DEFAULT_FLUSH_INTERVAL, |s| Duration::from_secs(s.get()))
    }
}

/// `entropy`: a virtio-rng device (`PUT /entropy`, `--entropy`), Firecracker's
/// EntropyDevice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    /// Limits on the bytes and requests the guest takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl From<&Entropy> for super::vm::EntropyConfig {
    fn from(e: &Entropy) -> Self {
        Self {
            rate_limiter: e.rate_limiter,
        }
    }
}

/// `balloon`: a virtio-balloon device (`PUT /balloon`), Firecracker's Balloon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// Target size of the balloon in MiB (memory taken from the guest).
    pub amount_mib: u32,
    /// The guest deflates the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics reports; 0 (the default) switches statistics off.
    #[serde(default)]
    pub stats_polling_interval_s: u32,
}

/// `PATCH /balloon`: a new target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// Target size of the balloon in MiB.
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`: a new statistics interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// Seconds between statistics reports (1 or more).
    pub stats_polling_interval_s: u32,
}

/// What is wrong with a list of drives or interfaces, and the index of the entry at fault.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("duplicate id {0:?}")]
    DuplicateId(String),
    #[error(transparent)]
    SecondRoot(#[from] SecondRoot),
}

/// Checks a list of drives: unique ids and at most one root device. On error returns the
/// index of the entry at fault.
pub fn check_drives(drives: &[Drive]) -> Result<(), (usize, ListError)> {
    unique_ids(drives.iter().map(|d| &d.drive_id))?;
    check_one_root(
        drives
            .iter()
            .map(|d| (d.drive_id.as_str(), d.is_root_device)),
    )
    .map_err(|(i, e)| (i, e.into()))
}

/// Checks a list of network interfaces: unique ids.
pub fn check_interfaces(ifaces: &[NetworkInterface]) -> Result<(), (usize, ListError)> {
    unique_ids(ifaces.iter().map(|n| &n.iface_id))
}

fn unique_ids<'a>(ids: impl Iterator<Item = &'a DeviceId>) -> Result<(), (usize, ListError)> {
    let mut seen = std::collections::HashSet::new();
    for (i, id) in ids.enumerate() {
        if !seen.insert(id.as_str()) {
            return Err((i, ListError::DuplicateId(id.to_string())));
        }
    }
    Ok(())
}

impl Drive {
    /// The drive's metrics id and the disk the VMM attaches.
    pub fn to_disk(&self) -> (String, DiskConfig) {
        let disk = DiskConfig {
            path: self.path_on_host.to_path_buf(),
            read_only: self.is_read_only,
            root: self.is_root_device,
            rate_limiter: self.rate_limiter,
        };
        (self.drive_id.to_string(), disk)
    }
}

impl NetworkInterface {
    /// The interface's metrics id and the device the VMM attaches.
    pub fn to_net(&self) -> (String, NetConfig) {
        let net = NetConfig {
            tap: self.host_dev_name.to_string(),
            mac: self.guest_mac.map(|m| m.0),
            tx_rate_limiter: self.tx_rate_limiter,
            rx_rate_limiter: self.rx_rate_limiter,
        };
        (self.iface_id.to_string(), net)
    }
}

impl From<&Vsock> for VsockConfig {
    fn from(v: &Vsock) -> Self {
        VsockConfig {
            cid: u64::from(v.guest_cid.get()),
            uds: Some(v.uds_path.to_path_buf()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn drive(id: &str, root: bool) -> Drive {
        serde_json::from_value(json!({
            "drive_id": id, "path_on_host": format!("/{id}.img"), "is_root_device": root
        }))
        .unwrap()
    }

    #[test]
    fn drive_lists_have_unique_ids_and_one_root() {
        assert_eq!(check_drives(&[drive("a", true), drive("b", false)]), Ok(()));
        let dup = check_drives(&[drive("a", false), drive("b", false), drive("a", false)]);
        assert_eq!(dup, Err((2, ListError::DuplicateId("a".into()))));
        let (i, e) = check_drives(&[drive("a", true), drive("b", true)]).unwrap_err();
        assert_eq!(i, 1);
        assert_eq!(
            e.to_string(),
            "drive \"b\" cannot be the root device: drive \"a\" already is"
        );
    }

    #[test]
    fn resources_convert_to_devices() {
        let (id, disk) = drive("root", true).to_disk();
        assert_eq!(id, "root");
        assert!(disk.root && !disk.read_only);
        assert_eq!(disk.path, std::path::PathBuf::from("/root.img"));
        let n: NetworkInterface = serde_json::from_value(json!({
            "iface_id": "n", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:07"
        }))
        .unwrap();
        let (id, net) = n.to_net();
        assert_eq!((id.as_str(), net.tap.as_str()), ("n", "tap0"));
        assert_eq!(net.mac, Some([2, 0, 0, 0, 0, 7]));
        let v: Vsock = serde_json::from_value(json!({"guest_cid": 3, "uds_path": "/v"})).unwrap();
        let v = VsockConfig::from(&v);
        assert_eq!((v.cid, v.uds), (3, Some("/v".into())));
    }

    #[test]
    fn a_drive_serializes_without_the_default_root_flag() {
        let v = serde_json::to_value(drive("a", false)).unwrap();
        assert_eq!(
            v,
            json!({"drive_id": "a", "path_on_host": "/a.img", "is_read_only": false})
        );
    }
}
