#!/usr/bin/env bash
# Standalone reproducer of the PVM concurrent-process defect (docs/pvm-defect.md) for the
# host's maintainers: builds probe.c (a static program without libc), appends it to the
# project's initramfs as /pvm-probe, and boots one hvlite VM whose shell runs ROUNDS rounds
# of three concurrent process starts:
#
#     /pvm-probe & /pvm-probe write 8 | /pvm-probe read 8; wait
#
# Every `PROBE-BAD` line (a check of a fresh process's memory that failed) and every kernel
# crash report (`segfault at`) on the console is the defect. On hardware KVM there are none.
#
#   scripts/pvm-defect/reproduce.sh [ROUNDS] [VCPUS]    (defaults 50 and 1)
#
# It takes the shared VM lock (/tmp/hvlite-vm.lock, or $VM_LOCK) for the boot; the console
# goes to $LOG (default: a temp file, printed at the end with the counts).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."
ROUNDS="${1:-50}"
VCPUS="${2:-1}"
VM_LOCK="${VM_LOCK:-/tmp/hvlite-vm.lock}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
LOG="${LOG:-$work/console.log}"

KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
INITRD="$(bash scripts/build-initramfs.sh | tail -n 1)"
cargo build --release --bin hvlite >&2
gcc -static -nostdlib -O2 -fno-stack-protector -fno-builtin -no-pie \
    -o "$work/pvm-probe" scripts/pvm-defect/probe.c
# The kernel unpacks concatenated newc archives one after the other.
(cd "$work" && echo pvm-probe | cpio -o -H newc --owner 0:0 --quiet >"$work/probe.cpio")
cat "$INITRD" "$work/probe.cpio" >"$work/initrd.cpio"

loop="i=0; while [ \$i -lt $ROUNDS ]; do /pvm-probe & /pvm-probe write 8 | /pvm-probe read 8; \
wait; echo ROUND-\$i; i=\$((i+1)); done; echo ROUNDS-DONE"
echo "reproduce: $ROUNDS rounds, $VCPUS vCPU(s), $((3 * ROUNDS)) process starts" >&2
flock "$VM_LOCK" target/release/hvlite run --cpus "$VCPUS" --kernel "$KERNEL" \
    --initrd "$work/initrd.cpio" -- /bin/sh -c "$loop" >"$LOG" 2>&1 || true
rounds=$(grep -c -E '^ROUND-[0-9]+' "$LOG" || true)
bad=$(grep -c 'PROBE-BAD' "$LOG" || true)
crashes=$(grep -c -E '\]: segfault at |traps: .*\] (trap|general protection)' "$LOG" || true)
grep -E 'PROBE-BAD|\]: segfault at |traps: ' "$LOG" | head -n 20 >&2 || true
echo "reproduce: $rounds rounds done ($((3 * rounds)) starts): $bad failed checks, $crashes crashes"
