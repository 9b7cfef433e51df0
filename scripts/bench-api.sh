#!/usr/bin/env bash
# Control-plane benchmark (scripts/bench_api.py): process start to API socket ready (wall
# and CPU ms, SOCKET_RUNS runs, default 20), InstanceStart to the guest init's marker and
# SendCtrlAltDel to exit (BOOT_RUNS runs, default 3), and with COMPARE_KERNEL=PATH the
# boot-time cost of the guest's i8042/atkbd/VT support against that kernel. Writes
# bench/results/api.json (or $OUT).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
OUT="${OUT:-bench/results/api.json}"
KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
INITRD="$(bash scripts/build-initramfs.sh | tail -n 1)"
cargo build --release --bin hvlite >&2
exec python3 scripts/bench_api.py --hvlite target/release/hvlite --kernel "$KERNEL" \
    --initrd "$INITRD" --socket-runs "${SOCKET_RUNS:-20}" --boot-runs "${BOOT_RUNS:-3}" \
    --out "$OUT" ${COMPARE_KERNEL:+--compare-kernel "$COMPARE_KERNEL"}
