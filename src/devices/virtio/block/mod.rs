//! virtio-blk (TODO).
