//! The bodies of `PUT /snapshot/create` and `PUT /snapshot/load`, in Firecracker's shapes.

use serde::{Deserialize, Serialize};

use crate::config::DeviceId;
use crate::config::values::{HostPath, TapName};
use crate::vmm::persist::RestoreSpec;

/// The kind of snapshot: only full snapshots are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// The whole state and all of guest memory.
    #[default]
    Full,
}

/// `PUT /snapshot/create` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Where the VM state file goes.
    pub snapshot_path: HostPath,
    /// Where the guest memory file goes.
    pub mem_file_path: HostPath,
    /// Full (the default, and the only kind).
    #[serde(default)]
    pub snapshot_type: SnapshotType,
}

/// Where guest memory comes from on a load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// A memory file written by `PUT /snapshot/create`.
    File,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// File (the only backend).
    pub backend_type: MemBackendType,
    /// The memory file.
    pub backend_path: HostPath,
}

/// A network interface attached to another TAP after a load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface's id in the snapshot.
    pub iface_id: DeviceId,
    /// The TAP device to use.
    pub host_dev_name: TapName,
}

/// A drive opened from another file after a load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveOverride {
    /// The drive's id in the snapshot.
    pub drive_id: DeviceId,
    /// The host file to use.
    pub path_on_host: HostPath,
}

/// The vsock device's new host socket after a load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The host socket to listen on.
    pub uds_path: HostPath,
}

/// `PUT /snapshot/load` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The VM state file.
    pub snapshot_path: HostPath,
    /// The guest memory.
    pub mem_backend: MemBackend,
    /// Run the VM at once (default false: it stays paused).
    #[serde(default)]
    pub resume_vm: bool,
    /// Interfaces to attach to other TAPs.
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// A new host socket for the vsock device.
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    /// Drives to open from other files.
    #[serde(default)]
    pub drive_overrides: Vec<DriveOverride>,
}

impl SnapshotLoadParams {
    /// The restore this body asks for.
    pub fn to_spec(&self) -> RestoreSpec {
        RestoreSpec {
            state_path: self.snapshot_path.to_path_buf(),
            mem_path: self.mem_backend.backend_path.to_path_buf(),
            drive_overrides: (self.drive_overrides.iter())
                .map(|d| (d.drive_id.to_string(), d.path_on_host.to_path_buf()))
                .collect(),
            net_overrides: (self.network_overrides.iter())
                .map(|n| (n.iface_id.to_string(), n.host_dev_name.to_string()))
                .collect(),
            vsock_uds: (self.vsock_override.as_ref()).map(|v| v.uds_path.to_path_buf()),
            resume: self.resume_vm,
        }
    }
}
