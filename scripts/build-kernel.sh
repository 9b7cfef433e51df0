#!/usr/bin/env bash
# Build the hvlite guest kernel (Linux 6.1 from Debian's linux-source-6.1).
#
#   scripts/build-kernel.sh            # build (or reuse) and print the path
#
# Inputs:  kernels/hvlite.config (Kconfig fragment over x86_64 tinyconfig),
#          kernels/patches/*.patch (applied in order with patch -p1).
# Output:  $HVLITE_CACHE/kernel/<key>/{vmlinux,bzImage,config,System.map}
#          with HVLITE_CACHE defaulting to ~/.cache/hvlite and key = sha256 over
#          the fragment, the patches, the source package version and this
#          script.  Progress goes to stderr; the last line of stdout is the
#          path of vmlinux (bzImage is next to it).
#
# Environment:
#   HVLITE_CACHE        cache directory (default: $HOME/.cache/hvlite)
#   HVLITE_KEEP_BUILD=1 keep the build tree (also kept on failure for a look)
#   HVLITE_JOBS         parallel make jobs (default: nproc)
set -euo pipefail

log() { printf 'build-kernel: %s\n' "$*" >&2; }
die() { printf 'build-kernel: ERROR: %s\n' "$*" >&2; exit 1; }

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)"
FRAGMENT="$REPO/kernels/hvlite.config"
PATCH_DIR="$REPO/kernels/patches"
CACHE="${HVLITE_CACHE:-$HOME/.cache/hvlite}"
JOBS="${HVLITE_JOBS:-$(nproc)}"
SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz

[[ -f "$FRAGMENT" ]] || die "missing $FRAGMENT"

# --- Build dependencies (apt-get only if something is missing) --------------
PKGS=(linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev
      lz4 cpio xz-utils patch python3)
missing=()
for p in "${PKGS[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
    [[ "$status" == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    if [[ $EUID -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q >&2
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
[[ -f "$SRC_TARBALL" ]] || die "$SRC_TARBALL not found after installing $SRC_PKG"
SRC_VERSION="$(dpkg-query -W -f='${Version}' "$SRC_PKG")"

# --- Cache key ----------------------------------------------------------------
shopt -s nullglob
PATCHES=("$PATCH_DIR"/*.patch)
shopt -u nullglob
KEY="$(
    {
        printf 'source %s %s\n' "$SRC_PKG" "$SRC_VERSION"
        printf 'fragment\n'; sha256sum < "$FRAGMENT"
        for p in "${PATCHES[@]}"; do
            printf 'patch %s\n' "$(basename "$p")"; sha256sum < "$p"
        done
        printf 'script\n'; sha256sum < "$SCRIPT_PATH"
    } | sha256sum | cut -c1-16
)"
KDIR="$CACHE/kernel"
OUT="$KDIR/$KEY"

if [[ -f "$OUT/vmlinux" && -f "$OUT/bzImage" ]]; then
    log "cached: $OUT"
    echo "$OUT/vmlinux"
    exit 0
fi

mkdir -p "$KDIR"
# One build at a time per cache; a second caller waits and then finds it cached.
exec 9>"$KDIR/.lock"
flock 9
if [[ -f "$OUT/vmlinux" && -f "$OUT/bzImage" ]]; then
    log "cached (built concurrently): $OUT"
    echo "$OUT/vmlinux"
    exit 0
fi

# Leftovers of interrupted builds.
rm -rf "$KDIR"/.build.* "$KDIR"/.stage.*

BUILD="$(mktemp -d "$KDIR/.build.XXXXXX")"
STAGE=""
cleanup() {
    local rc=$?
    [[ -n "$STAGE" && -d "$STAGE" ]] && rm -rf "$STAGE"
    if [[ $rc -ne 0 ]]; then
        log "failed (rc=$rc); build tree kept in $BUILD"
    elif [[ "${HVLITE_KEEP_BUILD:-0}" == 1 ]]; then
        log "build tree kept in $BUILD"
    else
        rm -rf "$BUILD"
    fi
}
trap cleanup EXIT

T0=$SECONDS
log "key $KEY: $SRC_PKG $SRC_VERSION, ${#PATCHES[@]} patch(es)"
log "extracting $SRC_TARBALL into $BUILD"
tar -xf "$SRC_TARBALL" -C "$BUILD" --strip-components=1
cd "$BUILD"

for p in "${PATCHES[@]}"; do
    log "applying $(basename "$p")"
    patch -p1 --forward --quiet < "$p" >&2
done

MK=(make -s ARCH=x86_64 KBUILD_BUILD_USER=hvlite KBUILD_BUILD_HOST=hvlite)
log "tinyconfig + $(basename "$FRAGMENT")"
"${MK[@]}" tinyconfig >&2
ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >&2
"${MK[@]}" olddefconfig >&2

# --- Every line of the fragment must have survived olddefconfig --------------
bad=0
while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        sym="${BASH_REMATCH[1]}" val="${BASH_REMATCH[2]}"
        if [[ "$val" == n ]]; then
            want=off
        else
            want=on
        fi
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        sym="${BASH_REMATCH[1]}" want=off
    else
        continue
    fi
    got="$(grep -E "^${sym}=" .config || true)"
    if [[ $want == on && "$got" != "${sym}=${val}" ]]; then
        log "config mismatch: want ${sym}=${val}, got '${got:-# $sym is not set}'"
        bad=1
    elif [[ $want == off && -n "$got" ]]; then
        log "config mismatch: want $sym off, got '$got'"
        bad=1
    fi
done < "$FRAGMENT"
((bad == 0)) || die "the fragment does not apply cleanly (see above)"
log "config verified"

log "building vmlinux + bzImage with -j$JOBS"
"${MK[@]}" -j"$JOBS" vmlinux bzImage >&2

STAGE="$(mktemp -d "$KDIR/.stage.XXXXXX")"
# Drop debug sections only: keep the ELF program headers, entry point, the
# PVH note and the symbol table.
objcopy --strip-debug vmlinux "$STAGE/vmlinux"
cp arch/x86/boot/bzImage "$STAGE/bzImage"
cp .config "$STAGE/config"
cp System.map "$STAGE/System.map"
printf '%s %s\n' "$SRC_PKG" "$SRC_VERSION" > "$STAGE/SOURCE"
chmod 0755 "$STAGE"
if ! mv -T "$STAGE" "$OUT" 2>/dev/null; then
    # Someone else's result (or a stale partial dir) is in the way.
    rm -rf "$OUT"
    mv -T "$STAGE" "$OUT"
fi
STAGE=""
log "done in $((SECONDS - T0)) s: $(du -h "$OUT/vmlinux" | cut -f1) vmlinux," \
    "$(du -h "$OUT/bzImage" | cut -f1) bzImage"
echo "$OUT/vmlinux"
