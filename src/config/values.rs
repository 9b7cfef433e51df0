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

/// A token bucket of a `rate_limiter` (Firecracker's TokenBucket): `size` tokens when
/// full, refilled from empty in `refill_time` milliseconds, plus `one_time_burst` tokens
/// spent first and never refilled. A size or refill time of 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

/// A device's `rate_limiter` (Firecracker's RateLimiter): `bandwidth` in bytes, `ops` in
/// requests; either may be absent (no limit on it). Only a JSON object is one (serde
/// would take an empty array for a struct whose fields are all optional).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    try_from = "serde_json::Map<String, serde_json::Value>"
)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// [`RateLimiterConfig`]'s fields, read from an object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimiterFields {
    #[serde(default)]
    bandwidth: Option<TokenBucketConfig>,
    #[serde(default)]
    ops: Option<TokenBucketConfig>,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for RateLimiterConfig {
    type Error = String;
    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let f: RateLimiterFields = serde_path_to_error::deserialize(serde_json::Value::Object(map))
            .map_err(|e| {
                let path = e.path().to_string();
                format!("{path}: {}", e.into_inner())
            })?;
        Ok(Self {
            bandwidth: f.bandwidth,
            ops: f.ops,
        })
    }
}

impl TokenBucketConfig {
    /// The device's bucket; `None` for no limit.
    pub fn bucket(&self) -> Option<crate::devices::virtio::rate_limiter::TokenBucket> {
        crate::devices::virtio::rate_limiter::TokenBucket::new(
            self.size,
            self.one_time_burst.unwrap_or(0),
            self.refill_time,
        )
    }
}

impl RateLimiterConfig {
    /// The device's buckets (bandwidth, ops).
    pub fn buckets(
        &self,
    ) -> (
        Option<crate::devices::virtio::rate_limiter::TokenBucket>,
        Option<crate::devices::virtio::rate_limiter::TokenBucket>,
    ) {
        (
            self.bandwidth.as_ref().and_then(TokenBucketConfig::bucket),
            self.ops.as_ref().and_then(TokenBucketConfig::bucket),
        )
    }

    /// Whether it limits anything.
    pub fn limits(&self) -> bool {
        let (b, o) = self.buckets();
        b.is_some() || o.is_some()
    }
}

/// `machine-config.smt`: simultaneous multithreading. hvlite presents every vCPU as a
/// core of its own, so only `false` (Firecracker's default) is accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "bool", into = "bool")]
pub struct Smt;

impl TryFrom<bool> for Smt {
    type Error = String;
    fn try_from(on: bool) -> Result<Self, String> {
        if on {
            Err(
                "true is not supported: hvlite gives each vCPU a core of its own \
                 (no sibling threads); use false"
                    .into(),
            )
        } else {
            Ok(Self)
        }
    }
}

impl From<Smt> for bool {
    fn from(_: Smt) -> bool {
        false
    }
}

/// `machine-config.huge_pages`: the page size backing guest memory. hvlite maps guest
/// memory with ordinary 4 KiB pages, so only `"None"` is accepted (Firecracker's `"2M"`
/// is refused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HugePages;

impl TryFrom<String> for HugePages {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "None" => Ok(Self),
            "2M" => Err(
                "\"2M\" is not supported: hvlite backs guest memory with 4 KiB \
                         pages; use \"None\""
                    .into(),
            ),
            other => Err(format!("unknown value {other:?}: expected \"None\"")),
        }
    }
}

impl From<HugePages> for String {
    fn from(_: HugePages) -> String {
        "None".into()
    }
}

/// `machine-config.cpu_template`: Firecracker's static CPU templates (C3, T2, T2S, T2CL,
/// T2A) mask CPUID for Intel/AMD hardware hosts; hvlite has none, so only `"None"` is
/// accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct CpuTemplate;

impl TryFrom<String> for CpuTemplate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "None" => Ok(Self),
            "C3" | "T2" | "T2S" | "T2CL" | "T2A" => Err(format!(
                "CPU template {s:?} is not supported: hvlite passes the host's CPUID through \
                 (with the changes a PVM host needs); use \"None\""
            )),
            other => Err(format!("unknown CPU template {other:?}: expected \"None\"")),
        }
    }
}

impl From<CpuTemplate> for String {
    fn from(_: CpuTemplate) -> String {
        "None".into()
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
    fn unsupported_machine_options_are_refused_by_name() {
        assert_eq!(json::<Smt>("false"), Ok(Smt));
        let e = json::<Smt>("true").unwrap_err();
        assert!(e.contains("true is not supported"), "{e}");
        assert_eq!(json::<HugePages>(r#""None""#), Ok(HugePages));
        let e = json::<HugePages>(r#""2M""#).unwrap_err();
        assert!(e.contains("\"2M\" is not supported"), "{e}");
        assert_eq!(json::<CpuTemplate>(r#""None""#), Ok(CpuTemplate));
        let e = json::<CpuTemplate>(r#""T2S""#).unwrap_err();
        assert!(e.contains("\"T2S\" is not supported"), "{e}");
        assert!(json::<CpuTemplate>(r#""X""#).is_err());
        assert_eq!(serde_json::to_string(&HugePages).unwrap(), r#""None""#);
        assert_eq!(serde_json::to_string(&Smt).unwrap(), "false");
    }

    #[test]
    fn rate_limiters_have_firecrackers_shape() {
        let r: RateLimiterConfig = json(
            r#"{"bandwidth": {"size": 1048576, "one_time_burst": 10, "refill_time": 100},
                "ops": {"size": 10, "refill_time": 1000}}"#,
        )
        .unwrap();
        assert_eq!(r.bandwidth.unwrap().one_time_burst, Some(10));
        assert!(r.limits());
        let e = json::<RateLimiterConfig>(r#"{"bandwidth": {"size": 1}}"#).unwrap_err();
        assert!(e.contains("bandwidth: missing field `refill_time`"), "{e}");
        let e = json::<RateLimiterConfig>(r#"{"iops": {}}"#).unwrap_err();
        assert!(e.contains("unknown field `iops`"), "{e}");
        assert!(json::<RateLimiterConfig>("[]").is_err());
        // Zero size or refill time: no limit, as in Firecracker.
        let r: RateLimiterConfig = json(r#"{"ops": {"size": 0, "refill_time": 100}}"#).unwrap();
        assert!(!r.limits());
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
