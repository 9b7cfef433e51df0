//! `linux.cgroupsPath`: the container's VMM process (the monitor) goes into the cgroup the
//! engine named, in every hierarchy the host mounts under `/sys/fs/cgroup` (v1 controllers
//! and the unified v2 one, or v2 alone). The namespaces and cgroups of a spec apply to the
//! VM as a whole: the guest has its own.
//!
//! Two forms, as runc takes them: a path (`/libpod_parent/libpod-ID`, cgroupfs) and
//! systemd's `slice:prefix:name` (`machine.slice:libpod:ID` is
//! `/machine.slice/libpod-ID.scope`; a slice `a-b.slice` nests as `a.slice/a-b.slice`).
//! The directories are made here (no systemd is asked) and removed by `delete`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Why the monitor could not join its cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroupsPath {0:?}: {1}")]
    Path(String, &'static str),
    #[error("cannot create or join the cgroup {0}")]
    Join(PathBuf, #[source] io::Error),
}

/// The cgroup path (relative to a hierarchy's root) of a spec's `cgroupsPath`.
pub fn relative_path(spec: &str) -> Result<PathBuf, CgroupError> {
    let bad = |why| CgroupError::Path(spec.into(), why);
    if spec.split('/').any(|c| c == "..") {
        return Err(bad("must not contain .."));
    }
    if spec.starts_with('/') || !spec.contains(':') {
        return Ok(PathBuf::from(spec.trim_start_matches('/')));
    }
    let mut parts = spec.splitn(3, ':');
    let (slice, prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(p), Some(n)) if !n.is_empty() && !n.contains('/') => (s, p, n),
        _ => return Err(bad("the systemd form is slice:prefix:name")),
    };
    let mut path = PathBuf::new();
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    if slice != "-.slice" {
        let stem = slice
            .strip_suffix(".slice")
            .ok_or_else(|| bad("the slice must end in .slice"))?;
        // a-b-c.slice lives in a.slice/a-b.slice/a-b-c.slice.
        let words: Vec<&str> = stem.split('-').collect();
        for i in 1..=words.len() {
            path.push(format!("{}.slice", words[..i].join("-")));
        }
    }
    let unit = if name.ends_with(".slice") || name.ends_with(".scope") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Ok(path)
}

/// The hierarchies mounted under [`CGROUP_ROOT`] (`root` in tests): each v1 controller's
/// directory and the unified one, or the root itself when it is v2.
fn hierarchies(root: &Path) -> Vec<PathBuf> {
    if root.join("cgroup.controllers").exists() {
        return vec![root.into()];
    }
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    out.sort();
    out
}

/// cpuset (v1) refuses tasks while its cpus and mems are empty: copies the parent's.
fn inherit_cpuset(dir: &Path) {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let here = dir.join(file);
        let empty = fs::read_to_string(&here).is_ok_and(|v| v.trim().is_empty());
        if empty
            && let Some(parent) = dir.parent()
            && let Ok(v) = fs::read_to_string(parent.join(file))
        {
            let _ = fs::write(&here, v.trim());
        }
    }
}

/// Puts process `pid` into `relative` in every hierarchy under `root`; returns the
/// directories (for [`remove`]).
pub fn join(root: &Path, relative: &Path, pid: u32) -> Result<Vec<PathBuf>, CgroupError> {
    let mut dirs = Vec::new();
    for h in hierarchies(root) {
        let dir = h.join(relative);
        fs::create_dir_all(&dir).map_err(|e| CgroupError::Join(dir.clone(), e))?;
        // Every level below the hierarchy's root, outermost first.
        let mut level = h.clone();
        for c in relative.components() {
            level.push(c);
            inherit_cpuset(&level);
        }
        fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| CgroupError::Join(dir.clone(), e))?;
        dirs.push(dir);
    }
    Ok(dirs)
}

/// [`join`] on this host's hierarchies.
pub fn join_host(spec: &str, pid: u32) -> Result<Vec<PathBuf>, CgroupError> {
    join(Path::new(CGROUP_ROOT), &relative_path(spec)?, pid)
}

/// Removes the container's cgroup directories once its processes are gone (best effort:
/// the parents the engine may share are left).
pub fn remove(spec: &str) {
    let Ok(rel) = relative_path(spec) else { return };
    for h in hierarchies(Path::new(CGROUP_ROOT)) {
        let _ = fs::remove_dir(h.join(&rel));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms() {
        let p = |s: &str| relative_path(s).unwrap();
        assert_eq!(
            p("/libpod_parent/libpod-abc"),
            Path::new("libpod_parent/libpod-abc")
        );
        assert_eq!(p("plain"), Path::new("plain"));
        assert_eq!(
            p("machine.slice:libpod:abc"),
            Path::new("machine.slice/libpod-abc.scope")
        );
        assert_eq!(
            p("user-1000.slice:podman:x"),
            Path::new("user.slice/user-1000.slice/podman-x.scope")
        );
        assert_eq!(p(":crio:y"), Path::new("system.slice/crio-y.scope"));
        assert_eq!(p("-.slice::z"), Path::new("z.scope"));
        for bad in ["/a/../b", "a.slice:b", "nota:b:c", "a.slice:b:c/d"] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn joins_every_hierarchy_with_cpuset_inherited() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for h in ["cpuset", "memory"] {
            fs::create_dir(root.join(h)).unwrap();
            fs::write(root.join(h).join("cgroup.procs"), "").unwrap();
        }
        fs::write(root.join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        fs::write(root.join("cpuset/cpuset.mems"), "0\n").unwrap();
        // A plain directory tree has no cpuset files of its own: make them as the kernel
        // would, empty.
        fs::create_dir_all(root.join("cpuset/a/b")).unwrap();
        for d in ["cpuset/a", "cpuset/a/b"] {
            fs::write(root.join(d).join("cpuset.cpus"), "").unwrap();
            fs::write(root.join(d).join("cpuset.mems"), "").unwrap();
        }
        let dirs = join(root, Path::new("a/b"), 42).unwrap();
        assert_eq!(dirs, [root.join("cpuset/a/b"), root.join("memory/a/b")]);
        for d in &dirs {
            assert_eq!(fs::read_to_string(d.join("cgroup.procs")).unwrap(), "42");
        }
        assert_eq!(
            fs::read_to_string(root.join("cpuset/a/b/cpuset.cpus")).unwrap(),
            "0-1"
        );
        assert_eq!(
            fs::read_to_string(root.join("cpuset/a/cpuset.mems")).unwrap(),
            "0"
        );
    }
}
