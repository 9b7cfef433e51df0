#!/usr/bin/env bash
# virtio-net benchmark (needs root, /dev/net/tun and iproute2), two parts:
#  1. the device path alone: a host-side driver pushes TX frames through the virtqueue into
#     a TAP, against a raw writev loop to the same TAP (benches/net_device.rs)
#     -> bench/results/net-device.json
#  2. through the real guest in a private network namespace: TCP throughput both ways and
#     ping round trips -> bench/results/net-guest.json
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
mkdir -p bench/results
echo "== device path (cargo bench --bench net_device)" >&2
HVLITE_BENCH_OUT=bench/results/net-device.json cargo bench --bench net_device
echo "== through the guest" >&2
KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
INITRD="$(bash scripts/build-initramfs.sh | tail -n 1)"
cargo build --release --bin hvlite >&2
python3 scripts/bench_net.py --hvlite target/release/hvlite --kernel "$KERNEL" \
    --initrd "$INITRD" --out bench/results/net-guest.json
