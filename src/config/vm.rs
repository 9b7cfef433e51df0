//! The plain description of a VM that the front ends (command line, config file, API)
//! build and the VMM boots, and its validation.

use std::path::PathBuf;

use crate::boot::mptable::MAX_CPUS;
use crate::devices::virtio::net::parse_mac;

/// Default number of vCPUs.
pub const DEFAULT_CPUS: u8 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// A disk: a host file the guest sees as a virtio-blk device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Host file backing the disk.
    pub path: PathBuf,
    /// The guest may only read it.
    pub read_only: bool,
    /// The guest's root filesystem is on it: it must be the first disk (`/dev/vda`), and
    /// the kernel gets `root=/dev/vda ro` (or `rw`) before the user's options.
    pub root: bool,
    /// Limits on the guest's I/O to it.
    pub rate_limiter: Option<super::values::RateLimiterConfig>,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    /// Parses `PATH[,ro][,bw=BYTES][,ops=N]` (also `,rw`, the default): `bw` and `ops`
    /// limit the guest's I/O to that many bytes and requests a second ([`limit_option`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("empty disk path")?;
        let mut read_only = false;
        let mut rate_limiter = None;
        for opt in parts {
            match opt {
                "ro" => read_only = true,
                "rw" => read_only = false,
                other if limit_option(&mut rate_limiter, "", other)? => {}
                other => {
                    return Err(format!(
                        "unknown disk option {other:?} (expected ro, rw, bw=BYTES or ops=N)"
                    ));
                }
            }
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
            root: false,
            rate_limiter,
        })
    }
}

/// Takes a rate-limit option of the CLI into `limiter`: `<prefix>bw=N` (bytes a second)
/// or `<prefix>ops=N` (requests a second), N a number with an optional K, M or G (powers
/// of 1024). Each becomes a bucket of N tokens refilled every second, as the config
/// file's `{"size": N, "refill_time": 1000}`. Returns whether `opt` was one.
pub fn limit_option(
    limiter: &mut Option<super::values::RateLimiterConfig>,
    prefix: &str,
    opt: &str,
) -> Result<bool, String> {
    let Some((key, value)) = opt.split_once('=') else {
        return Ok(false);
    };
    let Some(kind) = key.strip_prefix(prefix) else {
        return Ok(false);
    };
    if kind != "bw" && kind != "ops" {
        return Ok(false);
    }
    let n = parse_rate(value).ok_or_else(|| {
        format!("{key}={value:?}: expected a rate a second, a number with an optional K, M or G")
    })?;
    let bucket = super::values::TokenBucketConfig {
        size: n,
        one_time_burst: None,
        refill_time: 1000,
    };
    let l = limiter.get_or_insert_with(Default::default);
    if kind == "bw" {
        l.bandwidth = Some(bucket);
    } else {
        l.ops = Some(bucket);
    }
    Ok(true)
}

/// `N[K|M|G]` (powers of 1024), more than 0.
fn parse_rate(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift).filter(|&n| n > 0)
}

/// A network interface: a host TAP device the guest sees as a virtio-net device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of the host TAP device.
    pub tap: String,
    /// The guest's MAC address; a stable locally administered one when not given.
    pub mac: Option<[u8; 6]>,
    /// Limits on the frames the guest sends.
    pub tx_rate_limiter: Option<super::values::RateLimiterConfig>,
    /// Limits on the frames the guest receives.
    pub rx_rate_limiter: Option<super::values::RateLimiterConfig>,
}

impl std::str::FromStr for NetConfig {
    type Err = String;

    /// Parses `tap=NAME[,mac=MAC][,tx-bw=BYTES][,tx-ops=N][,rx-bw=BYTES][,rx-ops=N]`:
    /// `tx-*` limit what the guest sends, `rx-*` what it receives, a second
    /// ([`limit_option`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut tap, mut mac) = (None, None);
        let (mut tx_rate_limiter, mut rx_rate_limiter) = (None, None);
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tap", name)) if !name.is_empty() => tap = Some(name.to_string()),
                Some(("mac", m)) => mac = Some(parse_mac(m).map_err(|e| e.to_string())?),
                _ if limit_option(&mut tx_rate_limiter, "tx-", opt)? => {}
                _ if limit_option(&mut rx_rate_limiter, "rx-", opt)? => {}
                _ => {
                    return Err(format!(
                        "unknown network option {opt:?} (expected tap=NAME, mac=MAC, tx-bw=BYTES, tx-ops=N, rx-bw=BYTES or rx-ops=N)"
                    ));
                }
            }
        }
        let tap = tap.ok_or("missing tap=NAME")?;
        Ok(Self {
            tap,
            mac,
            tx_rate_limiter,
            rx_rate_limiter,
        })
    }
}

/// A virtio-rng device: the guest's entropy from the host's getrandom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntropyConfig {
    /// Limits on the bytes and requests the guest takes.
    pub rate_limiter: Option<super::values::RateLimiterConfig>,
}

/// A virtio-vsock device: the guest's CID and the host-side Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// Host processes connect here (`CONNECT <port>`); guest connections to host port P
    /// go to `<uds>_P`. `None`: only hvlite's own services are reachable.
    pub uds: Option<PathBuf>,
}

impl std::str::FromStr for VsockConfig {
    type Err = String;

    /// Parses `cid=N[,uds=PATH]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut cid, mut uds) = (None, None);
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("cid", n)) => {
                    let n: u64 = n.parse().map_err(|_| format!("cid={n}: not a number"))?;
                    cid = Some(
                        crate::devices::virtio::vsock::validate_cid(n)
                            .map_err(|e| e.to_string())?,
                    );
                }
                Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
                _ => {
                    return Err(format!(
                        "unknown vsock option {opt:?} (expected cid=N or uds=PATH)"
                    ));
                }
            }
        }
        let cid = cid.ok_or("missing cid=N")?;
        Ok(Self { cid, uds })
    }
}

/// What to boot and with which resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image: ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd / initramfs.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line options, appended to hvlite's defaults.
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Log the pages the guest writes (KVM_MEM_LOG_DIRTY_PAGES on every memory slot).
    pub track_dirty_pages: bool,
    /// Command for the guest init to run; hvlite then exits with its status.
    pub command: Option<Vec<String>>,
    /// Disks, in order: the first is /dev/vda in the guest.
    pub disks: Vec<DiskConfig>,
    /// Network interfaces, in order: the first is eth0 in the guest.
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// A virtio-rng device (`/entropy`), with its rate limits.
    pub entropy: Option<EntropyConfig>,
    /// A virtio-balloon device (`/balloon`).
    pub balloon: Option<super::resources::Balloon>,
    /// Shared host directories (virtio-fs), in order.
    pub shares: Vec<super::fs::FsConfig>,
    /// Names of the shares in the API (`fs_id`s), in the order of `shares`; a share
    /// without one is named after its tag.
    pub share_ids: Vec<String>,
    /// Sample the boot vCPU's guest RIP into this file (a developer aid).
    pub guest_profile: Option<PathBuf>,
    /// Names of the disks in metrics (`drive_id`s), in the order of `disks`; a disk
    /// without one is named after its guest device (`vda`, `vdb`, ...).
    pub disk_ids: Vec<String>,
    /// Names of the network interfaces in metrics (`iface_id`s), in the order of `nets`;
    /// an interface without one is named after its guest device (`eth0`, ...).
    pub net_ids: Vec<String>,
}

/// Two disks claim the guest's root filesystem.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("drive {second:?} cannot be the root device: drive {first:?} already is")]
pub struct SecondRoot {
    pub first: String,
    pub second: String,
}

/// Checks that at most one of `disks` (id, holds the root filesystem) is the root device;
/// on error also returns the index of the second one. The config file, the API and
/// [`VmConfig::set_disks`] all check with this.
pub fn check_one_root<'a>(
    disks: impl IntoIterator<Item = (&'a str, bool)>,
) -> Result<(), (usize, SecondRoot)> {
    let mut first = None;
    for (i, (id, root)) in disks.into_iter().enumerate() {
        match (root, first) {
            (false, _) => {}
            (true, None) => first = Some(id),
            (true, Some(f)) => {
                let err = SecondRoot {
                    first: f.to_string(),
                    second: id.to_string(),
                };
                return Err((i, err));
            }
        }
    }
    Ok(())
}

/// Errors in a [`VmConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--cpus must be between 1 and {max}, got {got}")]
    Cpus { got: u64, max: u8 },
    #[error("--memory must be at least 1 MiB")]
    NoMemory,
    #[error("--memory {got} MiB is more than this host's {host} MiB of RAM")]
    MemoryOverHost { got: u64, host: u64 },
    #[error("the command after `--` is empty")]
    EmptyCommand,
    #[error("only one disk, the first, can hold the root filesystem")]
    RootNotFirst,
    #[error("the balloon's amount_mib {balloon} is more than the guest's {memory} MiB")]
    BalloonOverMemory { balloon: u32, memory: u64 },
    #[error(transparent)]
    Share(#[from] super::fs::FsConfigError),
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: None,
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            track_dirty_pages: false,
            command: None,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            entropy: None,
            balloon: None,
            shares: Vec::new(),
            share_ids: Vec::new(),
            guest_profile: None,
            disk_ids: Vec::new(),
            net_ids: Vec::new(),
        }
    }

    /// Sets the disks (metrics id, disk) in order, except that the root device, if one is
    /// marked, goes first (`/dev/vda`). The front ends allow one ([`check_one_root`]);
    /// [`VmConfig::validate`] refuses a second.
    pub fn set_disks(&mut self, disks: Vec<(String, DiskConfig)>) {
        let (mut ordered, rest): (Vec<_>, Vec<_>) = disks.into_iter().partition(|(_, d)| d.root);
        ordered.extend(rest);
        (self.disk_ids, self.disks) = ordered.into_iter().unzip();
    }

    /// Whether the root filesystem is on the first disk, and if so whether it is read-only.
    pub fn root_disk(&self) -> Option<&DiskConfig> {
        self.disks.first().filter(|d| d.root)
    }

    /// The metrics name of disk `index`.
    pub fn disk_id(&self, index: usize) -> String {
        self.disk_ids.get(index).cloned().unwrap_or_else(|| {
            let mut name = String::from("vd");
            let mut n = index;
            // vda..vdz, then vdaa, vdab, ... as Linux names them.
            let mut letters = Vec::new();
            loop {
                letters.push(b'a' + (n % 26) as u8);
                if n < 26 {
                    break;
                }
                n = n / 26 - 1;
            }
            letters.reverse();
            name.push_str(&String::from_utf8_lossy(&letters));
            name
        })
    }

    /// The metrics name of network interface `index`.
    pub fn net_id(&self, index: usize) -> String {
        self.net_ids
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("eth{index}"))
    }

    /// The API name of share `index`.
    pub fn share_id(&self, index: usize) -> String {
        (self.share_ids.get(index).cloned())
            .or_else(|| self.shares.get(index).map(|s| s.tag.clone()))
            .unwrap_or_default()
    }

    /// Guest memory in bytes.
    pub fn mem_size(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Checks the resource limits against the host's RAM (`host_ram_mib`).
    pub fn validate(&self, host_ram_mib: u64) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(ConfigError::Cpus {
                got: u64::from(self.cpus),
                max: MAX_CPUS,
            });
        }
        if self.memory_mib == 0 {
            return Err(ConfigError::NoMemory);
        }
        if self.memory_mib > host_ram_mib {
            return Err(ConfigError::MemoryOverHost {
                got: self.memory_mib,
                host: host_ram_mib,
            });
        }
        if self.command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(ConfigError::EmptyCommand);
        }
        if self.disks.iter().skip(1).any(|d| d.root) {
            return Err(ConfigError::RootNotFirst);
        }
        if let Some(b) = &self.balloon
            && u64::from(b.amount_mib) > self.memory_mib
        {
            return Err(ConfigError::BalloonOverMemory {
                balloon: b.amount_mib,
                memory: self.memory_mib,
            });
        }
        super::fs::check_shares(&self.shares)?;
        Ok(())
    }
}

/// The host's physical RAM in MiB.
pub fn host_ram_mib() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let bytes = u64::try_from(pages).unwrap_or(0) * u64::try_from(page_size).unwrap_or(0);
    bytes >> 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_limits_become_buckets_refilled_every_second() {
        use super::super::values::TokenBucketConfig;
        let d: DiskConfig = "/x.img,ro,bw=1M,ops=100".parse().unwrap();
        assert!(d.read_only);
        let l = d.rate_limiter.unwrap();
        let per_second = |size| TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time: 1000,
        };
        assert_eq!(l.bandwidth, Some(per_second(1 << 20)));
        assert_eq!(l.ops, Some(per_second(100)));
        assert_eq!("/x.img".parse::<DiskConfig>().unwrap().rate_limiter, None);
        let n: NetConfig = "tap=t0,tx-bw=64k,rx-ops=10".parse().unwrap();
        let l = n.tx_rate_limiter.unwrap();
        assert_eq!((l.bandwidth, l.ops), (Some(per_second(64 << 10)), None));
        let l = n.rx_rate_limiter.unwrap();
        assert_eq!((l.bandwidth, l.ops), (None, Some(per_second(10))));
        for bad in ["/x,bw=0", "/x,bw=1T", "/x,bw=", "/x,ops=-1", "/x,tx-bw=1"] {
            assert!(bad.parse::<DiskConfig>().is_err(), "{bad}");
        }
        assert!("tap=t0,bw=1".parse::<NetConfig>().is_err());
        assert!("tap=t0,tx-ops=x".parse::<NetConfig>().is_err());
    }

    #[test]
    fn limits() {
        let mut c = VmConfig::new("k".into());
        assert_eq!(c.validate(1024), Ok(()));
        c.cpus = 0;
        assert!(matches!(
            c.validate(1024),
            Err(ConfigError::Cpus { got: 0, .. })
        ));
        c.cpus = MAX_CPUS + 1;
        assert!(c.validate(1024).is_err());
        c.cpus = MAX_CPUS;
        assert_eq!(c.validate(1024), Ok(()));
        c.memory_mib = 0;
        assert_eq!(c.validate(1024), Err(ConfigError::NoMemory));
        c.memory_mib = 2048;
        assert_eq!(
            c.validate(1024),
            Err(ConfigError::MemoryOverHost {
                got: 2048,
                host: 1024
            })
        );
        c.memory_mib = 64;
        c.command = Some(vec![]);
        assert_eq!(c.validate(1024), Err(ConfigError::EmptyCommand));
    }

    #[test]
    fn disk_options() {
        let d: DiskConfig = "a.img".parse().unwrap();
        assert_eq!((d.path, d.read_only), (PathBuf::from("a.img"), false));
        let d: DiskConfig = "/x/b.img,ro".parse().unwrap();
        assert_eq!((d.path, d.read_only), (PathBuf::from("/x/b.img"), true));
        assert!("b.img,rw".parse::<DiskConfig>().is_ok_and(|d| !d.read_only));
        assert!("b.img,readonly".parse::<DiskConfig>().is_err());
        assert!(",ro".parse::<DiskConfig>().is_err());
        assert!("".parse::<DiskConfig>().is_err());
    }

    #[test]
    fn net_options() {
        let n: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!((n.tap.as_str(), n.mac), ("tap0", None));
        let n: NetConfig = "tap=t1,mac=02:00:00:00:00:0a".parse().unwrap();
        assert_eq!(n.mac, Some([2, 0, 0, 0, 0, 0x0a]));
        assert!("mac=02:00:00:00:00:01".parse::<NetConfig>().is_err());
        assert!("tap=".parse::<NetConfig>().is_err());
        assert!("tap=t,speed=10".parse::<NetConfig>().is_err());
        let err = "tap=t,mac=03:00:00:00:00:01"
            .parse::<NetConfig>()
            .unwrap_err();
        assert!(err.contains("multicast"), "{err}");
        assert!("tap=t,mac=0g:00:00:00:00:01".parse::<NetConfig>().is_err());
    }

    #[test]
    fn vsock_options() {
        let v: VsockConfig = "cid=3,uds=/run/v.sock".parse().unwrap();
        assert_eq!(v.cid, 3);
        assert_eq!(v.uds, Some(PathBuf::from("/run/v.sock")));
        let v: VsockConfig = "cid=42".parse().unwrap();
        assert_eq!((v.cid, v.uds), (42, None));
        for bad in ["", "uds=/x", "cid=2", "cid=x", "cid=3,uds=", "cid=3,port=1"] {
            assert!(bad.parse::<VsockConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn device_names() {
        let mut c = VmConfig::new("k".into());
        assert_eq!(
            [0, 1, 25, 26, 27].map(|i| c.disk_id(i)),
            ["vda", "vdb", "vdz", "vdaa", "vdab"]
        );
        c.disk_ids = vec!["root".into()];
        assert_eq!((c.disk_id(0), c.disk_id(1)), ("root".into(), "vdb".into()));
        assert_eq!(c.net_id(1), "eth1");
    }

    #[test]
    fn the_root_disk_goes_first_and_is_alone() {
        let disk = |p: &str, root| DiskConfig {
            path: p.into(),
            read_only: false,
            root,
            rate_limiter: None,
        };
        let mut c = VmConfig::new("k".into());
        let disks = vec![
            ("data".to_string(), disk("/d", false)),
            ("root".to_string(), disk("/r", true)),
            ("more".to_string(), disk("/m", false)),
        ];
        c.set_disks(disks.clone());
        assert_eq!(c.disk_ids, ["root", "data", "more"]);
        assert_eq!(c.root_disk().map(|d| d.path.clone()), Some("/r".into()));
        assert_eq!(c.validate(1024), Ok(()));
        c.disks.swap(0, 1);
        assert_eq!(c.validate(1024), Err(ConfigError::RootNotFirst));
        let mut two = disks;
        two.push(("other".to_string(), disk("/o", true)));
        c.set_disks(two);
        assert_eq!(c.disk_ids, ["root", "other", "data", "more"]);
        assert_eq!(c.validate(1024), Err(ConfigError::RootNotFirst));
        assert_eq!(
            check_one_root([("a", false), ("b", true), ("c", false), ("d", true)])
                .map_err(|(i, _)| i),
            Err(3)
        );
    }

    #[test]
    fn host_ram_is_known() {
        assert!(host_ram_mib() > 0);
    }
}
