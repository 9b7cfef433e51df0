//! Host directories in a container run, through virtio-fs: `--volume HOST:GUEST[:ro]`
//! mounts HOST at GUEST inside the container, and `--rootfs-mode virtiofs` serves the
//! root directory itself instead of building an ext4 image of it. Each becomes a share
//! of the VM; the agent learns where to mount them from the kernel command line
//! (`hvlite.root=virtiofs:rootfs`, `hvlite.volumes=vol0:/data:ro,...`).

use std::path::PathBuf;

use crate::agent::{CMDLINE_VOLUMES, VIRTIOFS_ROOT_PREFIX};
use crate::config::FsConfig;

/// The mount tag of a virtio-fs container root.
pub const ROOT_TAG: &str = "rootfs";

/// How `--rootfs DIR` reaches the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RootfsMode {
    /// An ext4 image of the directory (built once, cached), read-only under an overlay.
    #[default]
    Image,
    /// The directory itself through virtio-fs, read-only under an overlay.
    Virtiofs,
}

impl std::str::FromStr for RootfsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "image" => Ok(Self::Image),
            "virtiofs" => Ok(Self::Virtiofs),
            other => Err(format!("{other:?}: expected image or virtiofs")),
        }
    }
}

/// `--volume HOST:GUEST[:ro]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// The host directory.
    pub host: PathBuf,
    /// Where it appears in the container (absolute).
    pub guest: String,
    /// The container may only read it.
    pub read_only: bool,
}

impl std::str::FromStr for Volume {
    type Err = String;

    /// Parses `HOST:GUEST[:ro|:rw]`. GUEST must be absolute, and neither may hold a `:`;
    /// GUEST also no `,`, `"` or whitespace (it travels on the kernel command line).
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (host, guest, read_only) = match parts[..] {
            [h, g] => (h, g, false),
            [h, g, "ro"] => (h, g, true),
            [h, g, "rw"] => (h, g, false),
            _ => return Err(format!("{s:?}: expected HOST:GUEST[:ro]")),
        };
        if host.is_empty() {
            return Err(format!("{s:?}: the host directory is empty"));
        }
        Self::new(host.into(), guest, read_only).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl Volume {
    /// A volume at container path `guest`, which must be absolute and hold no `:`, `,`,
    /// `"`, whitespace or `..` (it travels on the kernel command line).
    pub fn new(host: PathBuf, guest: &str, read_only: bool) -> Result<Self, String> {
        let plain = |c: char| c == ':' || c == ',' || c == '"' || c.is_whitespace();
        if !guest.starts_with('/') || guest.contains(plain) || guest.split('/').any(|c| c == "..") {
            return Err(format!(
                "the container path {guest:?} must be absolute, without ':', ',', '\"', \
                 whitespace or '..'"
            ));
        }
        Ok(Self {
            host,
            guest: guest.to_string(),
            read_only,
        })
    }
}

/// The shares of `volumes` (tags `vol0`, `vol1`, ...) and the agent's kernel option that
/// mounts them, if any.
pub fn volume_shares(volumes: &[Volume]) -> (Vec<FsConfig>, Option<String>) {
    let shares: Vec<FsConfig> = (volumes.iter().enumerate())
        .map(|(i, v)| FsConfig {
            tag: format!("vol{i}"),
            path: v.host.clone(),
            read_only: v.read_only,
            socket: None,
        })
        .collect();
    let entries: Vec<String> = (shares.iter().zip(volumes))
        .map(|(s, v)| {
            format!(
                "{}:{}{}",
                s.tag,
                v.guest,
                if v.read_only { ":ro" } else { "" }
            )
        })
        .collect();
    let option = (!entries.is_empty()).then(|| format!("{CMDLINE_VOLUMES}={}", entries.join(",")));
    (shares, option)
}

/// The share of a container root directory served through virtio-fs (read-only: the
/// container writes into an overlay), and the agent's `hvlite.root` value for it.
pub fn root_share(dir: PathBuf) -> (FsConfig, String) {
    let share = FsConfig {
        tag: ROOT_TAG.into(),
        path: dir,
        read_only: true,
        socket: None,
    };
    (share, format!("{VIRTIOFS_ROOT_PREFIX}{ROOT_TAG}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse() {
        let v: Volume = "/srv/data:/data".parse().unwrap();
        assert_eq!(
            (v.host.to_str(), v.guest.as_str(), v.read_only),
            (Some("/srv/data"), "/data", false)
        );
        let v: Volume = "rel/dir:/etc/conf:ro".parse().unwrap();
        assert!(v.read_only);
        for bad in [
            "/a",
            "/a:b",
            ":/b",
            "/a:/b:rx",
            "/a:/b c",
            "/a:/b,c",
            "/a:/b:ro:x",
            "/a:/b/../etc",
        ] {
            assert!(bad.parse::<Volume>().is_err(), "{bad}");
        }
        assert!(Volume::new("/a".into(), "/x:y", false).is_err());
        assert!(Volume::new("/a".into(), "/x/y", true).is_ok_and(|v| v.read_only));
        assert_eq!("virtiofs".parse(), Ok(RootfsMode::Virtiofs));
        assert!("ext4".parse::<RootfsMode>().is_err());
    }

    #[test]
    fn volumes_become_shares_and_one_option() {
        let vols: Vec<Volume> = ["/a:/data", "/b:/conf:ro"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let (shares, opt) = volume_shares(&vols);
        assert_eq!(shares[1].tag, "vol1");
        assert!(shares[1].read_only && !shares[0].read_only);
        assert_eq!(
            opt.as_deref(),
            Some("hvlite.volumes=vol0:/data,vol1:/conf:ro")
        );
        assert_eq!(volume_shares(&[]), (vec![], None));
        let (root, value) = root_share("/r".into());
        assert!(root.read_only);
        assert_eq!(value, "virtiofs:rootfs");
    }
}
