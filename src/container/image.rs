//! Building ext4 images from host directories with `mkfs.ext4 -d`, into a cache directory,
//! atomically: an image appears under its final name only once it is complete, so a
//! crashed or concurrent build never leaves a half-written image behind for another run.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Block size of the images.
const BLOCK: u64 = 4096;
/// Room for ext4's own metadata (superblocks, group descriptors, bitmaps, root and
/// lost+found), on top of the estimated contents.
const METADATA_SLACK: u64 = 4 << 20;
/// Bytes per inode in the inode table (`mkfs.ext4 -I`).
const INODE_SIZE: u64 = 256;
/// Attempts with a doubled size when the estimate was too small.
const ATTEMPTS: u32 = 3;

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("mkfs.ext4 not found: install e2fsprogs (apt-get install e2fsprogs)")]
    NoMkfs,
    #[error("cannot run mkfs.ext4")]
    Spawn(#[source] io::Error),
    #[error("mkfs.ext4 -d {dir} failed: {stderr}")]
    Mkfs { dir: PathBuf, stderr: String },
    #[error("cannot create the image cache {0}")]
    CacheDir(PathBuf, #[source] io::Error),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] io::Error),
}

/// How much a directory tree needs in an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeSize {
    /// Bytes of data blocks, each file rounded up to whole blocks.
    pub data_bytes: u64,
    /// Files, directories, links and nodes.
    pub entries: u64,
}

impl TreeSize {
    /// Counts one entry of `len` bytes of data.
    pub fn add(&mut self, len: u64) {
        self.entries += 1;
        self.data_bytes += len.div_ceil(BLOCK) * BLOCK;
    }

    /// Inodes to give mkfs: every entry plus a margin for files created later.
    pub fn inodes(&self) -> u64 {
        self.entries + self.entries / 4 + 256
    }

    /// Image size for the first attempt, in bytes (a whole number of MiB).
    pub fn image_bytes(&self) -> u64 {
        let raw = self.data_bytes + self.data_bytes / 10 + self.inodes() * INODE_SIZE;
        (raw + METADATA_SLACK).div_ceil(1 << 20) << 20
    }
}

/// Builds an ext4 image of `dir` at `dest` unless it exists. `size` says how big the
/// contents are; `read_only_use` leaves out the journal (the guest never writes it).
/// Returns whether an image was built (false: it was already there).
pub fn build_cached(
    dir: &Path,
    dest: &Path,
    size: TreeSize,
    read_only_use: bool,
) -> Result<bool, ImageError> {
    if dest.is_file() {
        return Ok(false);
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ImageError::CacheDir(parent.into(), e))?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        dest.file_name()
            .map_or("image".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let result = (|| {
        let mut bytes = size.image_bytes();
        for attempt in 1..=ATTEMPTS {
            match mkfs(dir, &tmp, bytes, size.inodes(), read_only_use) {
                Ok(()) => return Ok(()),
                Err(ImageError::Mkfs { stderr, .. })
                    if attempt < ATTEMPTS && looks_full(&stderr) =>
                {
                    log::debug!(
                        "image of {} too small at {bytes} bytes: {stderr}",
                        dir.display()
                    );
                    bytes *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })();
    match result
        .and_then(|()| std::fs::rename(&tmp, dest).map_err(|e| ImageError::Write(dest.into(), e)))
    {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Whether mkfs failed for lack of space (then a bigger image helps).
fn looks_full(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "could not allocate",
        "no space",
        "not enough space",
        "inode",
    ]
    .iter()
    .any(|m| s.contains(m))
}

fn mkfs(
    dir: &Path,
    out: &Path,
    bytes: u64,
    inodes: u64,
    read_only_use: bool,
) -> Result<(), ImageError> {
    let file = std::fs::File::create(out).map_err(|e| ImageError::Write(out.into(), e))?;
    file.set_len(bytes)
        .map_err(|e| ImageError::Write(out.into(), e))?;
    drop(file);
    let features = if read_only_use {
        "^has_journal,^resize_inode"
    } else {
        "^resize_inode"
    };
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-b", "4096"])
        .arg("-I")
        .arg(INODE_SIZE.to_string())
        .arg("-N")
        .arg(inodes.to_string())
        .args(["-O", features, "-E", "nodiscard", "-L", "hvlite", "-d"])
        .arg(dir)
        .arg(out)
        .env("PATH", mkfs_path())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::NoMkfs,
            _ => ImageError::Spawn(e),
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ImageError::Mkfs {
        dir: dir.into(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// The caller's PATH with the sbin directories added (mkfs.ext4 lives in /sbin).
fn mkfs_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut parts: Vec<&str> = path.split(':').filter(|p| !p.is_empty()).collect();
    for extra in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !parts.contains(&extra) {
            parts.push(extra);
        }
    }
    parts.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_estimate_rounds_and_has_margin() {
        let mut s = TreeSize::default();
        s.add(1);
        s.add(4096);
        s.add(4097);
        assert_eq!(s.entries, 3);
        assert_eq!(s.data_bytes, 4 * 4096);
        assert!(s.inodes() >= 3 + 256);
        let bytes = s.image_bytes();
        assert_eq!(bytes % (1 << 20), 0);
        assert!(bytes >= s.data_bytes + METADATA_SLACK);
    }

    #[test]
    fn full_messages_are_recognised() {
        assert!(looks_full(
            "__populate_fs: Could not allocate block in ext2 filesystem"
        ));
        assert!(looks_full("No space left on device"));
        assert!(!looks_full("Permission denied"));
    }

    #[test]
    fn builds_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let src = root.join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/hostname"), "x\n").unwrap();
        let dest = root.join("cache/one.ext4");
        let mut size = TreeSize::default();
        size.add(0);
        size.add(2);
        // Deliberately too small for the data: the retry doubles it.
        let big = vec![7u8; 6 << 20];
        std::fs::write(src.join("big"), &big).unwrap();
        match build_cached(&src, &dest, size, true) {
            Err(ImageError::NoMkfs) => {
                hvlite_protocol::test_env::check("builds_once_and_reuses", false, "no mkfs.ext4");
                return;
            }
            other => assert!(other.unwrap(), "first call builds"),
        }
        assert!(dest.is_file());
        assert!(
            !build_cached(&src, &dest, size, true).unwrap(),
            "second call reuses"
        );
        // No temporary files are left behind.
        let left: Vec<_> = std::fs::read_dir(root.join("cache")).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn missing_source_is_an_mkfs_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let dest = root.join("x.ext4");
        let err = build_cached(&root.join("nope"), &dest, TreeSize::default(), true).unwrap_err();
        assert!(
            matches!(err, ImageError::Mkfs { .. } | ImageError::NoMkfs),
            "{err}"
        );
        assert!(!dest.exists());
    }
}
