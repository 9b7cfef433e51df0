#!/usr/bin/env python3
"""A one-container pod through containerd's CRI plugin with hvlite as runtime handler
(see cri-check.sh). Prints the client's steps; exits with the client's status."""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_shim import oci_archive  # noqa: E402

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
    sock = f"{work}/containerd.sock"
    os.makedirs(f"{work}/bin")
    os.symlink(os.path.abspath(args.shim), f"{work}/bin/containerd-shim-hvlite-v2")
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    with open(f"{work}/config.toml", "w") as f:
        f.write(f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
                f'[grpc]\n  address = "{sock}"\n'
                f'[{cri}]\n  sandbox_image = "{PAUSE}"\n'
                f'[{cri}.containerd]\n  default_runtime_name = "hvlite"\n'
                f'[{cri}.cni]\n  bin_dir = "{work}/cni-bin"\n  conf_dir = "{work}/cni-conf"\n'
                f'[{cri}.containerd.runtimes.hvlite]\n'
                '  runtime_type = "io.containerd.hvlite.v2"\n')
    env = dict(os.environ, PATH=f"{work}/bin:" + os.environ.get("PATH", ""),
               HVLITE_KERNEL=args.kernel, HVLITE_AGENT=args.agent)
    log = open(f"{work}/containerd.log", "w")
    daemon = subprocess.Popen(["containerd", "--config", f"{work}/config.toml"], env=env,
                              stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    ctr = ["ctr", "--address", sock, "--namespace", "k8s.io"]
    status = 1
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(ctr + ["version"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("cri-check: containerd did not come up")
            time.sleep(0.1)
        for name, cmd in ((IMAGE, ("sh",)), (PAUSE, ("sleep", "1000000"))):
            subprocess.run(ctr + ["image", "import", oci_archive(work, args.rootfs, name, cmd)],
                           check=True, capture_output=True)
        p = subprocess.run([args.client, sock, "hvlite", IMAGE, "sh", "-c",
                            "echo hello from a pod; exit 4"], text=True, capture_output=True)
        print(p.stdout, end="")
        print(p.stderr, end="", file=sys.stderr)
        status = p.returncode
        print(f"cri-check: client exit status {status}")
        if status not in (0, 4):
            subprocess.run(["tail", "-n", "40", f"{work}/containerd.log"])
    finally:
        daemon.terminate()
        daemon.wait()
        kill_leftovers(work)
        subprocess.run(["sh", "-c", f"grep -o ' {work}[^ ]*' /proc/self/mountinfo | "
                        "sort -r | xargs -r -n1 umount -l"], capture_output=True)
        subprocess.run(["rm", "-rf", work])
    sys.exit(status)


if __name__ == "__main__":
    main()
