#!/usr/bin/env bash
# Template benchmark (scripts/bench_template.py): `hvlite run --rootfs <busybox dir> --
# /bin/true` restored from a template (medians of RUNS, default 10) against cold boots
# (COLD_RUNS, default 3: each costs a Linux boot, tens of seconds on PVM hosts) and
# `runc run` of the same directory (RUNS); the PSS of VMS (default 10) containers restored
# at once against COLD_VMS (default 2) cold-booted ones; the template's build time and file
# sizes. Uses a scratch cache directory. Writes bench/results/template.json (or $OUT).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
OUT="${OUT:-bench/results/template.json}"
export HVLITE_KERNEL="${HVLITE_KERNEL:-$(bash scripts/build-kernel.sh | tail -n 1)}"
export HVLITE_AGENT="${HVLITE_AGENT:-$(bash scripts/build-initramfs.sh --agent | tail -n 1)}"
ROOTFS="${HVLITE_ROOTFS_DIR:-$(bash scripts/build-initramfs.sh --dir | tail -n 1)}"
command -v runc >/dev/null || { echo "bench-template: runc is needed" >&2; exit 1; }
cargo build --release --bin hvlite >&2
exec python3 scripts/bench_template.py --hvlite target/release/hvlite --rootfs "$ROOTFS" \
    --runs "${RUNS:-10}" --cold-runs "${COLD_RUNS:-3}" --vms "${VMS:-10}" \
    --cold-vms "${COLD_VMS:-2}" --out "$OUT"
