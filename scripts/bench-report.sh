#!/usr/bin/env bash
# The one benchmark report (docs/benchmarks.md): every workload for every system found on
# the host (hvlite cold boot and template restore, runc, crun, QEMU microvm, podman with
# hvlite-runtime, containerd with the hvlite shim), alternating the systems per iteration.
# Writes OUT/results.json and OUT/index.html (self-contained, inline SVG plots).
#   scripts/bench-report.sh [--quick] [--out DIR] [--iterations N] [--only ID,ID] [--groups G,G]
# --quick (CI): each workload once on small sizes, density at 1 and 2 instances, then the
# page is checked (tags balanced, one plot per workload). Run it as root (TAP, netns) and
# under the shared VM lock: flock /tmp/hvlite-vm.lock scripts/bench-report.sh --quick
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
OUT="bench/report"
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) ARGS+=(--quick) ;;
        --out) OUT="${2:?--out needs a directory}"; shift ;;
        --iterations|--only|--groups) ARGS+=("$1" "${2:?$1 needs a value}"); shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-report: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# The systems under test, from Debian (a missing one is skipped with a line in the report).
source scripts/apt.sh
systems=(runc crun qemu-system-x86_64:qemu-system-x86 podman mkfs.ext4:e2fsprogs)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    install_missing bench-report "${systems[@]}" \
        || echo "bench-report: could not install all of them; a missing system is skipped" >&2
fi

KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
AGENT="$(bash scripts/build-initramfs.sh --agent | tail -n 1)"
ROOTFS="$(bash scripts/build-initramfs.sh --dir | tail -n 1)"
echo "bench-report: building hvlite, hvlite-runtime and the report renderer (release)" >&2
cargo build --release -p hvlite -p hvlite-bench --bin hvlite --bin hvlite-runtime \
    --bin hvlite-bench-report >&2
# The probe runs inside every system, so it is static (like the guest agent).
TARGET=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p hvlite-bench-probe --target "$TARGET" --target-dir target/guest >&2
exec python3 scripts/bench_report.py --hvlite target/release/hvlite \
    --runtime target/release/hvlite-runtime --renderer target/release/hvlite-bench-report \
    --probe "target/guest/$TARGET/release/hvlite-bench-probe" --kernel "$KERNEL" \
    --agent "$AGENT" --rootfs "$ROOTFS" --out "$OUT" "${ARGS[@]}"
