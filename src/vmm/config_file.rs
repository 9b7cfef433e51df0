//! The JSON config file of `hvlite run --config vm.json`: every command-line option has
//! an equivalent here (with Firecracker's names where it has one), and the command line
//! overrides the file.
//!
//! The VM's resources are the schema the API uses too ([`crate::config`]). Unknown fields
//! are errors, and every error names the file and the field's path, e.g.
//! `vm.json: machine-config.vcpu_count: must be between 1 and 32, got 0 (line 3, column
//! 21)`. Values are checked while parsing (a [`FileConfig`] is valid by construction);
//! what needs more than one field (unique ids, one root drive) is checked right after.
//! Relative paths are kept as written: like the command line's, they are relative to the
//! working directory.
//! `examples/vm.json` shows every field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::resources::{self, ListError};
pub use crate::config::resources::{Logger, MetricsConfig};
use crate::config::{
    BootSource, DiskConfig, Drive, EnvVar, HostPath, MachineConfig, MemSizeMib, NetConfig,
    NetworkInterface, VcpuCount, VmConfig, Vsock, VsockConfig,
};

/// Errors loading a config file or building a [`VmConfig`] from it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// A bad value, unknown field or syntax error at `path` (empty for the top level);
    /// `msg` ends with the line and column when known.
    #[error("{file}: {}{msg}", path_prefix(.path))]
    Invalid {
        file: String,
        path: String,
        msg: String,
    },
    #[error("no kernel: give --kernel or boot-source.kernel_image_path in the config file")]
    NoKernel,
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// A whole config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(rename = "boot-source", skip_serializing_if = "Option::is_none")]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config", skip_serializing_if = "Option::is_none")]
    pub machine_config: Option<MachineConfig>,
    /// Disks, in order: the first is /dev/vda in the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<Drive>,
    /// Network interfaces, in order: the first is eth0 in the guest.
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// A virtio-rng device (`--entropy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<crate::config::Entropy>,
    /// A virtio-balloon device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon: Option<crate::config::Balloon>,
    /// Shared host directories (virtio-fs, `--fs`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<crate::config::FsDevice>,
    /// The command the guest init runs, and how.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// The guest's root filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<HostPath>,
    /// Show the guest kernel's console on stderr in a container run (`--console`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub console: bool,
    /// Restore the container VM's template instead of booting (default true);
    /// `false` is `--no-template`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// Seccomp filtering: 0 off, 2 a per-thread allow-list (`--seccomp-level`, default 2).
    #[serde(rename = "seccomp-level", skip_serializing_if = "Option::is_none")]
    pub seccomp_level: Option<crate::seccomp::SeccompLevel>,
    /// A snapshot to restore instead of booting (the body of `PUT /snapshot/load`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<crate::api::model::SnapshotLoadParams>,
}

/// `process`: the command the guest init runs (`-- COMMAND ARGS...`) and its context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// The command and its arguments; not empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Working directory in the guest; absolute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// Forward hvlite's stdin to the process (`-i`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
}

/// `process.user`: whom the command runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// What the command line gave; `None` or empty means "not given", so the file's value
/// (or hvlite's default) applies. A non-empty list replaces the file's list whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CliOverrides {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub cpus: Option<u8>,
    pub memory_mib: Option<u64>,
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    pub vsock: Option<VsockConfig>,
    /// `--entropy`: a virtio-rng device (the file's rate limits, if any, stay).
    pub entropy: bool,
    /// `--fs`: shared directories (replace the file's list).
    pub shares: Vec<crate::config::FsConfig>,
    pub command: Vec<String>,
}

/// Reads and checks the config file at `path`.
pub fn load(path: &Path) -> Result<FileConfig, ConfigFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigFileError::Read(path.to_path_buf(), e))?;
    FileConfig::parse(&text, &path.display().to_string())
}

impl FileConfig {
    /// Parses and checks `text`; errors name `source` (a file name, "request body", ...).
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigFileError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let cfg: Self = serde_path_to_error::deserialize(&mut *de)
            .map_err(|e| parse_error(e.path().to_string(), e.into_inner(), source))?;
        de.end()
            .map_err(|e| parse_error(String::new(), e, source))?;
        cfg.check()
            .map_err(|(path, msg)| ConfigFileError::Invalid {
                file: source.to_string(),
                path,
                msg,
            })?;
        Ok(cfg)
    }

    /// The file's JSON, pretty-printed; [`FileConfig::parse`] gives back an equal value.
    pub fn to_json_pretty(&self) -> String {
        // Every field serializes: string keys, plain values.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks what spans several fields; returns the path and the complaint.
    fn check(&self) -> Result<(), (String, String)> {
        let at = |list: &str, field: &str, (i, e): (usize, ListError)| {
            let field = match e {
                ListError::SecondRoot(_) => "is_root_device",
                ListError::DuplicateId(_) => field,
            };
            (format!("{list}[{i}].{field}"), e.to_string())
        };
        resources::check_drives(&self.drives).map_err(|e| at("drives", "drive_id", e))?;
        resources::check_interfaces(&self.network_interfaces)
            .map_err(|e| at("network-interfaces", "iface_id", e))?;
        let mut tags = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for (i, f) in self.fs.iter().enumerate() {
            if !ids.insert(f.fs_id.as_str()) {
                return Err((
                    format!("fs[{i}].fs_id"),
                    format!("duplicate id {:?}", f.fs_id.as_str()),
                ));
            }
            if !tags.insert(String::from(f.tag.clone())) {
                return Err((format!("fs[{i}].tag"), "another share has this tag".into()));
            }
        }
        if let Some(p) = &self.process {
            if p.args.as_ref().is_some_and(Vec::is_empty) {
                return Err(("process.args".into(), "must not be empty".into()));
            }
            if p.cwd.as_ref().is_some_and(|c| !c.is_absolute()) {
                return Err(("process.cwd".into(), "must be an absolute path".into()));
            }
        }
        Ok(())
    }

    /// The VM this file describes, with `cli`'s values taking precedence.
    pub fn to_vm_config(&self, cli: CliOverrides) -> Result<VmConfig, ConfigFileError> {
        let (kernel, cfg) = self.to_partial_vm_config(cli);
        let kernel = kernel.ok_or(ConfigFileError::NoKernel)?;
        Ok(VmConfig { kernel, ..cfg })
    }

    /// Like [`Self::to_vm_config`], but the kernel may be missing (an API-driven start
    /// sets it later): returns it apart; the config's own `kernel` is then empty.
    pub fn to_partial_vm_config(
        &self,
        cli: CliOverrides,
    ) -> (Option<std::path::PathBuf>, VmConfig) {
        let boot = self.boot_source.clone().unwrap_or_default();
        let machine = self.machine_config.clone().unwrap_or_default();
        let kernel = cli.kernel.or(boot.kernel_image_path.map(PathBuf::from));
        let mut cfg = VmConfig::new(kernel.clone().unwrap_or_default());
        cfg.initrd = cli.initrd.or(boot.initrd_path.map(PathBuf::from));
        cfg.cmdline = cli.cmdline.or(boot.boot_args);
        if let Some(n) = cli.cpus.or(machine.vcpu_count.map(VcpuCount::get)) {
            cfg.cpus = n;
        }
        if let Some(m) = cli.memory_mib.or(machine.mem_size_mib.map(MemSizeMib::get)) {
            cfg.memory_mib = m;
        }
        cfg.track_dirty_pages = machine.track_dirty_pages.unwrap_or(false);
        if cli.disks.is_empty() {
            cfg.set_disks(self.drives.iter().map(Drive::to_disk).collect());
        } else {
            cfg.disks = cli.disks;
        }
        if cli.nets.is_empty() {
            let nets = self.network_interfaces.iter().map(NetworkInterface::to_net);
            (cfg.net_ids, cfg.nets) = nets.unzip();
        } else {
            cfg.nets = cli.nets;
        }
        cfg.vsock = cli
            .vsock
            .or_else(|| self.vsock.as_ref().map(VsockConfig::from));
        cfg.entropy = match (&self.entropy, cli.entropy) {
            (Some(e), _) => Some(e.into()),
            (None, true) => Some(Default::default()),
            (None, false) => None,
        };
        cfg.balloon = self.balloon;
        if cli.shares.is_empty() {
            (cfg.share_ids, cfg.shares) = self.fs.iter().map(|f| f.to_share()).unzip();
        } else {
            cfg.shares = cli.shares;
        }
        cfg.command = if cli.command.is_empty() {
            self.process.as_ref().and_then(|p| p.args.clone())
        } else {
            Some(cli.command)
        };
        (kernel, cfg)
    }
}

/// Turns a parse error into one naming `source` and the field's path, with the line and
/// column at the end instead of serde_json's "at line L column C".
fn parse_error(path: String, inner: serde_json::Error, source: &str) -> ConfigFileError {
    let text = inner.to_string();
    let suffix = format!(" at line {} column {}", inner.line(), inner.column());
    let msg = match text.strip_suffix(&suffix) {
        Some(m) if inner.line() > 0 => {
            format!("{m} (line {}, column {})", inner.line(), inner.column())
        }
        _ => text,
    };
    ConfigFileError::Invalid {
        file: source.to_string(),
        // serde_path_to_error writes "." for the top level and "?" where it has no key.
        path: if path == "." || path == "?" {
            String::new()
        } else {
            path
        },
        msg,
    }
}

#[cfg(test)]
#[path = "config_file_tests.rs"]
mod tests;
