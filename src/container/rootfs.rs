//! A container root filesystem for the guest.
//!
//! `--rootfs DIR` (an unpacked container root, e.g. an OCI bundle's `rootfs/`): hvlite
//! builds an ext4 image of the directory once and caches it under a key derived from the
//! tree's metadata (every entry's path, type, mode, owner, size, modification and change
//! times, device numbers and link targets): any change to a file changes its mtime or
//! ctime, and so the key. The cached image is shared by every VM started from the same
//! tree, attached read-only, and the guest agent lays a tmpfs-backed overlay over it:
//! the container can write anywhere and every change is gone when it exits.
//!
//! `--rootfs FILE` (an ext4 image or block device): attached read-write and mounted as is,
//! so changes persist in the image.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::image::{self, ImageError, TreeSize};
use super::paths;

/// Version of the image layout; part of every cache key.
const IMAGE_FORMAT: &str = "hvlite-rootfs-v1";
/// Deepest directory nesting followed (deeper trees are refused, not silently cut).
const MAX_DEPTH: usize = 256;

/// How the guest mounts the container root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootMode {
    /// A shared read-only image under a tmpfs overlay; changes are discarded.
    Overlay,
    /// The user's own image, read-write; changes persist.
    ReadWrite,
}

impl RootMode {
    /// The value of the agent's `hvlite.rootmode=` option.
    pub fn as_option(self) -> &'static str {
        match self {
            RootMode::Overlay => crate::agent::ROOT_MODE_OVERLAY,
            RootMode::ReadWrite => crate::agent::ROOT_MODE_RW,
        }
    }
}

/// A root filesystem ready to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedRoot {
    /// The image to attach as the root disk.
    pub image: PathBuf,
    /// How the guest mounts it.
    pub mode: RootMode,
    /// Whether the image had to be built (false: a cache hit, or the user's own image).
    pub built: bool,
    /// Time spent preparing (walking the tree, building the image).
    pub elapsed: Duration,
}

/// Errors preparing a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("--rootfs {0}: no such file or directory")]
    Missing(PathBuf),
    #[error("--rootfs {0}: cannot read it")]
    Unreadable(PathBuf, #[source] io::Error),
    #[error("--rootfs {0}: not a directory, an ext4 image file or a block device")]
    BadKind(PathBuf),
    #[error("--rootfs {0}: directories nested deeper than {MAX_DEPTH} levels")]
    TooDeep(PathBuf),
    #[error("--rootfs {0}: cannot build its disk image")]
    Image(PathBuf, #[source] ImageError),
}

/// Prepares `path` as the container root: see the module documentation.
pub fn prepare(path: &Path) -> Result<PreparedRoot, RootfsError> {
    let start = Instant::now();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => RootfsError::Missing(path.into()),
        _ => RootfsError::Unreadable(path.into(), e),
    })?;
    let ft = meta.file_type();
    if ft.is_file() || ft.is_block_device() {
        // Opening it is left to the disk layer, which reports permission problems.
        return Ok(PreparedRoot {
            image: path.into(),
            mode: RootMode::ReadWrite,
            built: false,
            elapsed: start.elapsed(),
        });
    }
    if !ft.is_dir() {
        return Err(RootfsError::BadKind(path.into()));
    }
    std::fs::read_dir(path).map_err(|e| RootfsError::Unreadable(path.into(), e))?;
    let (key, size) = tree_key(path)?;
    let image = paths::cache_dir()
        .join("rootfs")
        .join(format!("{}.ext4", &key[..32]));
    if !image.is_file() {
        log::info!(
            "building an ext4 image of {} (once: later runs use the cached image)",
            path.display()
        );
    }
    let built = image::build_cached(path, &image, size, true)
        .map_err(|e| RootfsError::Image(path.into(), e))?;
    Ok(PreparedRoot {
        image,
        mode: RootMode::Overlay,
        built,
        elapsed: start.elapsed(),
    })
}

/// The cache key of the tree at `root` (hex SHA-256 of its metadata) and its size.
pub fn tree_key(root: &Path) -> Result<(String, TreeSize), RootfsError> {
    let mut hasher = Sha256::new();
    hasher.update(IMAGE_FORMAT.as_bytes());
    let mut size = TreeSize::default();
    let root_meta =
        std::fs::symlink_metadata(root).map_err(|e| RootfsError::Unreadable(root.into(), e))?;
    hash_entry(&mut hasher, b".", &root_meta, None);
    walk(root, root, 0, &mut hasher, &mut size)?;
    Ok((hex(&hasher.finalize()), size))
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    hasher: &mut Sha256,
    size: &mut TreeSize,
) -> Result<(), RootfsError> {
    if depth > MAX_DEPTH {
        return Err(RootfsError::TooDeep(root.into()));
    }
    let unreadable = |e| RootfsError::Unreadable(dir.into(), e);
    let mut entries = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| RootfsError::Unreadable(path.clone(), e))?;
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let target = if meta.file_type().is_symlink() {
            Some(std::fs::read_link(&path).map_err(|e| RootfsError::Unreadable(path.clone(), e))?)
        } else {
            None
        };
        hash_entry(hasher, rel.as_os_str().as_bytes(), &meta, target.as_deref());
        let data = match &target {
            // Short link targets live in the inode.
            Some(t) if t.as_os_str().len() < 60 => 0,
            _ if meta.is_dir() || meta.is_file() || target.is_some() => meta.len(),
            _ => 0,
        };
        size.add(data);
        if meta.is_dir() {
            walk(root, &path, depth + 1, hasher, size)?;
        }
    }
    Ok(())
}

fn hash_entry(hasher: &mut Sha256, rel: &[u8], meta: &std::fs::Metadata, target: Option<&Path>) {
    hasher.update((rel.len() as u64).to_le_bytes());
    hasher.update(rel);
    for v in [
        u64::from(meta.mode()),
        u64::from(meta.uid()),
        u64::from(meta.gid()),
        meta.size(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
        meta.rdev(),
        meta.nlink(),
    ] {
        hasher.update(v.to_le_bytes());
    }
    let t = target.map_or(&[][..], |t| t.as_os_str().as_bytes());
    hasher.update((t.len() as u64).to_le_bytes());
    hasher.update(t);
}

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small root tree in a temporary directory (removed when the guard drops).
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("bin/app"), vec![1u8; 10_000]).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("app", root.join("bin/alias")).unwrap();
        (dir, root)
    }

    #[test]
    fn key_is_stable_and_follows_changes() {
        let (_dir, root) = tree();
        let (k1, size) = tree_key(&root).unwrap();
        let (k2, _) = tree_key(&root).unwrap();
        assert_eq!(k1, k2);
        assert_eq!(k1.len(), 64);
        // bin, etc, app, passwd, alias.
        assert_eq!(size.entries, 5);
        assert!(size.data_bytes >= 3 * 4096);

        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/ash\n").unwrap();
        let (k3, _) = tree_key(&root).unwrap();
        assert_ne!(k1, k3, "content change (mtime/ctime) changes the key");

        std::fs::write(root.join("new"), "").unwrap();
        let (k4, _) = tree_key(&root).unwrap();
        assert_ne!(k3, k4, "a new file changes the key");
    }

    #[test]
    fn bad_paths_are_clear_errors() {
        let missing = std::env::temp_dir().join("hvlite-rootfs-definitely-missing");
        let err = prepare(&missing).unwrap_err();
        assert!(matches!(err, RootfsError::Missing(_)), "{err}");
        assert!(err.to_string().contains("no such file"));
        let err = prepare(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, RootfsError::BadKind(_)), "{err}");
    }

    #[test]
    fn an_image_file_is_used_read_write_as_is() {
        let exe = std::env::current_exe().unwrap();
        let p = prepare(&exe).unwrap();
        assert_eq!(p.image, exe);
        assert_eq!(p.mode, RootMode::ReadWrite);
        assert!(!p.built);
    }

    #[test]
    fn hex_encoding() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
