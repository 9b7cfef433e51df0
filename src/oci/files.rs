//! Host files bind-mounted into the container (podman's /etc/hosts, /etc/resolv.conf,
//! /etc/hostname, /run/.containerenv): copied into a private copy of the container's root
//! image with debugfs, since the guest cannot see host files (no virtio-fs yet).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the files could not be put into the image.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot copy the root image {0} to {1}")]
    Copy(PathBuf, PathBuf, #[source] io::Error),
    #[error("cannot run debugfs (e2fsprogs) to write bind-mounted files into {0}")]
    Spawn(PathBuf, #[source] io::Error),
    #[error("debugfs could not write {what} into {image}: {detail}")]
    Debugfs {
        image: PathBuf,
        what: String,
        detail: String,
    },
    #[error("bind mount {0}: the path contains characters debugfs cannot quote")]
    Path(String),
}

/// Copies `base` to `private` and writes each (host file, guest path) into it.
pub fn private_image(
    base: &Path,
    private: &Path,
    files: &[(PathBuf, String)],
) -> Result<(), FilesError> {
    std::fs::copy(base, private).map_err(|e| FilesError::Copy(base.into(), private.into(), e))?;
    let script = debugfs_script(files)?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(private)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(script.as_bytes())?;
            }
            child.wait_with_output()
        })
        .map_err(|e| FilesError::Spawn(private.into(), e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // debugfs goes on after a failed command; its complaints are on stderr. `rm` and
    // `mkdir` of what is missing or present are expected to fail.
    let bad: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .filter(|l| !l.contains("File not found by ext2_lookup") && !l.contains("already exists"))
        .collect();
    if !out.status.success() || !bad.is_empty() {
        return Err(FilesError::Debugfs {
            image: private.into(),
            what: files
                .iter()
                .map(|(_, g)| g.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            detail: bad.join("; "),
        });
    }
    Ok(())
}

/// The debugfs commands that replace each guest path with its host file, creating
/// missing parent directories.
fn debugfs_script(files: &[(PathBuf, String)]) -> Result<String, FilesError> {
    let ok = |s: &str| {
        !s.is_empty()
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c.is_control())
    };
    let mut script = String::new();
    for (host, guest) in files {
        let host_s = host.to_string_lossy();
        let (parent, name) = guest.rsplit_once('/').unwrap_or(("", guest));
        if !ok(&host_s) || !ok(name) || !(parent.is_empty() || ok(parent)) {
            return Err(FilesError::Path(guest.clone()));
        }
        let mut dir = String::new();
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            dir.push('/');
            dir.push_str(part);
            script.push_str(&format!("mkdir {dir}\n"));
        }
        let dir = if dir.is_empty() { "/".to_string() } else { dir };
        script.push_str(&format!(
            "cd {dir}\nrm {name}\nwrite {host_s} {name}\ncd /\n"
        ));
    }
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_makes_parents_and_replaces_the_file() {
        let s = debugfs_script(&[("/h/hosts".into(), "/run/x/.containerenv".into())]).unwrap();
        assert_eq!(
            s,
            "mkdir /run\nmkdir /run/x\ncd /run/x\nrm .containerenv\nwrite /h/hosts .containerenv\ncd /\n"
        );
        assert!(debugfs_script(&[("/h/a b".into(), "/etc/hosts".into())]).is_err());
        assert!(debugfs_script(&[("/h/a".into(), "/etc/ho\"sts".into())]).is_err());
    }

    #[test]
    fn files_land_in_a_private_copy() {
        let tools = ["mkfs.ext4", "debugfs"]
            .iter()
            .all(|t| Command::new(t).arg("-V").output().is_ok());
        if !hvlite_protocol::test_env::check(
            "files_land_in_a_private_copy",
            tools,
            "needs mkfs.ext4 and debugfs",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.ext4");
        std::fs::write(&base, vec![0u8; 4 << 20]).unwrap();
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&base)
            .status()
            .unwrap();
        assert!(st.success());
        let host = dir.path().join("hosts");
        std::fs::write(&host, "10.0.0.1 box\n").unwrap();
        let private = dir.path().join("private.ext4");
        private_image(&base, &private, &[(host, "/etc/hosts".into())]).unwrap();
        let out = Command::new("debugfs")
            .arg("-R")
            .arg("cat /etc/hosts")
            .arg(&private)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "10.0.0.1 box\n");
        let out = Command::new("debugfs")
            .arg("-R")
            .arg("cat /etc/hosts")
            .arg(&base)
            .output()
            .unwrap();
        assert!(out.stdout.is_empty(), "the base image is untouched");
    }
}
