//! The API's JSON bodies. Field names follow Firecracker's. Every range and syntax rule is
//! checked while deserializing, so an error carries the path of the field at fault.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Unexpected};
use serde::{Deserialize, Serialize};

use crate::boot::mptable::MAX_CPUS;
use crate::devices::virtio::net::{format_mac, parse_mac};
use crate::vmm::config::{DiskConfig, NetConfig};

/// Longest drive or interface id.
pub const MAX_ID_LEN: usize = 64;
/// Lowest guest CID a VM may have (0-2 are the hypervisor, local and host).
pub const MIN_GUEST_CID: u32 = 3;

/// `PUT /machine-config` body and `GET /machine-config` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs, 1 to [`MAX_CPUS`].
    #[serde(deserialize_with = "vcpu_count")]
    pub vcpu_count: u8,
    /// Guest memory in MiB, at least 1.
    #[serde(deserialize_with = "mem_size_mib")]
    pub mem_size_mib: u64,
}

/// `PUT /boot-source` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel image on the host: ELF vmlinux or bzImage.
    #[serde(deserialize_with = "host_path")]
    pub kernel_image_path: PathBuf,
    /// Initrd / initramfs on the host.
    #[serde(default, deserialize_with = "opt_host_path")]
    pub initrd_path: Option<PathBuf>,
    /// Extra kernel command-line options.
    #[serde(default)]
    pub boot_args: Option<String>,
}

/// `PUT /drives/{drive_id}` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id; must equal the one in the path.
    pub drive_id: Id,
    /// Host file backing the disk.
    #[serde(deserialize_with = "host_path")]
    pub path_on_host: PathBuf,
    /// The guest may only read it (default false).
    #[serde(default)]
    pub is_read_only: bool,
    /// The guest's root filesystem is on it (default false).
    #[serde(default)]
    pub is_root_device: bool,
}

impl From<&Drive> for DiskConfig {
    fn from(d: &Drive) -> Self {
        DiskConfig {
            path: d.path_on_host.clone(),
            read_only: d.is_read_only,
        }
    }
}

/// `PUT /network-interfaces/{iface_id}` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id; must equal the one in the path.
    pub iface_id: Id,
    /// Name of the host TAP device.
    #[serde(deserialize_with = "tap_name")]
    pub host_dev_name: String,
    /// The guest's MAC address; hvlite picks a stable one when absent.
    #[serde(default)]
    pub guest_mac: Option<Mac>,
}

impl From<&NetworkInterface> for NetConfig {
    fn from(n: &NetworkInterface) -> Self {
        NetConfig {
            tap: n.host_dev_name.clone(),
            mac: n.guest_mac.map(|m| m.0),
        }
    }
}

/// `PUT /vsock` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    /// The guest's context id, 3 to 2^32 - 2.
    #[serde(deserialize_with = "guest_cid")]
    pub guest_cid: u32,
    /// Host Unix socket that guest connections are forwarded to.
    #[serde(deserialize_with = "host_path")]
    pub uds_path: PathBuf,
}

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

/// A drive or interface id: 1 to [`MAX_ID_LEN`] of `A-Z a-z 0-9 _ -`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Id(String);

impl Id {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Id {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.is_empty() || s.len() > MAX_ID_LEN {
            return Err(format!("id {s:?} must have 1 to {MAX_ID_LEN} characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "id {s:?} may only contain letters, digits, '_' and '-'"
            ));
        }
        Ok(Self(s))
    }
}

impl From<Id> for String {
    fn from(id: Id) -> Self {
        id.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unicast MAC address, `"02:00:00:00:00:01"` in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl TryFrom<String> for Mac {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        parse_mac(&s).map(Mac).map_err(|e| e.to_string())
    }
}

impl From<Mac> for String {
    fn from(mac: Mac) -> Self {
        format_mac(&mac.0)
    }
}

/// An unsigned integer in `min..=max`, described as `what` when it is not.
fn ranged<'de, D: Deserializer<'de>>(
    d: D,
    min: u64,
    max: u64,
    what: &str,
) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        let expected = format!("{what} from {min} to {max}");
        Err(de::Error::invalid_value(
            Unexpected::Unsigned(n),
            &expected.as_str(),
        ))
    }
}

fn vcpu_count<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = ranged(d, 1, MAX_CPUS.into(), "a vCPU count")?;
    u8::try_from(n).map_err(de::Error::custom)
}

fn mem_size_mib<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, 1, u64::MAX, "a memory size in MiB")
}

fn guest_cid<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = ranged(
        d,
        MIN_GUEST_CID.into(),
        u64::from(u32::MAX) - 1,
        "a guest CID",
    )?;
    u32::try_from(n).map_err(de::Error::custom)
}

/// A non-empty string.
fn non_empty<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        let expected = format!("a non-empty {what}");
        return Err(de::Error::invalid_value(
            Unexpected::Str(&s),
            &expected.as_str(),
        ));
    }
    Ok(s)
}

fn host_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    non_empty(d, "host path").map(PathBuf::from)
}

fn opt_host_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    struct P(#[serde(deserialize_with = "host_path")] PathBuf);
    Ok(Option::<P>::deserialize(d)?.map(|p| p.0))
}

/// Linux interface names have at most 15 bytes (IFNAMSIZ - 1).
fn tap_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = non_empty(d, "TAP device name")?;
    if s.len() > 15 || s.contains(['/', '\0']) || s.chars().any(char::is_whitespace) {
        let expected = "a Linux interface name (at most 15 bytes, no '/' or spaces)";
        return Err(de::Error::invalid_value(Unexpected::Str(&s), &expected));
    }
    Ok(s)
}
