#!/usr/bin/env bash
# virtio-fs benchmark (scripts/bench_fs.py): file write/read throughput, file creation and
# an untar through virtio-fs against the ext4 image on virtio-blk and against the host, in
# one boot; then container start time with --rootfs-mode image and virtiofs
# -> bench/results/fs.json. Boots VMs: run it under the VM lock on shared machines
#   flock /tmp/hvlite-vm.lock bash scripts/bench-fs.sh [--part io|start] [--runs N]
# (--part runs one half and merges it into the JSON: each half is a shorter locked job)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
mkdir -p bench/results
KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
INITRD="$(bash scripts/build-initramfs.sh | tail -n 1)"
ROOTFS_DIR="$(bash scripts/build-initramfs.sh --dir | tail -n 1)"
# Container runs use this tree's kernel and agent (the agent mounts virtio-fs roots).
HVLITE_KERNEL="$KERNEL"
HVLITE_AGENT="$(bash scripts/build-initramfs.sh --agent | tail -n 1)"
export HVLITE_KERNEL HVLITE_AGENT
HVLITE_VIRTIOFSD="$(bash scripts/install-virtiofsd.sh | tail -n 1)"
export HVLITE_VIRTIOFSD
cargo build --release --bin hvlite >&2
python3 scripts/bench_fs.py --hvlite target/release/hvlite --kernel "$KERNEL" \
    --initrd "$INITRD" --rootfs-dir "$ROOTFS_DIR" --out bench/results/fs.json "$@"
