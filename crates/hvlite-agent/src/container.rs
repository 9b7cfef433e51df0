//! The container's root file system: which mounts the agent makes ([`plan`], pure and
//! unit-tested) and making them ([`execute`]).
//!
//! The agent disk (the VM's root, read-only) must have the directories
//! [`hvlite_protocol::agent::AGENT_DISK_DIRS`].
//! Overlay mode mounts the container image read-only at `/lower` (with `noload` if its
//! journal needs a recovery that a read-only device cannot take), a tmpfs at `/run` holding
//! the overlay's `upper` and `work` directories, and the overlay at [`NEWROOT`]; read-write
//! mode mounts the image at [`NEWROOT`] directly. Then, inside [`NEWROOT`]: proc, sysfs,
//! devtmpfs on `/dev` (or a bind mount of the agent's `/dev`), devpts on `/dev/pts` (best
//! effort), tmpfs on `/dev/shm` and `/tmp`, and the `/dev/fd`, `/dev/stdin`, `/dev/stdout`,
//! `/dev/stderr` symlinks. Missing mount points inside [`NEWROOT`] are created.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use hvlite_protocol::agent::protocol::{ContainerSetup, MountSpec};

use crate::cmdline::{AgentOptions, RootMode, Volume};
use crate::sys;
use hvlite_protocol::agent::VIRTIOFS_ROOT_PREFIX;

/// Where the container's root is assembled; the process is chrooted there.
pub const NEWROOT: &str = "/newroot";

const LOWER: &str = "/lower";
const RUN: &str = "/run";
const UPPER: &str = "/run/upper";
const WORK: &str = "/run/work";

/// One mount(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub flags: libc::c_ulong,
    pub data: Option<String>,
}

impl Mount {
    fn new(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> Self {
        Self {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            flags,
            data: None,
        }
    }

    fn with_data(mut self, data: &str) -> Self {
        self.data = Some(data.into());
        self
    }
}

/// One step of the set-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Mount; the target directory is created if missing.
    Mount(Mount),
    /// Try the first mount; if it fails, the second.
    MountOr(Mount, Mount),
    /// Mount if possible; a failure is only printed on the console.
    TryMount(Mount),
    /// Create a directory (and its parents) with this mode, if missing.
    Mkdir(String, u32),
    /// Create `link` pointing to `target`, unless something named `link` exists.
    Symlink { target: String, link: String },
    /// A mount(2) on an existing mount point (no directory is created).
    Remount(Mount),
}

const HARDENED: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// The steps that build the container's root for `opts`. `base` is prepended to every path
/// of the agent disk (`""` in the VM; a scratch directory in tests).
pub fn plan(opts: &AgentOptions, base: &str) -> Vec<Step> {
    let at = |path: &str| format!("{base}{path}");
    let inside = |path: &str| format!("{base}{NEWROOT}{path}");
    let (lower, upper, work) = (at(LOWER), at(UPPER), at(WORK));
    // A virtio-fs root (`virtiofs:TAG`) is mounted by tag; a device holds ext4.
    let (root, fstype) = match opts.root.strip_prefix(VIRTIOFS_ROOT_PREFIX) {
        Some(tag) => (tag, "virtiofs"),
        None => (opts.root.as_str(), "ext4"),
    };
    let lower_mount = match fstype {
        "ext4" => Step::MountOr(
            // A journal that needs recovery cannot be replayed on a read-only device: then
            // the image is mounted without replaying it (as it was at its last commit).
            Mount::new(root, &lower, fstype, libc::MS_RDONLY),
            Mount::new(root, &lower, fstype, libc::MS_RDONLY).with_data("noload"),
        ),
        _ => Step::Mount(Mount::new(root, &lower, fstype, libc::MS_RDONLY)),
    };
    let mut steps = match opts.mode {
        RootMode::Overlay => vec![
            lower_mount,
            Step::Mount(
                Mount::new("tmpfs", &at(RUN), "tmpfs", libc::MS_NOSUID | libc::MS_NODEV)
                    .with_data("mode=0755"),
            ),
            Step::Mkdir(upper.clone(), 0o755),
            Step::Mkdir(work.clone(), 0o755),
            Step::Mount(
                Mount::new("overlay", &at(NEWROOT), "overlay", 0)
                    .with_data(&format!("lowerdir={lower},upperdir={upper},workdir={work}")),
            ),
        ],
        RootMode::ReadWrite => vec![Step::Mount(Mount::new(root, &at(NEWROOT), fstype, 0))],
    };
    let dev = inside("/dev");
    steps.extend([
        Step::Mount(Mount::new("proc", &inside("/proc"), "proc", HARDENED)),
        Step::Mount(Mount::new("sysfs", &inside("/sys"), "sysfs", HARDENED)),
        Step::MountOr(
            Mount::new("devtmpfs", &dev, "devtmpfs", libc::MS_NOSUID),
            Mount::new("/dev", &dev, "", libc::MS_BIND | libc::MS_REC),
        ),
        Step::TryMount(
            Mount::new(
                "devpts",
                &inside("/dev/pts"),
                "devpts",
                libc::MS_NOSUID | libc::MS_NOEXEC,
            )
            .with_data("mode=0620,ptmxmode=0666,gid=5"),
        ),
        Step::Mount(
            Mount::new(
                "tmpfs",
                &inside("/dev/shm"),
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV,
            )
            .with_data("mode=1777"),
        ),
        Step::Mount(
            Mount::new(
                "tmpfs",
                &inside("/tmp"),
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV,
            )
            .with_data("mode=1777"),
        ),
    ]);
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: target.into(),
            link: format!("{dev}/{link}"),
        });
    }
    steps
}

/// The steps that mount the virtio-fs `volumes` inside the container's root (after
/// [`plan`]'s); `base` as for [`plan`].
pub fn volume_steps(volumes: &[Volume], base: &str) -> Vec<Step> {
    volumes
        .iter()
        .map(|v| {
            let flags = if v.read_only { libc::MS_RDONLY } else { 0 };
            let target = format!("{base}{NEWROOT}{}", v.target);
            Step::Mount(Mount::new(
                &v.tag,
                &target,
                "virtiofs",
                flags | libc::MS_NOSUID,
            ))
        })
        .collect()
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// Makes sure `path` is a directory (creating it and its parents if missing). A symlink or
/// another file is refused: a mount there could land outside the container's root.
fn ensure_dir(path: &str, mode: u32) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!("{path} exists and is not a directory")),
        Err(_) => fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
            .map_err(|e| format!("creating {path}: {e}")),
    }
}

fn mount(m: &Mount) -> Result<(), String> {
    ensure_dir(&m.target, 0o755)?;
    mount_here(m)
}

/// mount(2) on a target that exists.
fn mount_here(m: &Mount) -> Result<(), String> {
    let data = m.data.as_deref().map(cstring).transpose()?;
    sys::mount(
        &cstring(&m.source)?,
        &cstring(&m.target)?,
        &cstring(&m.fstype)?,
        m.flags,
        data.as_deref(),
    )
    .map_err(|e| describe(m, &e))
}

fn describe(m: &Mount, e: &std::io::Error) -> String {
    if m.flags & libc::MS_REMOUNT != 0 {
        return format!("remounting {}: {e}", m.target);
    }
    let fstype = if m.fstype.is_empty() {
        "bind"
    } else {
        &m.fstype
    };
    format!("mounting {} ({fstype}) on {}: {e}", m.source, m.target)
}

fn symlink(target: &str, link: &str) -> Result<(), String> {
    if fs::symlink_metadata(link).is_ok() {
        return Ok(());
    }
    std::os::unix::fs::symlink(target, link).map_err(|e| format!("creating {link}: {e}"))
}

/// Runs `steps` in order; stops at the first failure. Failures of optional steps are handed
/// to `warn`.
pub fn execute(steps: &[Step], mut warn: impl FnMut(&str)) -> Result<(), String> {
    for step in steps {
        match step {
            Step::Mount(m) => mount(m)?,
            Step::MountOr(first, second) => {
                if let Err(e1) = mount(first) {
                    mount(second).map_err(|e2| format!("{e1}; then {e2}"))?;
                }
            }
            Step::TryMount(m) => {
                if let Err(e) = mount(m) {
                    warn(&e);
                }
            }
            Step::Mkdir(path, mode) => ensure_dir(path, *mode)?,
            Step::Symlink { target, link } => symlink(target, link)?,
            Step::Remount(m) => mount_here(m)?,
        }
    }
    Ok(())
}

/// Mount flags of OCI mount options; the other options are file system data.
fn mount_option(o: &str) -> Option<(libc::c_ulong, bool)> {
    // (flag, set): `set` false clears it (`rw`, `suid`...).
    Some(match o {
        "ro" => (libc::MS_RDONLY, true),
        "rw" => (libc::MS_RDONLY, false),
        "nosuid" => (libc::MS_NOSUID, true),
        "suid" => (libc::MS_NOSUID, false),
        "nodev" => (libc::MS_NODEV, true),
        "dev" => (libc::MS_NODEV, false),
        "noexec" => (libc::MS_NOEXEC, true),
        "exec" => (libc::MS_NOEXEC, false),
        "sync" => (libc::MS_SYNCHRONOUS, true),
        "async" => (libc::MS_SYNCHRONOUS, false),
        "noatime" => (libc::MS_NOATIME, true),
        "nodiratime" => (libc::MS_NODIRATIME, true),
        "relatime" => (libc::MS_RELATIME, true),
        "strictatime" => (libc::MS_STRICTATIME, true),
        "mand" => (libc::MS_MANDLOCK, true),
        "nomand" => (libc::MS_MANDLOCK, false),
        // Propagation and the like mean nothing for a mount of its own in the guest.
        "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "defaults" => {
            (0, true)
        }
        _ => return None,
    })
}

/// The mount(2) call for an OCI mount of a kernel file system inside `root`.
pub fn spec_mount(m: &MountSpec, root: &str) -> Mount {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in &m.options {
        match mount_option(o) {
            Some((flag, true)) => flags |= flag,
            Some((flag, false)) => flags &= !flag,
            // devpts's `newinstance` is what every devpts mount is now; runc's `tmpcopyup`
            // (copy the image's files into the tmpfs) is not done.
            None if matches!(o.as_str(), "newinstance" | "tmpcopyup" | "notmpcopyup") => {}
            None => data.push(o.as_str()),
        }
    }
    let source = if m.source.is_empty() {
        &m.typ
    } else {
        &m.source
    };
    let mount = Mount::new(source, &format!("{root}{}", m.destination), &m.typ, flags);
    if data.is_empty() {
        mount
    } else {
        mount.with_data(&data.join(","))
    }
}

/// The steps for a spec's container-wide mounts inside `root`: `/dev` keeps the guest's
/// devtmpfs (a tmpfs there would hide the devices); mqueue and cgroup mounts are best
/// effort (the guest kernel may not have them); the root is made read-only last.
pub fn setup_plan(setup: &ContainerSetup, root: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for m in &setup.mounts {
        if m.destination == "/dev" {
            continue;
        }
        let mount = spec_mount(m, root);
        if matches!(m.typ.as_str(), "mqueue" | "cgroup" | "cgroup2") {
            steps.push(Step::TryMount(mount));
        } else {
            steps.push(Step::Mount(mount));
        }
    }
    if setup.readonly_root {
        steps.push(Step::Remount(Mount::new(
            "",
            root,
            "",
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
        )));
    }
    steps
}

/// Applies the container-wide part of the first spec: hostname, mounts, read-only root.
pub fn apply_setup(
    setup: &ContainerSetup,
    root: &str,
    warn: impl FnMut(&str),
) -> Result<(), String> {
    if let Some(h) = &setup.hostname {
        sys::sethostname(h).map_err(|e| format!("sethostname({h:?}): {e}"))?;
    }
    execute(&setup_plan(setup, root), warn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvlite_protocol::agent::AGENT_DISK_DIRS;

    fn targets(steps: &[Step]) -> Vec<&str> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Mount(m) | Step::MountOr(m, _) | Step::TryMount(m) => Some(&*m.target),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn virtiofs_root_and_volumes() {
        let steps = plan(
            &AgentOptions {
                root: "virtiofs:rootfs".into(),
                mode: RootMode::Overlay,
            },
            "",
        );
        assert_eq!(
            steps[0],
            Step::Mount(Mount::new("rootfs", "/lower", "virtiofs", libc::MS_RDONLY))
        );
        let v = [Volume {
            tag: "v0".into(),
            target: "/data".into(),
            read_only: true,
        }];
        let steps = volume_steps(&v, "/b");
        let flags = libc::MS_RDONLY | libc::MS_NOSUID;
        assert_eq!(
            steps,
            [Step::Mount(Mount::new(
                "v0",
                "/b/newroot/data",
                "virtiofs",
                flags
            ))]
        );
    }

    #[test]
    fn overlay_plan() {
        let steps = plan(
            &AgentOptions {
                root: "/dev/vdb".into(),
                mode: RootMode::Overlay,
            },
            "",
        );
        let Step::MountOr(lower, lower_noload) = &steps[0] else {
            panic!("{:?}", steps[0])
        };
        assert_eq!(
            *lower,
            Mount::new("/dev/vdb", "/lower", "ext4", libc::MS_RDONLY)
        );
        assert_eq!(lower_noload.data.as_deref(), Some("noload"));
        let Step::Mount(overlay) = &steps[4] else {
            panic!("{:?}", steps[4])
        };
        assert_eq!(overlay.fstype, "overlay");
        assert_eq!(overlay.target, NEWROOT);
        assert_eq!(
            overlay.data.as_deref(),
            Some("lowerdir=/lower,upperdir=/run/upper,workdir=/run/work")
        );
        assert_eq!(
            targets(&steps),
            [
                "/lower",
                "/run",
                "/newroot",
                "/newroot/proc",
                "/newroot/sys",
                "/newroot/dev",
                "/newroot/dev/pts",
                "/newroot/dev/shm",
                "/newroot/tmp"
            ]
        );
        // Every mount point outside the new root is on the agent disk's list.
        for t in targets(&steps) {
            assert!(
                t.starts_with(NEWROOT) || AGENT_DISK_DIRS.contains(&t),
                "{t}"
            );
        }
        assert!(steps.contains(&Step::Symlink {
            target: "/proc/self/fd/2".into(),
            link: "/newroot/dev/stderr".into()
        }));
    }

    #[test]
    fn read_write_plan() {
        let steps = plan(
            &AgentOptions {
                root: "/dev/vdc".into(),
                mode: RootMode::ReadWrite,
            },
            "/base",
        );
        assert_eq!(
            steps[0],
            Step::Mount(Mount::new("/dev/vdc", "/base/newroot", "ext4", 0))
        );
        assert!(
            targets(&steps)
                .iter()
                .all(|t| t.starts_with("/base/newroot"))
        );
        assert!(!targets(&steps).contains(&"/lower"));
        assert_eq!(targets(&steps).len(), 7);
        let Step::MountOr(dev, bind) = &steps[3] else {
            panic!("{:?}", steps[3])
        };
        assert_eq!((&*dev.fstype, &*bind.source), ("devtmpfs", "/dev"));
        assert_eq!(bind.flags, libc::MS_BIND | libc::MS_REC);
    }

    #[test]
    fn spec_mounts_with_their_options() {
        let m = |dest: &str, typ: &str, opts: &[&str]| MountSpec {
            destination: dest.into(),
            typ: typ.into(),
            source: typ.into(),
            options: opts.iter().map(|s| s.to_string()).collect(),
        };
        let setup = ContainerSetup {
            hostname: None,
            readonly_root: true,
            mounts: vec![
                m("/proc", "proc", &["nosuid", "noexec", "nodev"]),
                m(
                    "/dev",
                    "tmpfs",
                    &["nosuid", "strictatime", "mode=755", "size=65536k"],
                ),
                m(
                    "/dev/pts",
                    "devpts",
                    &[
                        "nosuid",
                        "noexec",
                        "newinstance",
                        "ptmxmode=0666",
                        "mode=0620",
                        "gid=5",
                    ],
                ),
                m("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
                m("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
                m(
                    "/sys/fs/cgroup",
                    "cgroup",
                    &["rprivate", "nosuid", "noexec", "nodev", "relatime", "ro"],
                ),
                m(
                    "/run",
                    "tmpfs",
                    &["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"],
                ),
            ],
        };
        let steps = setup_plan(&setup, "/newroot");
        let mounts: Vec<&Mount> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Mount(m) | Step::TryMount(m) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(mounts.len(), 6, "/dev keeps the devtmpfs: {steps:?}");
        assert_eq!(mounts[0].target, "/newroot/proc");
        assert_eq!(mounts[0].flags, HARDENED);
        assert_eq!(mounts[0].data, None);
        assert_eq!(
            mounts[1].data.as_deref(),
            Some("ptmxmode=0666,mode=0620,gid=5")
        );
        assert_eq!(mounts[2].flags, HARDENED | libc::MS_RDONLY);
        assert!(
            matches!(steps[3], Step::TryMount(_)),
            "mqueue is best effort"
        );
        assert!(
            matches!(steps[4], Step::TryMount(_)),
            "cgroup is best effort"
        );
        assert_eq!(
            mounts[4].flags,
            HARDENED | libc::MS_RDONLY | libc::MS_RELATIME
        );
        // runc's own option is not file system data.
        assert_eq!(mounts[5].data, None);
        assert_eq!(mounts[5].flags, libc::MS_NOSUID | libc::MS_NODEV);
        assert_eq!(
            steps.last(),
            Some(&Step::Remount(Mount::new(
                "",
                "/newroot",
                "",
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY
            )))
        );
    }

    #[test]
    fn directories_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap().to_string();
        let nested = format!("{base}/a/b");
        let link = format!("{base}/link");
        let steps = [
            Step::Mkdir(nested.clone(), 0o751),
            Step::Symlink {
                target: "/proc/self/fd".into(),
                link: link.clone(),
            },
            // Again: both are already there.
            Step::Mkdir(nested.clone(), 0o751),
            Step::Symlink {
                target: "elsewhere".into(),
                link: link.clone(),
            },
        ];
        let mut warnings = Vec::new();
        execute(&steps, |w| warnings.push(w.to_string())).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(
            fs::metadata(&nested).unwrap().permissions().mode() & 0o7777,
            0o751
        );
        assert_eq!(
            fs::read_link(&link).unwrap().to_str(),
            Some("/proc/self/fd")
        );
        // A symlink where a directory is wanted is refused.
        let err = execute(&[Step::Mkdir(link.clone(), 0o755)], |_| {}).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
    }
}
