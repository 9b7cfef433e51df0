#!/usr/bin/env bash
# The Kubernetes path, without a kubelet: a private containerd 1.6 with its CRI plugin and
# hvlite registered as runtime handler `hvlite` (runtime_type io.containerd.hvlite.v2), and
# tools/cri-client making the kubelet's calls for a one-container pod (RunPodSandbox,
# CreateContainer, StartContainer, ContainerStatus, Stop/Remove). Images (busybox, and a
# busybox "pause" image for the sandbox) are imported into the k8s.io namespace; no
# registry. Needs root, containerd, protoc (protobuf-compiler) to build the client.
# Run it under the VM lock: flock /tmp/hvlite-vm.lock bash scripts/cri-check.sh
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
source scripts/apt.sh
install_missing cri-check containerd protoc:protobuf-compiler
KERNEL="${HVLITE_KERNEL:-$(bash scripts/build-kernel.sh | tail -n 1)}"
AGENT="${HVLITE_AGENT:-$(bash scripts/build-initramfs.sh --agent | tail -n 1)}"
ROOTFS="${HVLITE_ROOTFS_DIR:-$(bash scripts/build-initramfs.sh --dir | tail -n 1)}"
cargo build -p containerd-shim-hvlite >&2
CARGO_TARGET_DIR="$PWD/target/cri-client" cargo build --manifest-path tools/cri-client/Cargo.toml >&2
exec python3 scripts/cri_check.py --shim target/debug/containerd-shim-hvlite-v2 \
    --client target/cri-client/debug/hvlite-cri-client \
    --kernel "$KERNEL" --agent "$AGENT" --rootfs "$ROOTFS"
