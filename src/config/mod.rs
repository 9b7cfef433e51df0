//! hvlite's configuration schema, one for every front end: the config file
//! (`hvlite run --config`, [`crate::vmm::config_file`]) and the API bodies
//! ([`crate::api::model`]) are made of the same [`resources`], whose fields are the checked
//! [`values`]; both turn them into the [`VmConfig`] the VMM boots ([`vm`]).
//!
//! Field names follow Firecracker's. Values are checked while parsing, so a parsed
//! resource is valid by construction; what spans several entries (unique ids, at most one
//! root drive) is checked by the functions here, which both front ends call.

pub mod fs;
pub mod resources;
pub mod values;
pub mod vm;

pub use fs::{FsConfig, FsConfigError, FsDevice, MountTag, check_shares};
pub use resources::{
    Balloon, BalloonStatsUpdate, BalloonUpdate, BootSource, Drive, DrivePatch, Entropy, Logger,
    MachineConfig, MetricsConfig, NetworkInterface, NetworkInterfacePatch, Vsock,
};
pub use values::{
    CpuTemplate, DeviceId, EnvVar, FlushSecs, GuestCid, HostPath, HugePages, MacAddr, MemSizeMib,
    RateLimiterConfig, Smt, TapName, TokenBucketConfig, VcpuCount,
};
pub use vm::{
    ConfigError, DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DiskConfig, EntropyConfig, NetConfig,
    SecondRoot, VmConfig, VsockConfig, check_one_root, host_ram_mib,
};
