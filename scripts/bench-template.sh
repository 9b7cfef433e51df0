#!/usr/bin/env bash
# Template benchmark (scripts/bench_template.py): `hvlite run --rootfs <busybox dir> --
# /bin/true` restored from a template against cold boots and `runc run` of the same
# directory (medians of RUNS and COLD_RUNS, default 10 each), what hvlite logs of each
# restore, the PSS of VMS (default 10) containers restored from one template at once
# against COLD_VMS (default 10) cold-booted ones, the template's build time and file
# sizes. Writes bench/results/template.json (or $OUT).
#
# Boots VMs: it takes the shared VM lock (VM_LOCK, /tmp/hvlite-vm.lock) for each of its
# three parts (template, cold runs, cold PSS; a few minutes each on PVM hosts), so do
# NOT wrap it in flock yourself. The parts share a scratch cache directory.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
OUT="${OUT:-bench/results/template.json}"
VM_LOCK="${VM_LOCK:-/tmp/hvlite-vm.lock}"
export HVLITE_KERNEL="${HVLITE_KERNEL:-$(bash scripts/build-kernel.sh | tail -n 1)}"
export HVLITE_AGENT="${HVLITE_AGENT:-$(bash scripts/build-initramfs.sh --agent | tail -n 1)}"
ROOTFS="${HVLITE_ROOTFS_DIR:-$(bash scripts/build-initramfs.sh --dir | tail -n 1)}"
command -v runc >/dev/null || { echo "bench-template: runc is needed" >&2; exit 1; }
cargo build --release --bin hvlite >&2
WORK="$(mktemp -d /tmp/hvlite-bench-template.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
for part in template cold-runs cold-pss; do
    echo "bench-template: part $part (waiting for $VM_LOCK)" >&2
    flock "$VM_LOCK" python3 scripts/bench_template.py --hvlite target/release/hvlite \
        --rootfs "$ROOTFS" --part "$part" --workdir "$WORK" --runs "${RUNS:-10}" \
        --cold-runs "${COLD_RUNS:-10}" --vms "${VMS:-10}" --cold-vms "${COLD_VMS:-10}" \
        --out "$OUT"
done
cat "$OUT"
