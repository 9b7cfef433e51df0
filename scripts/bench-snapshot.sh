#!/usr/bin/env bash
# Snapshot benchmark (scripts/bench_snapshot.py): snapshot create time, `--restore` and
# PUT /snapshot/load latency, process start to the restored guest's first KVM_RUN (medians
# of RUNS, default 10), the files' sizes, and the PSS of RESTORED_VMS (default 10) VMs
# restored from one snapshot against COLD_VMS (default 3) cold-booted ones. Boots Linux
# COLD_VMS times (tens of seconds each on PVM hosts). Writes bench/results/snapshot.json
# (or $OUT).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
OUT="${OUT:-bench/results/snapshot.json}"
KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
INITRD="$(bash scripts/build-initramfs.sh | tail -n 1)"
cargo build --release --bin hvlite >&2
exec python3 scripts/bench_snapshot.py --hvlite target/release/hvlite --kernel "$KERNEL" \
    --initrd "$INITRD" --runs "${RUNS:-10}" --restored-vms "${RESTORED_VMS:-10}" \
    --cold-vms "${COLD_VMS:-3}" --out "$OUT"
