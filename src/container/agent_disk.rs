//! The agent disk: a tiny read-only ext4 image holding hvlite's guest agent as
//! `/hvlite-init`, plus the empty directories it mounts on. The guest kernel boots with it
//! as its root (`root=/dev/vda ro init=/hvlite-init`); the agent then mounts the
//! container's root from the next disk. Cached under a key derived from the agent binary.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::image::{self, ImageError, TreeSize};
use super::paths;
use super::rootfs::hex;

/// Mount points the agent uses on its (read-only) root.
pub use crate::agent::AGENT_DISK_DIRS as MOUNT_POINTS;
pub use crate::agent::AGENT_INIT_PATH as AGENT_PATH;
/// Version of the disk layout; part of the cache key.
const LAYOUT: &str = "hvlite-agent-disk-v1";

/// Errors building the agent disk.
#[derive(Debug, thiserror::Error)]
pub enum AgentDiskError {
    #[error("cannot read the guest agent {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("the guest agent {0} is not a static executable (build it with scripts/setup.sh)")]
    NotStatic(PathBuf),
    #[error("cannot stage the agent disk in {0}")]
    Stage(PathBuf, #[source] io::Error),
    #[error("cannot build the agent disk")]
    Image(#[source] ImageError),
}

/// Returns the agent disk for the agent binary at `agent`, building it if needed.
pub fn agent_disk(agent: &Path) -> Result<PathBuf, AgentDiskError> {
    let bytes = std::fs::read(agent).map_err(|e| AgentDiskError::Read(agent.into(), e))?;
    if !is_static_elf(&bytes) {
        return Err(AgentDiskError::NotStatic(agent.into()));
    }
    let mut hasher = Sha256::new();
    hasher.update(LAYOUT.as_bytes());
    hasher.update(&bytes);
    let key = hex(&hasher.finalize());
    let dir = paths::cache_dir().join("agent");
    let dest = dir.join(format!("{}.ext4", &key[..32]));
    if dest.is_file() {
        return Ok(dest);
    }
    let stage = dir.join(format!(".stage-{}-{}", &key[..16], std::process::id()));
    let result = stage_tree(&stage, &bytes).and_then(|size| {
        image::build_cached(&stage, &dest, size, true).map_err(AgentDiskError::Image)
    });
    let _ = std::fs::remove_dir_all(&stage);
    result.map(|_| dest)
}

fn stage_tree(stage: &Path, agent: &[u8]) -> Result<TreeSize, AgentDiskError> {
    let err = |e| AgentDiskError::Stage(stage.into(), e);
    let _ = std::fs::remove_dir_all(stage);
    std::fs::create_dir_all(stage).map_err(err)?;
    let mut size = TreeSize::default();
    for d in MOUNT_POINTS {
        std::fs::create_dir(stage.join(d.trim_start_matches('/'))).map_err(err)?;
        size.add(0);
    }
    let bin = stage.join(AGENT_PATH.trim_start_matches('/'));
    std::fs::write(&bin, agent).map_err(err)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    size.add(agent.len() as u64);
    Ok(size)
}

/// Whether `bytes` is an x86-64 ELF executable without a program interpreter (static).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let field = |o: usize, len: usize| bytes.get(o..o.checked_add(len)?);
    let u16_at = |o: usize| field(o, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| field(o, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| {
        field(o, 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // 64-bit, little endian, x86-64.
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) || u16_at(18) != Some(62) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let off = phoff.saturating_add(i.saturating_mul(usize::from(phentsize)));
        u32_at(off).is_some_and(|kind| kind != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_executables_are_not_static() {
        // The test binary itself is dynamically linked (it has PT_INTERP).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        assert!(!is_static_elf(&[]));
        let mut truncated = me[..64].to_vec();
        truncated[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(!is_static_elf(&truncated));
    }

    #[test]
    fn a_dynamic_agent_is_refused() {
        let err = agent_disk(&std::env::current_exe().unwrap()).unwrap_err();
        assert!(matches!(err, AgentDiskError::NotStatic(_)), "{err}");
        let err = agent_disk(Path::new("/nonexistent/agent")).unwrap_err();
        assert!(matches!(err, AgentDiskError::Read(..)), "{err}");
    }

    #[test]
    fn staged_tree_has_agent_and_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        let size = stage_tree(&stage, b"\x7fELF fake").unwrap();
        assert_eq!(size.entries, MOUNT_POINTS.len() as u64 + 1);
        let mode = std::fs::metadata(stage.join("hvlite-init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        for d in MOUNT_POINTS {
            assert!(stage.join(d.trim_start_matches('/')).is_dir(), "{d}");
        }
    }
}
