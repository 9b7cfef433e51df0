#!/usr/bin/env bash
# Container benchmark: `hvlite run --rootfs DIR -- /bin/true` against `runc run` of the
# same busybox root directory, N runs each (default 5; RUNS=N or first argument), plus
# the virtio-vsock stream throughput guest -> host. Writes bench/results/container.json
# (or $OUT) and prints a summary.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
RUNS="${1:-${RUNS:-5}}"
OUT="${OUT:-bench/results/container.json}"
VSOCK_MIB="${VSOCK_MIB:-16}"

source scripts/apt.sh
install_missing bench-container runc
KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
AGENT="$(bash scripts/build-initramfs.sh --agent | tail -n 1)"
ROOTFS="$(bash scripts/build-initramfs.sh --dir | tail -n 1)"
cargo build --release --bin hvlite >&2
exec python3 scripts/bench_container.py --hvlite target/release/hvlite --kernel "$KERNEL" \
    --agent "$AGENT" --rootfs "$ROOTFS" --runs "$RUNS" --vsock-mib "$VSOCK_MIB" --out "$OUT"
