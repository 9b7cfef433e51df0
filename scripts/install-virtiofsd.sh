#!/usr/bin/env bash
# Installs virtiofsd (the vhost-user backend of hvlite's virtio-fs shares) once, outside
# the repository, and prints its path as the last line of stdout.
#
#   scripts/install-virtiofsd.sh
#
# Debian bookworm has no virtiofsd package (`apt-cache search virtiofsd` finds none), so
# the Rust crate is built with `cargo install --locked` into
# $HVLITE_CACHE/virtiofsd-<version> (HVLITE_CACHE defaults to ~/.cache/hvlite), where hvlite
# looks for it after $HVLITE_VIRTIOFSD and PATH. Building needs libseccomp-dev and
# libcap-ng-dev, installed with apt-get when missing (as root). A cold build takes a few
# minutes on 2 cores.
set -euo pipefail

VERSION=1.14.0
CACHE="${HVLITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvlite}"
ROOT="$CACHE/virtiofsd-$VERSION"
BIN="$ROOT/bin/virtiofsd"

log() { printf 'install-virtiofsd: %s\n' "$*" >&2; }

if [[ ! -x "$BIN" ]]; then
    missing=()
    for p in libseccomp-dev libcap-ng-dev pkg-config; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        [[ "$status" == installed ]] || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        if [[ $EUID -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
        export DEBIAN_FRONTEND=noninteractive
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
            { "${SUDO[@]}" apt-get update -q >&2 &&
              "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
    fi
    log "building virtiofsd $VERSION into $ROOT (once)"
    cargo install virtiofsd --version "$VERSION" --locked --root "$ROOT" >&2
fi
"$BIN" --version >&2
echo "$BIN"
