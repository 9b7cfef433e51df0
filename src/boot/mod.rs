//! Everything needed to put a Linux kernel into guest memory and enter it in 64-bit mode.

pub mod cmdline;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod paging;
pub mod zeropage;
