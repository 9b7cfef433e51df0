#!/usr/bin/env bash
# OCI runtime benchmark: `podman run --rm IMAGE /bin/true` with hvlite-runtime, runc and
# crun side by side (RUNS=N each, default 3; HVLITE_RUNS for hvlite, default RUNS), with
# the runtime's create and start times taken by a timing wrapper around each runtime.
# podman's storage is a scratch directory; the image is imported from the busybox root.
# Writes bench/results/oci.json (or $OUT). PROFILE=debug uses the debug build.
# Run it under the VM lock: flock /tmp/hvlite-vm.lock bash scripts/bench-oci.sh
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
RUNS="${RUNS:-3}"
HVLITE_RUNS="${HVLITE_RUNS:-$RUNS}"
OUT="${OUT:-bench/results/oci.json}"
PROFILE="${PROFILE:-release}"

source scripts/apt.sh
install_missing bench-oci podman runc crun
KERNEL="${HVLITE_KERNEL:-$(bash scripts/build-kernel.sh | tail -n 1)}"
AGENT="${HVLITE_AGENT:-$(bash scripts/build-initramfs.sh --agent | tail -n 1)}"
ROOTFS="${HVLITE_ROOTFS_DIR:-$(bash scripts/build-initramfs.sh --dir | tail -n 1)}"
if [ "$PROFILE" = release ]; then
    cargo build --release --bin hvlite-runtime >&2
else
    cargo build --bin hvlite-runtime >&2
fi
exec python3 scripts/bench_oci.py --runtime "target/$PROFILE/hvlite-runtime" --profile "$PROFILE" \
    --kernel "$KERNEL" --agent "$AGENT" --rootfs "$ROOTFS" --runs "$RUNS" \
    --hvlite-runs "$HVLITE_RUNS" --out "$OUT"
