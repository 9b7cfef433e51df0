//! hvlite: a hypervisor-lite virtual machine monitor built on KVM and the rust-vmm crates.

pub mod api;
pub mod boot;
pub mod config;
pub mod container;
pub mod control;
pub mod devices;
pub mod exit;
pub mod host;
pub mod logging;
pub mod metrics;
pub mod oci;
pub mod process_stats;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vmm;

// The host/guest contract lives in its own crate, which the static guest agent also builds.
pub use hvlite_protocol::{agent, initcmd};
