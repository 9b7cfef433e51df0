#!/usr/bin/env bash
# Sets up everything hvlite needs on a fresh Debian machine with /dev/kvm (packages, the
# guest kernel, the initramfs, a release build) and boots a 2-vCPU microVM that runs
# `uname -a` and counts the processors it sees.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

log() { printf '== %s\n' "$*" >&2; }

log "guest kernel (cached after the first build)"
KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
log "guest initramfs"
INITRD="$(bash scripts/build-initramfs.sh | tail -n 1)"
log "hvlite release build"
cargo build --release --bin hvlite >&2

log "booting: hvlite run --kernel $KERNEL --initrd $INITRD --cpus 2 -- ..."
exec target/release/hvlite run --kernel "$KERNEL" --initrd "$INITRD" --cpus 2 \
    -- /bin/sh -c 'uname -a; cat /proc/cpuinfo | grep -c processor'
