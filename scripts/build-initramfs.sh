#!/usr/bin/env bash
# Builds hvlite's guest initramfs: an uncompressed newc cpio with
#   /init          hvlite-init (static Rust PID 1, crates/hvlite-agent)
#   /bin/busybox   from Debian's busybox-static, with a symlink per applet
#                  (at the place `busybox --list-full` gives: /bin, /sbin, /usr/bin, /usr/sbin)
#   /dev/console, /dev/null (when mknod works), /proc /sys /dev /tmp /root /etc
#
# Output: ${HVLITE_CACHE:-$HOME/.cache/hvlite}/initramfs/<key>/initramfs.cpio, where <key> is
# derived from the sha256 of the init binary, the busybox binary and this script. Progress
# goes to stderr; the LAST line of stdout is the path of the cpio. Safe to run again: an
# existing archive with the same key is reused, a new one is moved into place atomically.
#
# Uncompressed on purpose: the guest kernel runs emulated on the target hosts and inflating
# even a small gzip archive there takes more than a minute.
#
# With `--ext4` it writes the same root as an ext4 disk image instead
# (.../initramfs/<key>/rootfs.ext4, with /sbin/init -> /init so that a kernel booted with
# root=/dev/vda finds the init), for booting from a virtio-blk disk.
# With `--dir` it writes the root as a plain directory (.../initramfs/<key>/rootfs/), a
# container root filesystem for `hvlite run --rootfs DIR`: no /init, but the vsock tool
# of hvlite-init as /usr/bin/hvlite-vsock (tests and benchmarks use it in the guest).
# With `--agent` it prints the path of the stripped static hvlite-init, the guest agent
# that `hvlite run --rootfs` puts into its VMs (.../initramfs/<key>/hvlite-agent).
set -euo pipefail

FORMAT=cpio
case "${1:-}" in
    "") ;;
    --ext4) FORMAT=ext4 ;;
    --dir) FORMAT=dir ;;
    --agent) FORMAT=agent ;;
    *) printf 'usage: %s [--ext4|--dir|--agent]\n' "$0" >&2; exit 2 ;;
esac

log() { printf 'build-initramfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)"
CACHE="${HVLITE_CACHE:-$HOME/.cache/hvlite}/initramfs"
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR="$REPO/target/guest"
BUSYBOX=/bin/busybox
# Fixed timestamp for every archive member (reproducible archives).
EPOCH="${SOURCE_DATE_EPOCH:-0}"

# --- host tools -----------------------------------------------------------------------
install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]}"
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}
install_missing busybox-static cpio file binutils e2fsprogs
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing after installing busybox-static"

# --- the init ---------------------------------------------------------------------------
log "building hvlite-init (static, $TARGET, target dir $TARGET_DIR)"
(
    cd "$REPO"
    # With --target, RUSTFLAGS apply to the target artifacts only, not to build scripts or
    # proc macros; the separate target dir keeps the host build's cache intact.
    # LTO and one codegen unit (set here, not in Cargo.toml) make the init ~15% smaller.
    RUSTFLAGS="-C target-feature=+crt-static" \
        CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
        cargo build --release -p hvlite-agent --bin hvlite-init --target "$TARGET" --target-dir "$TARGET_DIR" >&2
)
INIT_BUILT="$TARGET_DIR/$TARGET/release/hvlite-init"
[ -x "$INIT_BUILT" ] || die "no binary at $INIT_BUILT"

check_static() {
    local bin=$1 desc
    desc="$(file -b "$bin")"
    case "$desc" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) die "$bin is not statically linked: $desc" ;;
    esac
    if readelf -lW "$bin" | grep -q 'INTERP'; then die "$bin has a program interpreter"; fi
    if readelf -dW "$bin" | grep -q '(NEEDED)'; then die "$bin needs shared libraries"; fi
}
check_static "$INIT_BUILT"
check_static "$BUSYBOX"

mkdir -p "$CACHE"
STAGE="$(mktemp -d "$CACHE/.stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
ROOT="$STAGE/root"
mkdir "$ROOT"

# Stripped copy: smaller archive, less for the (emulated) kernel to unpack.
strip -o "$ROOT/init" "$INIT_BUILT"
chmod 0755 "$ROOT/init"

KEY="$(sha256sum <"$ROOT/init" | cut -c1-64)"
KEY="$(printf '%s\n' "$KEY" \
    "$(sha256sum <"$BUSYBOX" | cut -c1-64)" \
    "$(sha256sum <"$SCRIPT_PATH" | cut -c1-64)" | sha256sum | cut -c1-16)"
OUT_DIR="$CACHE/$KEY"
case "$FORMAT" in
    ext4) OUT="$OUT_DIR/rootfs.ext4" ;;
    dir) OUT="$OUT_DIR/rootfs" ;;
    agent) OUT="$OUT_DIR/hvlite-agent" ;;
    *) OUT="$OUT_DIR/initramfs.cpio" ;;
esac
if [ "$FORMAT" = agent ]; then
    mkdir -p "$OUT_DIR"
    if [ ! -s "$OUT" ]; then
        cp "$ROOT/init" "$OUT.tmp.$$" && mv -f "$OUT.tmp.$$" "$OUT"
    fi
    log "agent: $OUT"
    echo "$OUT"
    exit 0
fi
if [ -s "$OUT" ] || [ -d "$OUT" ]; then
    log "up to date: $OUT"
    echo "$OUT"
    exit 0
fi

# --- stage the root -----------------------------------------------------------------------
log "staging root"
umask 022
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,etc}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
cp "$BUSYBOX" "$ROOT/bin/busybox"
chmod 0755 "$ROOT/bin/busybox"
applets=0
while IFS= read -r applet; do
    case "$applet" in
        bin/* | sbin/* | usr/bin/* | usr/sbin/*) ;;
        *) continue ;; # e.g. "linuxrc": not wanted at the top level
    esac
    [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] || {
        ln -s /bin/busybox "$ROOT/$applet"
        applets=$((applets + 1))
    }
done < <("$BUSYBOX" --list-full)
[ -L "$ROOT/bin/sh" ] || die "busybox has no sh applet"
log "linked $applets busybox applets"

printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"

# The kernel opens /dev/console for init before devtmpfs is mounted; if the nodes cannot be
# made (not root), hvlite-init reopens the console from devtmpfs itself.
if mknod -m 0600 "$ROOT/dev/console" c 5 1 2>/dev/null \
    && mknod -m 0666 "$ROOT/dev/null" c 1 3 2>/dev/null; then
    :
else
    log "warning: cannot create device nodes (not root?); /dev/console comes from devtmpfs"
fi

# --- archive ------------------------------------------------------------------------------
find "$ROOT" -exec touch -h -d "@$EPOCH" {} +
mkdir -p "$OUT_DIR"
if [ "$FORMAT" = dir ]; then
    log "writing root directory"
    mkdir -p "$ROOT/usr/bin"
    mv "$ROOT/init" "$ROOT/usr/bin/hvlite-vsock"
    TMP_OUT="$(mktemp -d "$OUT_DIR/.rootfs.XXXXXX")"
    cp -a "$ROOT/." "$TMP_OUT/"
    chmod 0755 "$TMP_OUT"
    mv -T "$TMP_OUT" "$OUT" 2>/dev/null || { rm -rf "$TMP_OUT"; [ -d "$OUT" ] || die "cannot move $OUT into place"; }
    log "done: $OUT"
    echo "$OUT"
    exit 0
fi
if [ "$FORMAT" = ext4 ]; then
    log "writing ext4 image"
    ln -sfn /init "$ROOT/sbin/init" # replaces busybox's init applet
    TMP_OUT="$(mktemp "$OUT_DIR/.rootfs.ext4.XXXXXX")"
    rm -f "$TMP_OUT"
    # 64 MiB, sparse; fixed UUID and hash seed so the image depends only on its content.
    E2FSPROGS_FAKE_TIME="$EPOCH" mkfs.ext4 -q -F -L hvlite-root -b 4096 \
        -U 6876c174-0000-4000-8000-000000000001 \
        -E hash_seed=6876c174-0000-4000-8000-000000000002,root_owner=0:0 \
        -d "$ROOT" "$TMP_OUT" 64M >&2 || { rm -f "$TMP_OUT"; die "mkfs.ext4 failed"; }
    chmod 0644 "$TMP_OUT"
    mv -f "$TMP_OUT" "$OUT"
    log "done: $OUT"
    echo "$OUT"
    exit 0
fi
log "writing cpio"
TMP_OUT="$(mktemp "$OUT_DIR/.initramfs.cpio.XXXXXX")"
(
    cd "$ROOT"
    find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort \
        | cpio --quiet -o -H newc --owner=0:0 --reproducible >"$TMP_OUT"
) || { rm -f "$TMP_OUT"; die "cpio failed"; }
chmod 0644 "$TMP_OUT"
mv -f "$TMP_OUT" "$OUT"
log "done: $OUT ($(stat -c %s "$OUT") bytes; init $(stat -c %s "$ROOT/init") bytes)"
echo "$OUT"
