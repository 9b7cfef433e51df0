#!/usr/bin/env python3
"""`podman run --rm IMAGE /bin/true` through hvlite-runtime, runc and crun (see bench-oci.sh).

Each runtime is called through a small wrapper script that appends "<command> <seconds>"
for every call to a log, which gives the create and start times; end to end is podman's
wall time. A runtime whose runs fail is recorded with its error instead of numbers."""

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time

IMAGE = "localhost/hvlite-bench-busybox:latest"


def wrapper(path, real, log, extra):
    """Writes a runtime wrapper at `path` that runs `real` (a path or an argv list) with
    `extra` and the caller's arguments and logs each call's command and times."""
    real = shlex.join(real) if isinstance(real, list) else shlex.quote(real)
    with open(path, "w") as f:
        f.write(
            "#!/bin/sh\n"
            f'cmd=""; for a in "$@"; do case "$a" in -*) ;; *) cmd="$a"; break;; esac; done\n'
            "t0=$(date +%s.%N)\n"
            f'{real} {extra} "$@"\n'
            "rc=$?\n"
            "t1=$(date +%s.%N)\n"
            f'echo "$cmd $t0 $t1" >> "{log}"\n'
            "exit $rc\n"
        )
    os.chmod(path, 0o755)


def hybrid_cgroups():
    """True on a host with cgroup v1 hierarchies plus a cgroup2 one at
    /sys/fs/cgroup/unified that holds a controller (this PVM host: hugetlb)."""
    try:
        with open("/sys/fs/cgroup/unified/cgroup.controllers") as f:
            return bool(f.read().split())
    except OSError:
        return False


def crun_argv(binary):
    """How to call crun here. crun 1.8 refuses hybrid cgroup hosts ("cgroups in hybrid mode
    not supported, drop all controllers from cgroupv2"); there it runs in a private mount
    namespace without the cgroup2 mount, so it sees cgroup v1 only, as runc uses it here.
    The container itself is unaffected (it gets its own mount namespace either way)."""
    if hybrid_cgroups():
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'umount /sys/fs/cgroup/unified && exec "$0" "$@"', binary]
    return [binary]


def podman_base(work):
    """podman with its storage, state and temp files in `work` (isolated from the host's)."""
    return ["podman", "--root", f"{work}/storage", "--runroot", f"{work}/run",
            "--tmpdir", f"{work}/tmp", "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file"]


def import_image(podman, rootfs, work, image=IMAGE):
    """Imports the root directory `rootfs` as the image `image`."""
    tar = f"{work}/rootfs.tar"
    subprocess.run(["tar", "-C", rootfs, "-cf", tar, "."], check=True)
    subprocess.run(podman + ["import", tar, image], check=True, capture_output=True)
    os.remove(tar)


def median(xs):
    return round(statistics.median(xs), 4) if xs else None


def main():
    ap = argparse.ArgumentParser()
    for a in ("--runtime", "--kernel", "--agent", "--rootfs", "--out", "--profile"):
        ap.add_argument(a, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hvlite-runs", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hvlite-bench-oci-")
    podman = podman_base(work)
    try:
        import_image(podman, args.rootfs, work)
        runtimes = [
            ("hvlite-runtime", os.path.abspath(args.runtime),
             f"--kernel {args.kernel} --agent {args.agent}", [], args.hvlite_runs),
            # runc and crun here refuse podman's default rlimits (nofile 1048576 above the host's
            # hard limit): lowered for it.
            ("runc", shutil.which("runc") or "runc", "",
             ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"], args.runs),
            ("crun", crun_argv(shutil.which("crun") or "crun"), "",
             ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"], args.runs),
        ]
        results = {}
        for name, real, extra, flags, runs in runtimes:
            log = f"{work}/{name}.log"
            wrap = f"{work}/{name}-wrap.sh"
            wrapper(wrap, real, log, extra)
            walls, error, warmup = [], None, None
            if name == "hvlite-runtime":
                # The first create builds the container VM's template (a boot) unless it is
                # cached; the timed runs restore it. Not counted: its calls leave the log.
                t0 = time.monotonic()
                subprocess.run(
                    podman + ["--runtime", wrap, "run", "--rm", "--network", "none"]
                    + flags + [IMAGE, "/bin/true"],
                    capture_output=True, text=True, stdin=subprocess.DEVNULL)
                warmup = round(time.monotonic() - t0, 3)
                if os.path.exists(log):
                    os.remove(log)
                print(f"{name} warm-up (template build if not cached): {warmup} s", flush=True)
            for i in range(runs):
                t0 = time.monotonic()
                p = subprocess.run(
                    podman + ["--runtime", wrap, "run", "--rm", "--network", "none"]
                    + flags + [IMAGE, "/bin/true"],
                    capture_output=True, text=True, stdin=subprocess.DEVNULL)
                wall = time.monotonic() - t0
                if p.returncode != 0:
                    error = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
                    print(f"{name} run {i + 1}: failed: {error}", flush=True)
                    break
                walls.append(wall)
                print(f"{name} run {i + 1}: {wall:.3f} s", flush=True)
            phases = {}
            if os.path.exists(log):
                for line in open(log):
                    parts = line.split()
                    if len(parts) == 3:
                        phases.setdefault(parts[0], []).append(float(parts[2]) - float(parts[1]))
            results[name] = {
                "runs": len(walls),
                "end_to_end_s": {"median": median(walls), "all": [round(w, 3) for w in walls]},
                "create_s": {"median": median(phases.get("create", [])[: len(walls)])},
                "start_s": {"median": median(phases.get("start", [])[: len(walls)])},
                "error": error,
            }
            if warmup is not None:
                results[name]["warmup_s"] = warmup
        out = {
            "benchmark": "podman run --rm IMAGE /bin/true",
            "podman": subprocess.run(["podman", "--version"], capture_output=True,
                                     text=True).stdout.strip(),
            "hvlite_profile": args.profile,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "results": results,
        }
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(json.dumps(out, indent=2))
    finally:
        subprocess.run(podman + ["rm", "-a", "-f"], capture_output=True)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
