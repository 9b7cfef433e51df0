//! The jail's cgroup: a child of the jailer's own cgroup named `hvlite-<id>`, in the
//! unified (v2) hierarchy when the host has one, else in the v1 `cpu` and `memory`
//! hierarchies, with the CPU bandwidth and memory limits asked for.

use std::fs;
use std::path::{Path, PathBuf};

use super::JailArgs;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Why the cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup v{0} was asked for but this host does not mount it at {CGROUP_ROOT}")]
    Missing(u8),
    #[error("cannot find this process's {0} cgroup in /proc/self/cgroup")]
    OwnCgroup(String),
    #[error("cannot create the cgroup {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("cannot write {1:?} to {0}")]
    Write(PathBuf, String, #[source] std::io::Error),
}

/// The jail's cgroup directories (one for v2; the cpu and memory ones for v1).
pub struct Cgroup {
    pub dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|e| CgroupError::Write(path.to_path_buf(), value.into(), e))
}

/// The cgroup path of this process in the hierarchy whose controller list contains
/// `controller` ("" for the unified hierarchy), from /proc/self/cgroup.
fn own_path(controller: &str) -> Result<String, CgroupError> {
    let text = fs::read_to_string("/proc/self/cgroup")
        .map_err(|_| CgroupError::OwnCgroup(controller.into()))?;
    own_path_in(&text, controller).ok_or_else(|| CgroupError::OwnCgroup(controller.into()))
}

fn own_path_in(text: &str, controller: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.to_string())
    })
}

impl Cgroup {
    /// Creates the cgroup of `args` and sets its limits.
    pub fn create(args: &JailArgs) -> Result<Cgroup, CgroupError> {
        let unified = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
        let version = match args.cgroup_version.as_str() {
            "1" if unified => return Err(CgroupError::Missing(1)),
            "2" if !unified => return Err(CgroupError::Missing(2)),
            "2" => 2,
            "1" => 1,
            _ if unified => 2,
            _ => 1,
        };
        let name = format!("hvlite-{}", args.id);
        let mut dirs = Vec::new();
        if version == 2 {
            let parent = Path::new(CGROUP_ROOT).join(own_path("")?.trim_start_matches('/'));
            // Let the children use the cpu and memory controllers (best effort: a parent
            // with processes in it cannot delegate on some hosts; the limits then fail
            // loudly below).
            let _ = fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory");
            let dir = parent.join(&name);
            fs::create_dir(&dir).map_err(|e| CgroupError::Create(dir.clone(), e))?;
            if let Some(q) = args.cpu_quota_us {
                write(&dir.join("cpu.max"), &format!("{q} {}", args.cpu_period_us))?;
            }
            if let Some(m) = args.memory_limit_mib {
                write(&dir.join("memory.max"), &(m << 20).to_string())?;
            }
            dirs.push(dir);
        } else {
            for controller in ["cpu", "memory"] {
                let mount = Path::new(CGROUP_ROOT).join(controller);
                if !mount.is_dir() {
                    return Err(CgroupError::Missing(1));
                }
                let parent = mount.join(own_path(controller)?.trim_start_matches('/'));
                let dir = parent.join(&name);
                fs::create_dir(&dir).map_err(|e| CgroupError::Create(dir.clone(), e))?;
                if controller == "cpu" {
                    if let Some(q) = args.cpu_quota_us {
                        write(
                            &dir.join("cpu.cfs_period_us"),
                            &args.cpu_period_us.to_string(),
                        )?;
                        write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
                    }
                } else if let Some(m) = args.memory_limit_mib {
                    write(&dir.join("memory.limit_in_bytes"), &(m << 20).to_string())?;
                }
                dirs.push(dir);
            }
        }
        Ok(Cgroup { dirs })
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the cgroup once its processes are gone (best effort).
    pub fn remove(&self) {
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_paths_by_controller() {
        let text = "9:name=systemd:/\n4:memory:/process_api/1bbc\n1:cpu,cpuacct:/a\n0::/u\n";
        assert_eq!(
            own_path_in(text, "memory").as_deref(),
            Some("/process_api/1bbc")
        );
        assert_eq!(own_path_in(text, "cpu").as_deref(), Some("/a"));
        assert_eq!(own_path_in(text, "").as_deref(), Some("/u"));
        assert_eq!(own_path_in(text, "pids"), None);
    }
}
