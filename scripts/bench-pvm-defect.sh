#!/usr/bin/env bash
# Measures the PVM host defect described in docs/pvm-defect.md: guest processes started
# at the same time sometimes read another address space's memory and crash.
#
# For each measure in MEASURES, each vCPU count in VCPUS and each workload in WORKLOADS it
# runs rounds of `true & echo x | cat; wait` (3 process starts per round) until STARTS
# process starts are done, in chunks of CHUNK_ROUNDS rounds, one VM boot per chunk, each
# chunk under the shared VM lock (do NOT wrap this script in flock yourself: it takes
# the lock per chunk, so that other jobs get their turn). It counts the kernel's crash
# reports on the console and writes bench/results/pvm-defect.json (or $OUT).
#
# Workloads:
#   busybox  the project's kernel and initramfs, a plain VM, static busybox
#   debian   a container run (`hvlite run --rootfs`) of a Debian bookworm minbase root
#            (dynamically linked coreutils), made with Debian's debootstrap and cached in
#            ${HVLITE_CACHE:-~/.cache/hvlite}/debian/bookworm-minbase
# Measures are NAME=KERNEL-OPTIONS, e.g. "baseline= pgd_fifo=hvlite.pgd_fifo=64" (that one
# needs KERNEL built with scripts/pvm-defect/pgd-fifo.patch: docs/pvm-defect.md, "Measuring").
#
# Environment: MEASURES (default "baseline="), VCPUS ("1 2"), WORKLOADS ("busybox"),
# STARTS (750), DEBIAN_STARTS (150), CHUNK_ROUNDS (50), DEBIAN_CHUNK_ROUNDS (20),
# CHUNK_TIMEOUT (290 s), VM_LOCK (/tmp/hvlite-vm.lock), OUT, KERNEL (the guest kernel;
# default: the one scripts/build-kernel.sh builds). On hardware KVM every count should be 0.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
OUT="${OUT:-bench/results/pvm-defect.json}"
MEASURES="${MEASURES:-baseline=}"
VCPUS="${VCPUS:-1 2}"
WORKLOADS="${WORKLOADS:-busybox}"
STARTS="${STARTS:-750}"
DEBIAN_STARTS="${DEBIAN_STARTS:-150}"
CHUNK_ROUNDS="${CHUNK_ROUNDS:-50}"
DEBIAN_CHUNK_ROUNDS="${DEBIAN_CHUNK_ROUNDS:-20}"
CHUNK_TIMEOUT="${CHUNK_TIMEOUT:-290}"
VM_LOCK="${VM_LOCK:-/tmp/hvlite-vm.lock}"
CACHE="${HVLITE_CACHE:-$HOME/.cache/hvlite}"

source scripts/apt.sh
log() { echo "bench-pvm-defect: $*" >&2; }

KERNEL="${KERNEL:-$(bash scripts/build-kernel.sh | tail -n 1)}"
INITRD="$(bash scripts/build-initramfs.sh | tail -n 1)"
AGENT="$(bash scripts/build-initramfs.sh --agent | tail -n 1)"
cargo build --release --bin hvlite >&2
HVLITE=target/release/hvlite

# A Debian bookworm minbase root, built once with debootstrap and cached outside the repo.
debian_root() {
    local root="$CACHE/debian/bookworm-minbase"
    if [ ! -x "$root/bin/sh" ]; then
        install_missing bench-pvm-defect debootstrap
        log "debootstrap --variant=minbase bookworm (once, cached in $root)"
        rm -rf "$root.tmp"
        mkdir -p "$(dirname "$root")"
        debootstrap --variant=minbase bookworm "$root.tmp" http://deb.debian.org/debian >&2
        mv "$root.tmp" "$root"
    fi
    echo "$root"
}

# One chunk: boots a VM that runs ROUNDS rounds and prints one line
# "<rounds done> <crashes> <boot s> <loop s>".
run_chunk() {
    local workload=$1 vcpus=$2 opts=$3 rounds=$4 log=$5 prefix=$6
    local loop="i=0; while [ \$i -lt $rounds ]; do ${prefix}true & ${prefix}echo x | \
${prefix}cat >/dev/null; wait; echo ROUND-\$i; i=\$((i+1)); done; echo ROUNDS-DONE"
    local cmd=("$HVLITE" run --cpus "$vcpus" --kernel "$KERNEL")
    [ -n "$opts" ] && cmd+=(--cmdline "$opts")
    if [ "$workload" = debian ]; then
        cmd+=(--rootfs "$DEBIAN_ROOT" --console)
    else
        cmd+=(--initrd "$INITRD")
    fi
    cmd+=(-- /bin/sh -c "$loop")
    local start end
    exec 8>"$VM_LOCK"
    flock 8
    start=$EPOCHREALTIME
    HVLITE_AGENT="$AGENT" RUST_LOG=info timeout "$CHUNK_TIMEOUT" "${cmd[@]}" >"$log" 2>&1 || true
    end=$EPOCHREALTIME
    flock -u 8
    exec 8>&-
    local done crashes boot first
    done=$(grep -c -E '^ROUND-[0-9]+' "$log" || true)
    crashes=$(grep -c -E '\]: segfault at |traps: .*\] (trap|general protection)' "$log" || true)
    # Boot: until the first round ended (the guest init or the agent has started by then).
    first=$(grep -m1 -n -E '^ROUND-0' "$log" | cut -d: -f1 || true)
    boot=$(grep -m1 -o -E '(guest init started|guest agent connected) [0-9.]+ ms' "$log" |
        grep -o -E '[0-9.]+' | head -n1 || true)
    if [ -z "$first" ]; then
        log "the chunk finished no round; its last lines:"
        tail -n 5 "$log" >&2
    fi
    awk -v a="$start" -v b="$end" -v boot="${boot:-0}" -v d="$done" -v c="$crashes" \
        'BEGIN { printf "%d %d %.1f %.1f\n", d, c, boot / 1000, (b - a) - boot / 1000 }'
}

host_kind=hardware
[ -d /sys/module/kvm_pvm ] && [ ! -d /sys/module/kvm_intel ] && [ ! -d /sys/module/kvm_amd ] && host_kind=pvm
# A module's parameters (those readable) as a JSON object: the defect varies by host.
module_params() {
    local f sep=""
    printf '{'
    for f in /sys/module/"$1"/parameters/*; do
        [ -r "$f" ] || continue
        printf '%s"%s": "%s"' "$sep" "$(basename "$f")" "$(tr -d '"\\\n' <"$f" 2>/dev/null)"
        sep=", "
    done
    printf '}'
}
host_booted=$(date -u -d "@$(awk '/^btime/ { print $2 }' /proc/stat)" +%Y-%m-%dT%H:%MZ)
started=$(date -u +%Y-%m-%dT%H:%MZ)
# Written after every configuration, so that an interrupted run keeps what it measured.
write_results() {
    mkdir -p "$(dirname "$OUT")"
    {
        printf '{\n  "host_kind": "%s",\n  "kernel": "%s",\n' "$host_kind" "$(basename "$(dirname "$KERNEL")")"
        printf '  "host": {"kernel_release": "%s", "booted": "%s", "cpus": %d, "kvm_pvm": %s, "kvm": %s},\n' \
            "$(uname -r)" "$host_booted" "$(nproc)" "$(module_params kvm_pvm)" "$(module_params kvm)"
        printf '  "measured": {"from": "%s", "to": "%s"},\n' "$started" "$(date -u +%Y-%m-%dT%H:%MZ)"
        printf '  "loop": "true & echo x | cat; wait (busybox applets or Debian coreutils)",\n  "runs": [\n'
        for i in "${!rows[@]}"; do
            sep=","; [ "$i" -eq $((${#rows[@]} - 1)) ] && sep=""
            printf '    %s%s\n' "${rows[$i]}" "$sep"
        done
        printf '  ]\n}\n'
    } >"$OUT"
}

rows=()
# The configuration being measured, as a results row (marked partial until it completes).
current_row() {
    local partial=$1 boot_median per_start
    boot_median=$(printf '%s\n' "${boots[@]:-0}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    per_start=$(awk -v l="$loop_s" -v s="$starts" 'BEGIN { printf "%.0f", s ? 1000 * l / s : 0 }')
    echo "{\"measure\": \"$name\", \"kernel_options\": \"$opts\", \"workload\": \"$workload\", \"vcpus\": $n, \"process_starts\": $starts, \"crashes\": $crashes, \"chunks\": $chunks, \"boot_s_median\": $boot_median, \"ms_per_process_start\": $per_start, \"partial\": $partial}"
}
# Stopped (SIGTERM/SIGINT) part-way: keep what the configuration in progress measured.
stopped() {
    [ -n "${n:-}" ] && [ "${starts:-0}" -gt 0 ] && rows+=("$(current_row true)")
    write_results
    log "stopped; partial results in $OUT"
    exit 130
}
trap stopped TERM INT
for measure in $MEASURES; do
    name=${measure%%=*}
    opts=${measure#*=}
    for workload in $WORKLOADS; do
        case $workload in
            busybox) target=$STARTS chunk=$CHUNK_ROUNDS prefix="/bin/busybox " ;;
            debian) target=$DEBIAN_STARTS chunk=$DEBIAN_CHUNK_ROUNDS prefix="/bin/"
                DEBIAN_ROOT="$(debian_root)" ;;
            *) log "unknown workload $workload"; exit 2 ;;
        esac
        for n in $VCPUS; do
            starts=0 crashes=0 chunks=0 boots=() loop_s=0
            while [ "$starts" -lt "$target" ]; do
                left=$(((target - starts + 2) / 3))
                rounds=$((left < chunk ? left : chunk))
                clog="$(mktemp)"
                read -r d c b l < <(run_chunk "$workload" "$n" "$opts" "$rounds" "$clog" "$prefix")
                rm -f "$clog"
                chunks=$((chunks + 1))
                if [ "$d" -eq 0 ]; then
                    log "$name/$workload/$n vCPU: a chunk finished no round; stopping this configuration"
                    break
                fi
                starts=$((starts + 3 * d))
                crashes=$((crashes + c))
                boots+=("$b")
                loop_s=$(awk -v a="$loop_s" -v b="$l" 'BEGIN { printf "%.1f", a + b }')
                log "$name/$workload/$n vCPU: chunk $chunks: $((3 * d)) starts, $c crashes, boot $b s ($starts/$target)"
            done
            log "$name/$workload/$n vCPU: $crashes crashes in $starts process starts"
            rows+=("$(current_row false)")
            write_results
            n=""
        done
    done
done

cat "$OUT"
