#!/usr/bin/env bash
# Sets up hvlite on a Debian machine with /dev/kvm: Debian packages, the project's guest
# kernel (built once and cached in ~/.cache/hvlite), the static guest agent, a small
# busybox container root filesystem, and a release build of hvlite.
#
# Installs into ${HVLITE_HOME:-~/.local/share/hvlite} what `hvlite run` uses by default:
#   vmlinux        -> the cached kernel build   (so --kernel can be left out)
#   hvlite-agent   the static guest agent        (put into every --rootfs VM)
#   rootfs/        -> the cached busybox root directory (a demo/test container root)
# and prints, as its last lines, `HVLITE=<binary>` and `ROOTFS=<dir>`.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

log() { printf '== %s\n' "$*" >&2; }

DATA="${HVLITE_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/hvlite}"
mkdir -p "$DATA"

log "guest kernel (cached after the first build)"
KERNEL="$(bash scripts/build-kernel.sh | tail -n 1)"
log "guest agent (static hvlite-init)"
AGENT="$(bash scripts/build-initramfs.sh --agent | tail -n 1)"
log "container root filesystem (busybox)"
ROOTFS="$(bash scripts/build-initramfs.sh --dir | tail -n 1)"
log "hvlite release build"
cargo build --release --bin hvlite >&2

ln -sfn "$KERNEL" "$DATA/vmlinux"
install -m 0755 "$AGENT" "$DATA/hvlite-agent.tmp" && mv -f "$DATA/hvlite-agent.tmp" "$DATA/hvlite-agent"
ln -sfn "$ROOTFS" "$DATA/rootfs"
log "installed into $DATA: vmlinux, hvlite-agent, rootfs"
echo "HVLITE=$PWD/target/release/hvlite"
echo "ROOTFS=$DATA/rootfs"
