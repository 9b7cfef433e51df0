//! The guest agent: hvlite runs a container's process inside the microVM through an agent in
//! the guest (`hvlite-init` in agent mode), over virtio-vsock. [`protocol`] is the wire
//! format both sides speak; the constants here are the rest of the contract: how the host
//! boots the agent and what the agent disk holds.
//!
//! # Booting the agent
//!
//! The VM boots from the *agent disk*, a small read-only ext4 image that holds only the
//! static `hvlite-init` at [`AGENT_INIT_PATH`] and the empty directories [`AGENT_DISK_DIRS`]
//! (the image is read-only, so the agent cannot create them), with
//! `root=/dev/vda ro rootfstype=ext4 init=/hvlite-init` plus [`CMDLINE_AGENT`] on the kernel
//! command line. The container's image is another ext4 disk, named by [`CMDLINE_ROOT`]
//! (default [`DEFAULT_ROOT_DEVICE`]) and mounted as [`CMDLINE_ROOT_MODE`] says:
//! [`ROOT_MODE_OVERLAY`] (default; the image may be shared and read-only, changes go to a
//! tmpfs and are discarded) or [`ROOT_MODE_RW`] (mounted read-write, changes persist).
//! The guest kernel needs ext4, tmpfs, overlayfs, devtmpfs, proc, sysfs and virtio-vsock.

pub mod protocol;

/// Where the agent disk holds the init (the kernel's `init=`).
pub const AGENT_INIT_PATH: &str = "/hvlite-init";
/// The empty directories the agent disk must have.
pub const AGENT_DISK_DIRS: [&str; 6] = ["/dev", "/proc", "/sys", "/run", "/lower", "/newroot"];
/// Kernel command line option that turns the agent mode of `hvlite-init` on.
pub const CMDLINE_AGENT: &str = "hvlite.agent=1";
/// Kernel command line option naming the container's root device (`hvlite.root=/dev/vdb`).
pub const CMDLINE_ROOT: &str = "hvlite.root";
/// Kernel command line option choosing how the root device is mounted
/// (`hvlite.rootmode=overlay` or `hvlite.rootmode=rw`).
pub const CMDLINE_ROOT_MODE: &str = "hvlite.rootmode";
/// Kernel option of a template VM (`hvlite.template=1`): the agent's first connection is to
/// the template builder, which snapshots the VM while the agent waits on it; after a
/// restore the agent reconnects, says Hello again and waits for the root device to get a
/// capacity before mounting it (the template's root drive is an empty placeholder).
pub const CMDLINE_TEMPLATE: &str = "hvlite.template=1";
/// The container's root device when [`CMDLINE_ROOT`] is not given.
pub const DEFAULT_ROOT_DEVICE: &str = "/dev/vdb";
/// [`CMDLINE_ROOT_MODE`] value: read-only image under a tmpfs-backed overlay.
pub const ROOT_MODE_OVERLAY: &str = "overlay";
/// [`CMDLINE_ROOT_MODE`] value: the image mounted read-write.
pub const ROOT_MODE_RW: &str = "rw";

/// Test-only kernel command line option: the agent crashes with a real page fault (as the
/// PVM host defect makes it crash, see docs/pvm-defect.md) after its `Hello` and before it
/// starts the process. hvlite adds it to the first boot of a container VM when its own
/// environment has [`TEST_CRASH_ENV`]`=before-start`, so that the retry of such a run can be
/// tested; nothing else sets it.
pub const CMDLINE_TEST_CRASH: &str = "hvlite.test_crash=before-start";
/// Test-only environment variable of hvlite (see [`CMDLINE_TEST_CRASH`]).
pub const TEST_CRASH_ENV: &str = "HVLITE_AGENT_TEST_CRASH";
/// [`CMDLINE_ROOT`] prefix of a root that is a virtio-fs share (`hvlite.root=virtiofs:TAG`)
/// rather than a block device.
pub const VIRTIOFS_ROOT_PREFIX: &str = "virtiofs:";
/// Kernel command line option listing host directories (virtio-fs tags) to mount in the
/// container: `hvlite.volumes=TAG:/guest/path[:ro],...`.
pub const CMDLINE_VOLUMES: &str = "hvlite.volumes";
