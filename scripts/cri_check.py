#!/usr/bin/env python3
"""A one-container pod through containerd's CRI plugin with hvlite as runtime handler
(see cri-check.sh). Prints the client's steps; exits 0 when the container's output came
back through the CRI log and its exit status (4) through ContainerStatus."""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_shim import oci_archive, start_containerd, stop_containerd  # noqa: E402

IMAGE = "docker.io/library/hvlite-busybox:latest"
PAUSE = "docker.io/library/hvlite-pause:latest"


def kill_leftovers(work):
    """SIGKILL to the shims and VMMs of this run (their command lines name `work`)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "containerd-shim-hvlite-v2" in cmd and work in cmd:
            print(f"cri-check: killing leftover {pid}: {cmd}", file=sys.stderr)
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser()
    for a in ("--shim", "--client", "--kernel", "--agent", "--rootfs"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hvlite-cri-")
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = (f'[{cri}]\n  sandbox_image = "{PAUSE}"\n'
              f'[{cri}.containerd]\n  default_runtime_name = "hvlite"\n'
              f'[{cri}.cni]\n  bin_dir = "{work}/cni-bin"\n  conf_dir = "{work}/cni-conf"\n'
              f'[{cri}.containerd.runtimes.hvlite]\n'
              '  runtime_type = "io.containerd.hvlite.v2"\n')
    daemon, ctr = start_containerd(work, args, config)
    sock = ctr[2]
    ctr += ["--namespace", "k8s.io"]
    status = 1
    try:
        for name, cmd in ((IMAGE, ("sh",)), (PAUSE, ("sleep", "1000000"))):
            subprocess.run(ctr + ["image", "import", oci_archive(work, args.rootfs, name, cmd)],
                           check=True, capture_output=True)
        p = subprocess.run([args.client, sock, "hvlite", IMAGE, "sh", "-c",
                            "echo hello from a pod; exit 4"], text=True, capture_output=True)
        print(p.stdout, end="")
        print(p.stderr, end="", file=sys.stderr)
        ok = p.returncode == 4 and "log: hello from a pod" in p.stdout
        status = 0 if ok else 1
        print(f"cri-check: {'ok' if ok else 'FAILED'} (the container's status: {p.returncode})")
    finally:
        if status != 0:
            subprocess.run(["tail", "-n", "40", f"{work}/containerd.log"])
        kill_leftovers(work)
        stop_containerd(daemon, work)
    sys.exit(status)


if __name__ == "__main__":
    main()
