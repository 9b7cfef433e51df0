#!/usr/bin/env bash
# Sets up hvlite on a Debian machine with /dev/kvm: Debian packages, the project's guest
# kernel (built once and cached in ~/.cache/hvlite), the static guest agent, a small
# busybox container root filesystem, and a release build of hvlite.
#
# Installs into ${HVLITE_HOME:-~/.local/share/hvlite} what `hvlite run` uses by default:
#   vmlinux        -> the cached kernel build   (so --kernel can be left out)
#   hvlite-agent   the static guest agent        (put into every --rootfs VM)
#   rootfs/        -> the cached busybox root directory (a demo/test container root)
#   initramfs.cpio -> the cached initramfs with hvlite-init and busybox (for plain VMs)
# and puts the host binaries on PATH: into /usr/local/bin as root, else ~/.local/bin
# (HVLITE_PREFIX=DIR installs into DIR/bin), with bash completions in
# PREFIX/share/bash-completion/completions and man pages in PREFIX/share/man/man1.
# Prints, as its last lines, `HVLITE=<installed binary>` and `ROOTFS=<dir>`.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
source scripts/progress.sh

log() { printf '== %s\n' "$*" >&2; }

DATA="${HVLITE_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/hvlite}"
if [[ -n "${HVLITE_PREFIX:-}" ]]; then
    PREFIX="$HVLITE_PREFIX"
elif [[ $EUID -eq 0 ]]; then
    PREFIX=/usr/local
else
    PREFIX="$HOME/.local"
fi
mkdir -p "$DATA"

log "guest kernel (built once, about 6 minutes on 2 cores; cached afterwards)"
KERNEL="$(with_progress "building the guest kernel" kernel_objects -- \
    bash scripts/build-kernel.sh | tail -n 1)"
log "guest agent (static hvlite-init)"
AGENT="$(with_progress "building the guest agent" -- \
    bash scripts/build-initramfs.sh --agent | tail -n 1)"
log "container root filesystem (busybox)"
ROOTFS="$(with_progress "building the busybox root" -- \
    bash scripts/build-initramfs.sh --dir | tail -n 1)"

log "virtiofsd (virtio-fs shares: --fs, --volume; built once into the cache)"
with_progress "building virtiofsd" -- bash scripts/install-virtiofsd.sh | tail -n 1 >/dev/null

log "initramfs for plain VMs (hvlite-init and busybox)"
INITRD="$(with_progress "building the initramfs" -- \
    bash scripts/build-initramfs.sh | tail -n 1)"

log "hvlite release build"
# The host binaries, from cargo's JSON messages: every executable but the guest agent.
build_host_binaries() {
    cargo build --release -p hvlite -p containerd-shim-hvlite --bins \
        --message-format=json-render-diagnostics |
        python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    exe = msg.get("executable")
    if msg.get("reason") == "compiler-artifact" and exe and "bin" in msg["target"]["kind"]:
        if msg["target"]["name"] != "hvlite-init":
            print(exe)
'
}
BUILT="$(with_progress "building hvlite" -- build_host_binaries)"
mapfile -t BINARIES <<< "$BUILT"
[[ -n "$BUILT" ]] || { echo "setup.sh: cargo built no host binaries" >&2; exit 1; }

ln -sfn "$KERNEL" "$DATA/vmlinux"
install -m 0755 "$AGENT" "$DATA/hvlite-agent.tmp" && mv -f "$DATA/hvlite-agent.tmp" "$DATA/hvlite-agent"
ln -sfn "$ROOTFS" "$DATA/rootfs"
ln -sfn "$INITRD" "$DATA/initramfs.cpio"
log "installed into $DATA: vmlinux, hvlite-agent, rootfs, initramfs.cpio"

BIN="$PREFIX/bin"
COMPLETIONS="$PREFIX/share/bash-completion/completions"
MAN="$PREFIX/share/man/man1"
mkdir -p "$BIN" "$COMPLETIONS" "$MAN"
names=()
for exe in "${BINARIES[@]}"; do
    name="$(basename "$exe")"
    install -m 0755 "$exe" "$BIN/.$name.tmp" && mv -f "$BIN/.$name.tmp" "$BIN/$name"
    names+=("$name")
done
"$BIN/hvlite" completions bash > "$COMPLETIONS/hvlite"
"$BIN/hvlite" man "$MAN"
log "installed ${names[*]} into $BIN, bash completions into $COMPLETIONS, man pages into $MAN"
case ":$PATH:" in
    *":$BIN:"*) log "$BIN is on your PATH: try \`hvlite --help\`" ;;
    *) log "$BIN is not on your PATH yet: add it with  export PATH=\"$BIN:\$PATH\"" ;;
esac
echo "HVLITE=$BIN/hvlite"
echo "ROOTFS=$DATA/rootfs"
