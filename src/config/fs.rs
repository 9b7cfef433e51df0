//! Shared host directories (virtio-fs): `--fs tag=NAME,path=DIR[,ro][,socket=PATH]`, the
//! config file's `fs` list and `PUT /fs/{fs_id}` all become [`FsConfig`]s.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::values::{DeviceId, HostPath};
use crate::devices::virtio::fs::config::check_tag;

/// A host directory the guest mounts with `mount -t virtiofs TAG DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    /// The mount tag (1-36 bytes, no NUL, comma or whitespace).
    pub tag: String,
    /// The host directory.
    pub path: PathBuf,
    /// The guest may only read it (virtiofsd --readonly: writes fail with EROFS).
    pub read_only: bool,
    /// The socket of a virtiofsd started by someone else; hvlite then starts none.
    pub socket: Option<PathBuf>,
}

/// What is wrong with a share.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsConfigError {
    #[error("share {tag:?}: {} does not exist", path.display())]
    Missing { tag: String, path: PathBuf },
    #[error("share {tag:?}: {} is not a directory", path.display())]
    NotDirectory { tag: String, path: PathBuf },
    #[error(
        "share {0:?}: ro applies to the virtiofsd hvlite starts; start yours with --readonly \
         and leave out ro"
    )]
    ReadOnlySocket(String),
    #[error("two shares have the tag {0:?}")]
    DuplicateTag(String),
}

impl std::str::FromStr for FsConfig {
    type Err = String;

    /// Parses `tag=NAME,path=DIR[,ro][,socket=PATH]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut tag, mut path, mut read_only, mut socket) = (None, None, false, None);
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tag", t)) => {
                    check_tag(t).map_err(|e| e.to_string())?;
                    tag = Some(t.to_string());
                }
                Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
                Some(("socket", p)) if !p.is_empty() => socket = Some(PathBuf::from(p)),
                None if opt == "ro" => read_only = true,
                None if opt == "rw" => read_only = false,
                _ => {
                    return Err(format!(
                        "unknown share option {opt:?} (expected tag=NAME, path=DIR, ro or \
                         socket=PATH)"
                    ));
                }
            }
        }
        Ok(Self {
            tag: tag.ok_or("missing tag=NAME")?,
            path: path.ok_or("missing path=DIR")?,
            read_only,
            socket,
        })
    }
}

impl FsConfig {
    /// Checks what only the host can tell: the directory exists and is one. Called
    /// before the guest starts.
    pub fn check(&self) -> Result<(), FsConfigError> {
        let meta = std::fs::metadata(&self.path).map_err(|_| FsConfigError::Missing {
            tag: self.tag.clone(),
            path: self.path.clone(),
        })?;
        if !meta.is_dir() {
            return Err(FsConfigError::NotDirectory {
                tag: self.tag.clone(),
                path: self.path.clone(),
            });
        }
        if self.read_only && self.socket.is_some() {
            return Err(FsConfigError::ReadOnlySocket(self.tag.clone()));
        }
        Ok(())
    }
}

/// Checks a list of shares: each one, and unique tags.
pub fn check_shares(shares: &[FsConfig]) -> Result<(), FsConfigError> {
    let mut seen = std::collections::HashSet::new();
    for s in shares {
        if !seen.insert(s.tag.as_str()) {
            return Err(FsConfigError::DuplicateTag(s.tag.clone()));
        }
        s.check()?;
    }
    Ok(())
}

/// A mount tag, checked as the device's configuration space needs it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct MountTag(String);

impl TryFrom<String> for MountTag {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        check_tag(&s).map_err(|e| e.to_string())?;
        Ok(Self(s))
    }
}

impl From<MountTag> for String {
    fn from(t: MountTag) -> String {
        t.0
    }
}

/// A shared directory (`fs[]`, `PUT /fs/{fs_id}`, `--fs`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FsDevice {
    /// Names the share in the API's path.
    pub fs_id: DeviceId,
    /// The guest's mount tag.
    pub tag: MountTag,
    /// The host directory.
    pub path_on_host: HostPath,
    /// The guest may only read it.
    #[serde(default)]
    pub is_read_only: bool,
    /// The socket of a virtiofsd started by someone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<HostPath>,
}

impl FsDevice {
    /// The share's id and configuration.
    pub fn to_share(&self) -> (String, FsConfig) {
        let share = FsConfig {
            tag: self.tag.0.clone(),
            path: self.path_on_host.to_path_buf(),
            read_only: self.is_read_only,
            socket: self.socket_path.as_ref().map(HostPath::to_path_buf),
        };
        (self.fs_id.to_string(), share)
    }

    /// The resource of share `share` named `id`.
    pub fn from_share(id: &str, share: &FsConfig) -> Result<Self, String> {
        let path = |p: &Path| HostPath::try_from(p.to_path_buf()).map_err(str::to_string);
        Ok(Self {
            fs_id: DeviceId::try_from(id.to_string())?,
            tag: MountTag::try_from(share.tag.clone())?,
            path_on_host: path(&share.path)?,
            is_read_only: share.read_only,
            socket_path: share.socket.as_deref().map(path).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_string_parses() {
        let s: FsConfig = "tag=data,path=/srv/data,ro".parse().unwrap();
        assert_eq!(
            s,
            FsConfig {
                tag: "data".into(),
                path: "/srv/data".into(),
                read_only: true,
                socket: None
            }
        );
        let s: FsConfig = "path=/d,tag=t,socket=/run/v.sock".parse().unwrap();
        assert_eq!(s.socket.as_deref(), Some(Path::new("/run/v.sock")));
        assert!(!s.read_only);
        for (bad, msg) in [
            ("path=/d", "missing tag=NAME"),
            ("tag=t", "missing path=DIR"),
            ("tag=t,path=", "unknown share option \"path=\""),
            ("tag=t,path=/d,rx", "unknown share option \"rx\""),
            ("tag=,path=/d", "the tag is empty"),
            ("tag=a b,path=/d", "holds a NUL"),
        ] {
            let e = bad.parse::<FsConfig>().unwrap_err();
            assert!(e.contains(msg), "{bad}: {e}");
        }
        let long = format!("tag={},path=/d", "x".repeat(37));
        assert!(
            long.parse::<FsConfig>()
                .unwrap_err()
                .contains("longer than 36")
        );
    }

    #[test]
    fn missing_and_non_directory_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let share = |path: &Path| FsConfig {
            tag: "t".into(),
            path: path.to_path_buf(),
            read_only: false,
            socket: None,
        };
        assert_eq!(share(dir.path()).check(), Ok(()));
        let e = share(&dir.path().join("nope")).check().unwrap_err();
        assert!(matches!(e, FsConfigError::Missing { .. }));
        assert!(e.to_string().ends_with("nope does not exist"), "{e}");
        let e = share(&file).check().unwrap_err();
        assert!(e.to_string().ends_with("/f is not a directory"), "{e}");
        let ro_socket = FsConfig {
            read_only: true,
            socket: Some("/s".into()),
            ..share(dir.path())
        };
        assert!(matches!(
            ro_socket.check(),
            Err(FsConfigError::ReadOnlySocket(_))
        ));
        let twice = [share(dir.path()), share(dir.path())];
        assert_eq!(
            check_shares(&twice),
            Err(FsConfigError::DuplicateTag("t".into()))
        );
    }

    #[test]
    fn the_resource_round_trips_and_checks_its_tag() {
        let d: FsDevice = serde_json::from_str(
            r#"{"fs_id": "data", "tag": "data", "path_on_host": "/srv", "is_read_only": true}"#,
        )
        .unwrap();
        let (id, share) = d.to_share();
        assert_eq!((id.as_str(), share.read_only), ("data", true));
        assert_eq!(FsDevice::from_share(&id, &share).unwrap(), d);
        let bad = serde_json::from_str::<FsDevice>(
            r#"{"fs_id": "x", "tag": "a b", "path_on_host": "/srv"}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("whitespace"));
        let unknown = serde_json::from_str::<FsDevice>(
            r#"{"fs_id": "x", "tag": "a", "path_on_host": "/srv", "cache": "always"}"#,
        );
        assert!(unknown.is_err());
    }
}
