#!/usr/bin/env bash
# containerd shim benchmark: `ctr run --rm IMAGE /bin/true` with hvlite's shim
# (io.containerd.hvlite.v2) and containerd's runc shim (io.containerd.runc.v2), side by side
# against one private containerd (own root, state, socket; the image is an OCI archive of
# the busybox root, imported). RUNS=N each (default 5; HVLITE_RUNS for hvlite, default 3).
# Writes bench/results/shim.json (or $OUT). PROFILE=debug uses the debug build.
# Run it under the VM lock: flock /tmp/hvlite-vm.lock bash scripts/bench-shim.sh
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
RUNS="${RUNS:-5}"
HVLITE_RUNS="${HVLITE_RUNS:-3}"
OUT="${OUT:-bench/results/shim.json}"
PROFILE="${PROFILE:-release}"

source scripts/apt.sh
install_missing bench-shim containerd runc
KERNEL="${HVLITE_KERNEL:-$(bash scripts/build-kernel.sh | tail -n 1)}"
AGENT="${HVLITE_AGENT:-$(bash scripts/build-initramfs.sh --agent | tail -n 1)}"
ROOTFS="${HVLITE_ROOTFS_DIR:-$(bash scripts/build-initramfs.sh --dir | tail -n 1)}"
if [ "$PROFILE" = release ]; then
    cargo build --release -p containerd-shim-hvlite >&2
else
    cargo build -p containerd-shim-hvlite >&2
fi
exec python3 scripts/bench_shim.py --shim "target/$PROFILE/containerd-shim-hvlite-v2" \
    --profile "$PROFILE" --kernel "$KERNEL" --agent "$AGENT" --rootfs "$ROOTFS" \
    --runs "$RUNS" --hvlite-runs "$HVLITE_RUNS" --out "$OUT"
