#!/usr/bin/env bash
# Boot benchmark: hvlite against qemu-system-x86_64 -M microvm -accel tcg, same kernel and
# initramfs, N runs each (default 5; RUNS=N or first argument). Writes JSON to
# bench/results/boot.json (or $OUT) and prints a summary.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
RUNS="${1:-${RUNS:-5}}"
OUT="${OUT:-bench/results/boot.json}"

source scripts/apt.sh
install_missing bench-boot qemu-system-x86_64:qemu-system-x86
# KVM's debugfs counters (emulated instructions, exits, injected IRQs) explain where an
# emulated boot spends its time; mount debugfs if it is not there yet.
if [ ! -d /sys/kernel/debug/kvm ] && [ "$(id -u)" = 0 ]; then
    mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
fi
KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
INITRD="$(bash scripts/build-initramfs.sh | tail -n 1)"
ROOTFS="$(bash scripts/build-initramfs.sh --ext4 | tail -n 1)"
cargo build --release --bin hvlite >&2
exec python3 scripts/bench_boot.py --hvlite target/release/hvlite --kernel "$KERNEL" \
    --initrd "$INITRD" --rootfs "$ROOTFS" --runs "$RUNS" --out "$OUT" ${CMDLINE:+--cmdline "$CMDLINE"}
