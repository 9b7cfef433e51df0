//! hvlite: a hypervisor-lite virtual machine monitor built on KVM and the rust-vmm crates.

pub mod api;
pub mod boot;
pub mod devices;
pub mod host;
pub mod initcmd;
pub mod vcpu;
pub mod vmm;
