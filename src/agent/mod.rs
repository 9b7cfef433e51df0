//! The guest agent: hvlite runs a container's process inside the microVM through an agent in
//! the guest (`hvlite-init` in agent mode), over virtio-vsock. [`protocol`] is the wire
//! format both sides speak.

pub mod protocol;
