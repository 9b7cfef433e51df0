//! The container's root filesystem: containerd hands the shim the snapshot's mounts
//! (overlay, or a bind mount from the native snapshotter) to mount at `BUNDLE/rootfs`,
//! where config.json's `root.path` points. The monitor builds the guest's root image from
//! that directory; the shim unmounts it when the task is deleted.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;

use crate::error::ShimError;

/// The directory config.json's root points at.
pub const ROOTFS: &str = "rootfs";

/// Mounts `mounts` on `BUNDLE/rootfs` (nothing to do when containerd gave none: the
/// bundle already holds its root). On failure whatever was mounted is unmounted.
pub fn mount(bundle: &Path, mounts: &[Mount]) -> Result<Option<PathBuf>, ShimError> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let target = bundle.join(ROOTFS);
    std::fs::create_dir_all(&target).map_err(|e| ShimError::Mount(format!("{e}")))?;
    for m in mounts {
        let typ = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        if let Err(e) = containerd_shim::mount::mount_rootfs(typ, source, &m.options, &target) {
            unmount(&target);
            return Err(ShimError::Mount(format!(
                "cannot mount {} ({}) on {}: {e}",
                m.source,
                m.type_,
                target.display()
            )));
        }
    }
    Ok(Some(target))
}

/// Unmounts everything at and under `target` (logged, not returned: a delete goes on).
pub fn unmount(target: &Path) {
    let t = target.to_string_lossy();
    if let Err(e) = containerd_shim::mount::umount_recursive(Some(&t), libc::MNT_DETACH) {
        log::warn!("cannot unmount {t}: {e}");
    }
}

/// Whether anything is mounted at `target` (for tests and the `delete` action).
pub fn is_mounted(target: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let t = target.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|mp| mp == t)
}
