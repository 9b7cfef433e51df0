//! Reading and checking an OCI bundle (`DIR/config.json` + the root it names).
//!
//! Everything here runs before anything is created on disk: a refused bundle leaves
//! nothing behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::container::shares::Volume;

use crate::agent::protocol::{
    Capabilities, ContainerSetup, GUEST_MOUNT_TYPES, MountSpec, ProcessSpec, Rlimit, User,
    WindowSize,
};

/// The annotation that sets the VM's vCPUs.
pub const ANNOTATION_VCPUS: &str = "io.hvlite.vcpus";
/// The annotation that sets the VM's memory in MiB.
pub const ANNOTATION_MEMORY: &str = "io.hvlite.memory_mib";

/// Directories the agent mounts itself, so a bind mount there is served by the guest's own.
const GUEST_DIRS: [&str; 1] = ["/dev/shm"];

/// A bundle that passed the checks: what the runtime needs of it.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The bundle directory, absolute.
    pub dir: PathBuf,
    /// The container's root directory, absolute.
    pub root: PathBuf,
    /// `root.readonly` (applied by the agent, in `process.container`).
    pub readonly_root: bool,
    /// `linux.cgroupsPath`: the VMM process goes there.
    pub cgroups_path: Option<String>,
    /// The process, in the agent's terms.
    pub process: ProcessSpec,
    /// `process.terminal`.
    pub terminal: bool,
    /// Host files bind-mounted at guest paths (copied into the container's image).
    pub files: Vec<(PathBuf, String)>,
    /// Host directories bind-mounted at guest paths (virtio-fs shares).
    pub volumes: Vec<Volume>,
    /// The spec's annotations.
    pub annotations: HashMap<String, String>,
    /// vCPUs from `io.hvlite.vcpus`.
    pub vcpus: Option<u8>,
    /// Memory from `io.hvlite.memory_mib`.
    pub memory_mib: Option<u64>,
    /// The engine's network namespace (`linux.namespaces`, type network, with a path).
    pub netns: Option<PathBuf>,
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {0}: no such directory")]
    NoDir(PathBuf),
    #[error("bundle {0}: config.json is missing")]
    NoConfig(PathBuf),
    #[error("bundle {0}: config.json is not a valid OCI runtime spec: {1}")]
    BadConfig(PathBuf, String),
    #[error("unsupported ociVersion {0:?}: hvlite-runtime supports 1.x")]
    Version(String),
    #[error("config.json has no root")]
    NoRoot,
    #[error("root.path {0}: not a directory")]
    MissingRoot(PathBuf),
    #[error("config.json has no process")]
    NoProcess,
    #[error("process.args is empty")]
    NoArgs,
    #[error("process.cwd {0:?} is not an absolute path")]
    Cwd(String),
    #[error("annotation {0}: {1:?} is not {2}")]
    Annotation(&'static str, String, &'static str),
    #[error("mount at {0}: {1}")]
    Mount(String, String),
    #[error("process: {0}")]
    Process(String),
}

/// Reads and checks the bundle in `dir`.
pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
    let dir = std::path::absolute(dir).map_err(|_| BundleError::NoDir(dir.into()))?;
    if !dir.is_dir() {
        return Err(BundleError::NoDir(dir));
    }
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(BundleError::NoConfig(dir));
    }
    let spec =
        Spec::load(&config).map_err(|e| BundleError::BadConfig(dir.clone(), e.to_string()))?;
    check(&dir, &spec)
}

/// Checks a parsed spec of the bundle in `dir` (absolute).
pub fn check(dir: &Path, spec: &Spec) -> Result<Bundle, BundleError> {
    let version = spec.version();
    if !version.starts_with("1.") {
        return Err(BundleError::Version(version.clone()));
    }
    let root = spec.root().as_ref().ok_or(BundleError::NoRoot)?;
    let root_path = dir.join(root.path());
    if !root_path.is_dir() {
        return Err(BundleError::MissingRoot(root_path));
    }
    let process = spec.process().as_ref().ok_or(BundleError::NoProcess)?;
    let mut process_spec = process_spec(process)?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    let vcpus = annotation(
        &annotations,
        ANNOTATION_VCPUS,
        "a vCPU count from 1 to 32",
        |v| v.parse::<u8>().ok().filter(|n| (1..=32).contains(n)),
    )?;
    let memory_mib = annotation(
        &annotations,
        ANNOTATION_MEMORY,
        "a size in MiB from 64 to 65536",
        |v| v.parse::<u64>().ok().filter(|n| (64..=65536).contains(n)),
    )?;
    let Mounts {
        files,
        volumes,
        guest: guest_mounts,
    } = bind_mounts(spec)?;
    let readonly_root = root.readonly().unwrap_or(false);
    process_spec.container = Some(Box::new(ContainerSetup {
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        readonly_root,
        mounts: guest_mounts,
    }));
    process_spec
        .validate()
        .map_err(|e| BundleError::Process(e.to_string()))?;
    let cgroups_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty());
    Ok(Bundle {
        dir: dir.into(),
        root: root_path,
        readonly_root,
        process: process_spec,
        cgroups_path,
        terminal: process.terminal().unwrap_or(false),
        files,
        volumes,
        annotations,
        vcpus,
        memory_mib,
        netns: super::network::netns_path(spec),
    })
}

/// The agent's process spec for an OCI `process` (config.json's, or `exec --process`'s).
pub fn process_spec(process: &oci_spec::runtime::Process) -> Result<ProcessSpec, BundleError> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(BundleError::NoArgs);
    }
    let cwd = process.cwd().to_string_lossy().into_owned();
    if !cwd.starts_with('/') {
        return Err(BundleError::Cwd(cwd));
    }
    let user = process.user();
    let terminal = process.terminal().unwrap_or(false);
    Ok(ProcessSpec {
        args,
        env: process.env().clone().unwrap_or_default(),
        cwd,
        user: User {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
        },
        terminal,
        console_size: process.console_size().map(|b| WindowSize {
            height: u16::try_from(b.height()).unwrap_or(u16::MAX),
            width: u16::try_from(b.width()).unwrap_or(u16::MAX),
        }),
        // The engine's stdin (conmon's pipe or /dev/null) is always forwarded.
        stdin: true,
        rlimits: process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| Rlimit {
                typ: r.typ().to_string(),
                hard: r.hard(),
                soft: r.soft(),
            })
            .collect(),
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        capabilities: process.capabilities().as_ref().map(|c| {
            let names = |set: &Option<oci_spec::runtime::Capabilities>| {
                let mut v: Vec<String> = set
                    .iter()
                    .flatten()
                    .filter_map(|cap| serde_json::to_value(cap).ok())
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                v.sort();
                v
            };
            Box::new(Capabilities {
                bounding: names(c.bounding()),
                effective: names(c.effective()),
                permitted: names(c.permitted()),
                inheritable: names(c.inheritable()),
                ambient: names(c.ambient()),
            })
        }),
        container: None,
        guest_sync: None,
    })
}

fn annotation<T>(
    all: &HashMap<String, String>,
    key: &'static str,
    what: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, BundleError> {
    match all.get(key) {
        None => Ok(None),
        Some(v) => parse(v.trim())
            .map(Some)
            .ok_or_else(|| BundleError::Annotation(key, v.clone(), what)),
    }
}

/// The spec's mounts hvlite can give the container; anything else is refused.
struct Mounts {
    /// Bind mounts of host files (copied into a private image).
    files: Vec<(PathBuf, String)>,
    /// Bind mounts of host directories (virtio-fs shares).
    volumes: Vec<Volume>,
    /// Mounts the guest makes itself (proc, tmpfs, ...).
    guest: Vec<MountSpec>,
}

fn bind_mounts(spec: &Spec) -> Result<Mounts, BundleError> {
    let mut files = Vec::new();
    let mut volumes = Vec::new();
    let mut guest = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().to_string_lossy().into_owned();
        let options = m.options().clone().unwrap_or_default();
        let bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        if !bind {
            match m.typ().as_deref() {
                Some(t) if GUEST_MOUNT_TYPES.contains(&t) => {
                    guest.push(MountSpec {
                        destination: dest,
                        typ: t.to_string(),
                        source: m
                            .source()
                            .as_ref()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        options,
                    });
                    continue;
                }
                Some(t) => {
                    return Err(BundleError::Mount(
                        dest,
                        format!("type {t:?} is not supported"),
                    ));
                }
                None => {
                    return Err(BundleError::Mount(
                        dest,
                        "no type and not a bind mount".into(),
                    ));
                }
            }
        }
        if GUEST_DIRS.contains(&dest.as_str()) {
            // podman binds its own tmpfs at /dev/shm: the guest has a private one there.
            log::debug!("bind mount at {dest}: the guest's own is used");
            continue;
        }
        let Some(source) = m.source() else {
            return Err(BundleError::Mount(
                dest,
                "a bind mount without a source".into(),
            ));
        };
        if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
            return Err(BundleError::Mount(
                dest,
                "the destination must be an absolute path without ..".into(),
            ));
        }
        let meta = std::fs::metadata(source).map_err(|e| {
            BundleError::Mount(dest.clone(), format!("source {}: {e}", source.display()))
        })?;
        if meta.is_dir() {
            // A directory is shared through virtio-fs, read-only if the mount says so.
            let read_only = options.iter().any(|o| o == "ro");
            let volume = Volume::new(source.clone(), &dest, read_only)
                .map_err(|e| BundleError::Mount(dest.clone(), e))?;
            volumes.push(volume);
            continue;
        }
        if !meta.is_file() {
            return Err(BundleError::Mount(
                dest,
                format!("source {} is not a regular file", source.display()),
            ));
        }
        files.push((source.clone(), dest));
    }
    Ok(Mounts {
        files,
        volumes,
        guest,
    })
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
