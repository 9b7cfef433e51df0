//! The checked values of the configuration schema. Each is valid by construction: it is
//! checked when it is deserialized (config file or API body) or built with `TryFrom`, and
//! the error says what was wrong, so a parser that knows the field's path (the config
//! file's and the API's both do) can name it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::boot::mptable::MAX_CPUS;
use crate::devices::virtio::net::{format_mac, parse_mac, tap};

/// Longest drive or interface id.
pub const MAX_ID_LEN: usize = 64;
/// Lowest guest CID a VM may have (0-2 are the hypervisor, local and host).
pub const MIN_GUEST_CID: u32 = 3;

/// Checks `n` is in `lo..=hi`.
fn in_range(n: u64, lo: u64, hi: u64) -> Result<u64, String> {
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else if hi == u64::MAX {
        Err(format!("must be at least {lo}, got {n}"))
    } else {
        Err(format!("must be between {lo} and {hi}, got {n}"))
    }
}

/// Defines an integer newtype whose JSON form is a number in `$lo..=$hi`.
macro_rules! checked_int {
    ($(#[$doc:meta])* $name:ident($inner:ty), $lo:expr, $hi:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(try_from = "u64", into = "u64")]
        pub struct $name($inner);

        impl $name {
            pub fn get(self) -> $inner {
                self.0
            }
        }

        impl TryFrom<u64> for $name {
            type Error = String;
            fn try_from(n: u64) -> Result<Self, String> {
                in_range(n, $lo, $hi)
                    .and_then(|n| <$inner>::try_from(n).map_err(|e| e.to_string()))
                    .map(Self)
            }
        }

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                u64::from(v.0)
            }
        }
    };
}

checked_int!(
    /// A vCPU count (`machine-config.vcpu_count`): 1 to [`MAX_CPUS`].
    VcpuCount(u8),
    1,
    u64::from(MAX_CPUS)
);

checked_int!(
    /// Guest memory in MiB (`machine-config.mem_size_mib`): at least 1.
    MemSizeMib(u64),
    1,
    u64::MAX
);

checked_int!(
    /// Seconds between metrics flushes (`metrics.flush_interval_secs`): at least 1.
    FlushSecs(u64),
    1,
    u64::MAX
);

checked_int!(
    /// A guest context id (`vsock.guest_cid`): [`MIN_GUEST_CID`] or more (0-2 are
    /// reserved), below 2^32 - 1 (VMADDR_CID_ANY).
    GuestCid(u32),
    MIN_GUEST_CID as u64,
    u64::from(u32::MAX - 1)
);

/// A unicast guest MAC address, written `02:00:00:00:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl TryFrom<String> for MacAddr {
    type Error = crate::devices::virtio::net::MacError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        parse_mac(&s).map(Self)
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        format_mac(&m.0)
    }
}

/// Defines a string newtype checked by `$check` (a `fn(&str) -> Result<(), impl Display>`).
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                match $check(s.as_str()) {
                    Ok(()) => Ok(Self(s)),
                    Err(e) => Err(e.to_string()),
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_string!(
    /// A drive or interface id: 1 to [`MAX_ID_LEN`] ASCII letters, digits, `_` or `-` (it
    /// becomes a metric field name, where a `.` would split it, and an API path segment).
    DeviceId,
    |s: &str| {
        let ok = (1..=MAX_ID_LEN).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{s:?} is not 1-{MAX_ID_LEN} ASCII letters, digits, '_' or '-'"
            ))
        }
    }
);

checked_string!(
    /// A host TAP device name, checked as the TAP code checks it before opening one.
    TapName,
    tap::validate_name
);

checked_string!(
    /// A `KEY=VALUE` environment entry with a non-empty key.
    EnvVar,
    |s: &str| match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(()),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
);

/// A path on the host; not empty. Relative paths are kept as written: like the command
/// line's, they are relative to hvlite's working directory.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "PathBuf", into = "PathBuf")]
pub struct HostPath(PathBuf);

impl HostPath {
    /// The path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// The path, owned.
    pub fn to_path_buf(&self) -> PathBuf {
        self.0.clone()
    }
}

impl TryFrom<PathBuf> for HostPath {
    type Error = &'static str;
    fn try_from(p: PathBuf) -> Result<Self, Self::Error> {
        if p.as_os_str().is_empty() {
            Err("must not be an empty path")
        } else {
            Ok(Self(p))
        }
    }
}

impl From<HostPath> for PathBuf {
    fn from(p: HostPath) -> PathBuf {
        p.0
    }
}

impl AsRef<Path> for HostPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_are_range_checked() {
        assert_eq!(json::<VcpuCount>("1").unwrap().get(), 1);
        assert_eq!(json::<VcpuCount>("32").unwrap().get(), MAX_CPUS);
        let e = json::<VcpuCount>("0").unwrap_err();
        assert!(e.contains("must be between 1 and 32, got 0"), "{e}");
        assert!(json::<VcpuCount>("300").is_err());
        assert!(json::<VcpuCount>("-1").is_err());
        let e = json::<MemSizeMib>("0").unwrap_err();
        assert!(e.contains("must be at least 1, got 0"), "{e}");
        assert_eq!(json::<GuestCid>("3").unwrap().get(), 3);
        assert!(json::<GuestCid>("2").is_err());
        assert!(json::<GuestCid>("4294967295").is_err());
        assert!(json::<FlushSecs>("0").is_err());
    }

    #[test]
    fn strings_are_checked() {
        assert_eq!(
            json::<DeviceId>(r#""rootfs_1-a""#).unwrap().as_str(),
            "rootfs_1-a"
        );
        for bad in [r#""""#, r#""a.b""#, r#""a b""#] {
            let e = json::<DeviceId>(bad).unwrap_err();
            assert!(e.contains("is not 1-64 ASCII letters"), "{bad}: {e}");
        }
        assert!(json::<DeviceId>(&format!("\"{}\"", "x".repeat(65))).is_err());
        assert!(json::<TapName>(r#""tap0""#).is_ok());
        for bad in [
            r#""""#,
            r#""sixteen-chars-xx""#,
            r#""a/b""#,
            r#""a b""#,
            r#"".""#,
        ] {
            assert!(json::<TapName>(bad).is_err(), "{bad}");
        }
        assert!(json::<EnvVar>(r#""A=""#).is_ok());
        assert!(json::<EnvVar>(r#""=b""#).is_err());
        let e = json::<MacAddr>(r#""03:00:00:00:00:01""#).unwrap_err();
        assert!(e.contains("multicast"), "{e}");
        assert_eq!(
            String::from(json::<MacAddr>(r#""02:fc:00:00:00:05""#).unwrap()),
            "02:fc:00:00:00:05"
        );
    }

    #[test]
    fn host_paths_are_not_empty() {
        assert_eq!(
            json::<HostPath>(r#""rel/a.img""#).unwrap().as_path(),
            Path::new("rel/a.img")
        );
        let e = json::<HostPath>(r#""""#).unwrap_err();
        assert!(e.contains("must not be an empty path"), "{e}");
        assert!(json::<HostPath>("1").is_err());
    }
}
