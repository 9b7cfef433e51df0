#!/usr/bin/env bash
# Sets up everything hvlite needs on a fresh Debian machine with /dev/kvm (scripts/setup.sh:
# packages, the guest kernel, the guest agent, a busybox container root, a release build),
# then runs a command in a microVM the way a container runtime would: the busybox root
# directory is the VM's root filesystem, the command's stdout and stderr come back
# separately, and hvlite exits with its status.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

log() { printf '== %s\n' "$*" >&2; }

SETUP="$(bash scripts/setup.sh)"
HVLITE="$(printf '%s\n' "$SETUP" | sed -n 's/^HVLITE=//p')"
ROOTFS="$(printf '%s\n' "$SETUP" | sed -n 's/^ROOTFS=//p')"

log "hvlite run --cpus 2 --rootfs $ROOTFS -e GREETING=hello -- /bin/sh -c ..."
exec "$HVLITE" run --cpus 2 --rootfs "$ROOTFS" -e GREETING=hello -- /bin/sh -c \
    'echo "$GREETING from $(uname -sr) on $(grep -c processor /proc/cpuinfo) vCPUs"; cat /etc/passwd; echo "(this line went to stderr)" >&2'
