//! The jail directory: hvlite's binary and the shared libraries it links, the device nodes
//! a VM needs, and empty mount points for the files the VM uses (bind-mounted later, inside
//! the jail's own mount namespace).

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::JailArgs;

/// Why the jail directory could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    #[error("the jail {0} exists already (another VM with this id, or a stale jail to remove)")]
    Exists(PathBuf),
    #[error("cannot create {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("cannot copy {0} into the jail")]
    Copy(PathBuf, #[source] std::io::Error),
    #[error("cannot list the libraries of {0} with ldd")]
    Ldd(PathBuf, #[source] std::io::Error),
    #[error("cannot create the device node {0}")]
    Mknod(PathBuf, #[source] nix::Error),
    #[error("--file {0:?}: the jail path must be absolute, without '..'")]
    JailPath(String),
    #[error("--file {0}: not a regular file")]
    NotAFile(PathBuf),
}

/// A device node in the jail: path, character major/minor, mode.
const DEVICES: [(&str, u64, u64, u32); 4] = [
    ("dev/kvm", 10, 232, 0o600),
    ("dev/net/tun", 10, 200, 0o600),
    ("dev/urandom", 1, 9, 0o600),
    ("dev/null", 1, 3, 0o666),
];

/// A prepared jail.
pub struct Jail {
    /// The directory that becomes `/`.
    pub root: PathBuf,
    /// The binary's path inside the jail.
    pub exec: PathBuf,
    /// Host files and where they are mounted under `root`.
    pub binds: Vec<(PathBuf, PathBuf)>,
}

impl Jail {
    /// Creates the jail of `args` under its base directory.
    pub fn create(args: &JailArgs) -> Result<Jail, ChrootError> {
        let exec_name = args
            .exec_file
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("hvlite"));
        let dir = args.chroot_base_dir.join(&exec_name).join(&args.id);
        let root = dir.join("root");
        if root.exists() {
            return Err(ChrootError::Exists(root));
        }
        mkdir(&root)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| ChrootError::Create(dir.clone(), e))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .map_err(|e| ChrootError::Create(root.clone(), e))?;
        let exec = Path::new("/").join(&exec_name);
        copy_into(&args.exec_file, &root.join(&exec_name), 0o755)?;
        for lib in libraries(&args.exec_file)? {
            let inside = root.join(lib.strip_prefix("/").unwrap_or(&lib));
            copy_into(&lib, &inside, 0o755)?;
        }
        for (path, major, minor, mode) in DEVICES {
            let node = root.join(path);
            if let Some(parent) = node.parent() {
                mkdir(parent)?;
            }
            mknod(
                &node,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(mode),
                makedev(major, minor),
            )
            .map_err(|e| ChrootError::Mknod(node.clone(), e))?;
            // mknod honours the umask: set the mode exactly.
            fs::set_permissions(&node, fs::Permissions::from_mode(mode))
                .map_err(|e| ChrootError::Create(node.clone(), e))?;
            chown(&node, Some(args.uid), Some(args.gid))
                .map_err(|e| ChrootError::Create(node.clone(), e))?;
        }
        let mut binds = Vec::new();
        for spec in &args.files {
            let (host, inside) = parse_file(spec)?;
            if !host.is_file() {
                return Err(ChrootError::NotAFile(host));
            }
            let target = root.join(inside.strip_prefix("/").unwrap_or(&inside));
            if let Some(parent) = target.parent() {
                mkdir(parent)?;
            }
            fs::write(&target, b"").map_err(|e| ChrootError::Create(target.clone(), e))?;
            binds.push((host, target));
        }
        Ok(Jail { root, exec, binds })
    }
}

fn mkdir(path: &Path) -> Result<(), ChrootError> {
    fs::create_dir_all(path).map_err(|e| ChrootError::Create(path.to_path_buf(), e))
}

fn copy_into(from: &Path, to: &Path, mode: u32) -> Result<(), ChrootError> {
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    fs::copy(from, to).map_err(|e| ChrootError::Copy(from.to_path_buf(), e))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .map_err(|e| ChrootError::Copy(from.to_path_buf(), e))
}

/// `HOST_PATH[:JAIL_PATH]`; the jail path defaults to `/<file name>`.
fn parse_file(spec: &str) -> Result<(PathBuf, PathBuf), ChrootError> {
    let (host, inside) = match spec.split_once(':') {
        Some((h, j)) => (PathBuf::from(h), PathBuf::from(j)),
        None => {
            let host = PathBuf::from(spec);
            let name = host
                .file_name()
                .ok_or_else(|| ChrootError::JailPath(spec.to_string()))?;
            (host.clone(), Path::new("/").join(name))
        }
    };
    let clean = inside.is_absolute()
        && inside
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && inside.components().count() > 1;
    if !clean {
        return Err(ChrootError::JailPath(spec.to_string()));
    }
    Ok((host, inside))
}

/// The shared libraries (and the ELF interpreter) `exec` loads, as ldd lists them; none for
/// a static binary.
fn libraries(exec: &Path) -> Result<Vec<PathBuf>, ChrootError> {
    let out = Command::new("ldd")
        .arg(exec)
        .output()
        .map_err(|e| ChrootError::Ldd(exec.to_path_buf(), e))?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_library_path() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn file_specs_name_a_clean_absolute_jail_path() {
        assert_eq!(
            parse_file("/srv/k/vmlinux").unwrap(),
            (PathBuf::from("/srv/k/vmlinux"), PathBuf::from("/vmlinux"))
        );
        assert_eq!(
            parse_file("/srv/disk.img:/disks/a.img").unwrap(),
            (
                PathBuf::from("/srv/disk.img"),
                PathBuf::from("/disks/a.img")
            )
        );
        for bad in ["/a:relative", "/a:/../etc/passwd", "/a:/", "/a:/x/../y"] {
            assert!(parse_file(bad).is_err(), "{bad}");
        }
    }
}
