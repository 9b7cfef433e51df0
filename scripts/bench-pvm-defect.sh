#!/usr/bin/env bash
# Measures the PVM host defect described in docs/pvm-host.md: guest processes started
# at the same time sometimes read another address space's memory and crash. Boots the
# project's kernel and initramfs once per vCPU count in VCPUS (default "1 2"), runs ROUNDS
# (default 25) rounds of `busybox true & busybox echo x | busybox cat; wait` (3 process
# starts each) and counts the kernel's crash reports on the console. Writes
# bench/results/pvm-defect.json (or $OUT). On hardware KVM every count should be 0.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
OUT="${OUT:-bench/results/pvm-defect.json}"
ROUNDS="${ROUNDS:-25}"
VCPUS="${VCPUS:-1 2}"
KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
INITRD="$(bash scripts/build-initramfs.sh | tail -n 1)"
cargo build --release --bin hvlite >&2
script="i=0; while [ \$i -lt $ROUNDS ]; do /bin/busybox true & \
/bin/busybox echo x | /bin/busybox cat >/dev/null; wait; i=\$((i+1)); done; echo ROUNDS-DONE"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
rows=()
for n in $VCPUS; do
    echo "bench-pvm-defect: $n vCPU(s), $ROUNDS rounds" >&2
    start=$EPOCHREALTIME
    target/release/hvlite run --cpus "$n" --kernel "$KERNEL" --initrd "$INITRD" \
        -- /bin/sh -c "$script" >"$log" 2>&1 || true
    wall=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    grep -q ROUNDS-DONE "$log" || { echo "bench-pvm-defect: the loop did not finish:" >&2; tail -n 20 "$log" >&2; exit 1; }
    crashes=$(grep -c -E '\]: segfault at |traps: .*\] (trap|general protection)' "$log" || true)
    echo "bench-pvm-defect: $crashes crashes in $((ROUNDS * 3)) process starts, ${wall} s" >&2
    rows+=("{\"vcpus\": $n, \"rounds\": $ROUNDS, \"process_starts\": $((ROUNDS * 3)), \"crashes\": $crashes, \"wall_s\": $wall}")
done
host_kind=hardware
[ -d /sys/module/kvm_pvm ] && [ ! -d /sys/module/kvm_intel ] && [ ! -d /sys/module/kvm_amd ] && host_kind=pvm
mkdir -p "$(dirname "$OUT")"
{
    printf '{\n  "host_kind": "%s",\n  "loop": "busybox true & busybox echo x | busybox cat; wait",\n  "runs": [\n' "$host_kind"
    for i in "${!rows[@]}"; do
        sep=","; [ "$i" -eq $((${#rows[@]} - 1)) ] && sep=""
        printf '    %s%s\n' "${rows[$i]}" "$sep"
    done
    printf '  ]\n}\n'
} >"$OUT"
cat "$OUT"
