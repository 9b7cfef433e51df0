//! Emulated devices and the buses they sit on.

pub mod bus;
pub mod exit_port;
pub mod i8042;
pub mod serial;
pub mod virtio;
