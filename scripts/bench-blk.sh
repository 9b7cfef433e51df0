#!/usr/bin/env bash
# virtio-blk benchmark, two parts:
#  1. the device path alone (no guest kernel in the way): a host-side driver fills the
#     virtqueue and kicks the ioeventfd; against raw pread/pwrite on the same file
#     (benches/blk_device.rs) -> bench/results/blk-device.json
#  2. through the real guest: busybox dd on /dev/vdb against the same dd on the host file
#     -> bench/results/blk-guest.json
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
mkdir -p bench/results
echo "== device path (cargo bench --bench blk_device)" >&2
HVLITE_BENCH_OUT=bench/results/blk-device.json cargo bench --bench blk_device
echo "== through the guest" >&2
KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
ROOTFS="$(bash scripts/build-initramfs.sh --ext4 | tail -n 1)"
cargo build --release --bin hvlite >&2
python3 scripts/bench_blk.py --hvlite target/release/hvlite --kernel "$KERNEL" \
    --rootfs "$ROOTFS" --out bench/results/blk-guest.json
