#!/usr/bin/env bash
# Runs hvlite's whole test suite: formatting, lints, the guest build scripts (kernel and
# initramfs, cached outside the repo), unit tests, and the integration tests, which boot
# test guests and the project's Linux kernel under KVM.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
source scripts/progress.sh
source scripts/apt.sh

log() { printf '\n== %s\n' "$*" >&2; }

# This is the CI test command: a test that needs /dev/kvm, root, TAP support, mkfs.ext4 or
# loop devices and does not find them FAILS here instead of printing SKIPPED and passing
# (crates/hvlite-protocol/src/test_env.rs). Plain `cargo test` on a developer's machine
# still skips them.
export HVLITE_REQUIRE_KVM=1

for comp in rustfmt clippy; do
    if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
        log "installing rustup component $comp"
        rustup component add "$comp"
    fi
done

# tests/podman.rs drives a real podman (with conmon) through hvlite-runtime.
if ! command -v podman >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing podman (tests/podman.rs)"
    apt_install --recommends podman
fi
# tests/containerd.rs runs a private containerd (Debian's 1.6) with hvlite's shim.
if ! command -v containerd >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing containerd (tests/containerd.rs)"
    apt_install --recommends containerd
fi

log "cargo fmt --all --check"
cargo fmt --all --check

log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "guest kernel (scripts/build-kernel.sh)"
HVLITE_KERNEL="$(with_progress "building the guest kernel" kernel_objects -- \
    bash scripts/build-kernel.sh | tail -n 1)"
log "guest initramfs (scripts/build-initramfs.sh)"
HVLITE_INITRD="$(bash scripts/build-initramfs.sh | tail -n 1)"
log "guest root disk image (scripts/build-initramfs.sh --ext4)"
HVLITE_ROOTFS="$(bash scripts/build-initramfs.sh --ext4 | tail -n 1)"
log "guest agent and container root directory (scripts/build-initramfs.sh --agent / --dir)"
HVLITE_AGENT="$(bash scripts/build-initramfs.sh --agent | tail -n 1)"
HVLITE_ROOTFS_DIR="$(bash scripts/build-initramfs.sh --dir | tail -n 1)"
HVLITE_BZIMAGE="$(dirname "$HVLITE_KERNEL")/bzImage"
export HVLITE_KERNEL HVLITE_INITRD HVLITE_BZIMAGE HVLITE_ROOTFS HVLITE_AGENT HVLITE_ROOTFS_DIR
for f in "$HVLITE_KERNEL" "$HVLITE_INITRD" "$HVLITE_BZIMAGE" "$HVLITE_ROOTFS" "$HVLITE_AGENT"; do
    [ -f "$f" ] || { echo "test.sh: missing guest artefact $f" >&2; exit 1; }
done
[ -d "$HVLITE_ROOTFS_DIR" ] || { echo "test.sh: missing $HVLITE_ROOTFS_DIR" >&2; exit 1; }

log "virtiofsd (scripts/install-virtiofsd.sh, cached outside the repo)"
HVLITE_VIRTIOFSD="$(with_progress "building virtiofsd" -- bash scripts/install-virtiofsd.sh | tail -n 1)"
export HVLITE_VIRTIOFSD

log "fuzz smoke run: virtio-blk request parser (fuzz/README.md has the long run)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
mkdir -p fuzz/corpus/blk_request
# cargo-fuzz passes -Z flags to rustc; RUSTC_BOOTSTRAP lets the stable toolchain take them.
RUSTC_BOOTSTRAP=1 cargo fuzz run blk_request fuzz/corpus/blk_request fuzz/seeds/blk_request \
    -- -max_total_time=20 -timeout=10 2>&1 | tail -n 5
log "fuzz smoke run: API request parser (HTTP and JSON bodies)"
mkdir -p fuzz/corpus/api_request
RUSTC_BOOTSTRAP=1 cargo fuzz run api_request fuzz/corpus/api_request fuzz/seeds/api_request \
    -- -max_total_time=20 -timeout=10 2>&1 | tail -n 5
log "fuzz smoke run: snapshot state file parser"
mkdir -p fuzz/corpus/snapshot_state
RUSTC_BOOTSTRAP=1 cargo fuzz run snapshot_state fuzz/corpus/snapshot_state \
    -- -max_total_time=10 -timeout=10 -rss_limit_mb=2048 2>&1 | tail -n 5

# Guest-facing parsers of issue 14 (fuzz/README.md has the long runs): 10 s each.
for target in mmio_transport net_chains vsock_packets agent_frames; do
    log "fuzz smoke run: $target"
    mkdir -p "fuzz/corpus/$target"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
        -- -max_total_time=10 -timeout=10 2>&1 | tail -n 3
done

log "cargo test --workspace (unit and integration tests)"
cargo test --workspace 2>&1

log "benchmark report, quick mode (docs/benchmarks.md): every system once, the page is checked"
BENCH_OUT="$(mktemp -d)"
bash scripts/bench-report.sh --quick --out "$BENCH_OUT"
rm -rf "$BENCH_OUT"
