//! virtio-mmio transport (TODO).
