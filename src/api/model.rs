//! The API's JSON bodies. Field names follow Firecracker's. The VM's resources
//! (boot source, machine config, drives, network interfaces, vsock) are the configuration
//! schema the config file uses too ([`crate::config`]); the rest are the API's own. Every
//! range and syntax rule is checked while deserializing, so an error carries the path of
//! the field at fault.

use serde::{Deserialize, Serialize};

pub use crate::config::values::{MAX_ID_LEN, MIN_GUEST_CID};
pub use crate::config::{
    Balloon, BalloonStatsUpdate, BalloonUpdate, BootSource, DeviceId, Drive, DrivePatch, Entropy,
    Logger, MacAddr, MachineConfig, MetricsConfig, NetworkInterface, NetworkInterfacePatch, Vsock,
};

#[path = "model_snapshot.rs"]
mod snapshot;
pub use snapshot::*;

/// `PUT /actions`: what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's keyboard.
    SendCtrlAltDel,
    /// Write the metrics out now.
    FlushMetrics,
}

/// `PUT /actions` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionBody {
    pub action_type: ActionType,
}

/// `PATCH /vm`: the state the VM should be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStateRequest {
    /// Stop running the vCPUs.
    Paused,
    /// Run them again.
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmPatchBody {
    pub state: VmStateRequest,
}

/// What the VM is doing, as `GET /` and `GET /vm` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Waiting for configuration and `InstanceStart`.
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
    /// The guest has ended.
    Stopped,
}

/// `GET /` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The instance's name.
    pub id: String,
    /// What the VM is doing.
    pub state: InstanceState,
    /// hvlite's version.
    pub vmm_version: String,
    /// Always "hvlite".
    pub app_name: String,
}

impl InstanceInfo {
    /// This build's info for instance `id` in `state`.
    pub fn new(id: impl Into<String>, state: InstanceState) -> Self {
        Self {
            id: id.into(),
            state,
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            app_name: "hvlite".to_string(),
        }
    }
}

/// `GET /vm` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// What the VM is doing.
    pub state: InstanceState,
}

/// `GET /version` answer. The field has Firecracker's name, so that its clients find the
/// version where they look; the value is hvlite's version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// hvlite's version.
    pub firecracker_version: String,
}

impl Default for VersionInfo {
    fn default() -> Self {
        Self {
            firecracker_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}
