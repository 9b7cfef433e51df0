//! hvlite: a hypervisor-lite virtual machine monitor built on KVM and the rust-vmm crates.

pub mod agent;
pub mod api;
pub mod boot;
pub mod container;
pub mod control;
pub mod devices;
pub mod host;
pub mod initcmd;
pub mod logging;
pub mod metrics;
pub mod vcpu;
pub mod vmm;
